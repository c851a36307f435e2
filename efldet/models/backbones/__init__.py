"""Backbones returning [C3, C4, C5] and exposing `out_channels`."""

from efldet.models.backbones.cspdarknet import YOLOX_SIZES, CSPDarknet
from efldet.models.backbones.resnet import ResNet
from efldet.models.backbones.tiny import TinyBackbone

__all__ = ["YOLOX_SIZES", "CSPDarknet", "ResNet", "TinyBackbone"]
