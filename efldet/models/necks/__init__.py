"""Necks: feature pyramids from backbone features."""

from efldet.models.necks.fpn import FPN
from efldet.models.necks.pafpn import PAFPN

__all__ = ["FPN", "PAFPN"]
