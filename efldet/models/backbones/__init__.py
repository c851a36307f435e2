"""Backbones returning [C3, C4, C5] and exposing `out_channels`."""

from efldet.models.backbones.resnet import ResNet
from efldet.models.backbones.tiny import TinyBackbone

__all__ = ["ResNet", "TinyBackbone"]
