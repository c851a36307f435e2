"""Necks: feature pyramids from backbone features."""

from efldet.models.necks.fpn import FPN

__all__ = ["FPN"]
