"""One-stage detectors: ATSS with the IoU branch (the paper's improved baseline), ATSS, RetinaNet, FCOS."""

from efldet.models.anchors import AnchorGenerator, PointGenerator
from efldet.models.assigners import BACKGROUND, IGNORE, atss_assign, fcos_assign, max_iou_assign
from efldet.models.backbones import ResNet, TinyBackbone
from efldet.models.build import (
    DETECTORS,
    LOSSES,
    AnchorConfig,
    AssignerConfig,
    BackboneConfig,
    DetectorConfig,
    HeadConfig,
    LossConfig,
    NeckConfig,
    TestConfig,
    build_cls_loss,
    build_detector,
)
from efldet.models.detector import DenseDetector
from efldet.models.heads import DenseHead, concat_levels
from efldet.models.necks import FPN
from efldet.models.postprocess import postprocess_detections

__all__ = [
    "BACKGROUND",
    "DETECTORS",
    "FPN",
    "IGNORE",
    "LOSSES",
    "AnchorConfig",
    "AnchorGenerator",
    "AssignerConfig",
    "BackboneConfig",
    "DenseDetector",
    "DenseHead",
    "DetectorConfig",
    "HeadConfig",
    "LossConfig",
    "NeckConfig",
    "PointGenerator",
    "ResNet",
    "TestConfig",
    "TinyBackbone",
    "atss_assign",
    "build_cls_loss",
    "build_detector",
    "concat_levels",
    "fcos_assign",
    "max_iou_assign",
    "postprocess_detections",
]
