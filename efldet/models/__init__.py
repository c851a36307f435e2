"""One-stage detectors: ATSS with the IoU branch (the paper's improved baseline), ATSS, RetinaNet, FCOS, PAA,
YOLOX-IP (Appendix A) and the original YOLOX."""

from efldet.models.anchors import AnchorGenerator, PointGenerator
from efldet.models.assigners import BACKGROUND, IGNORE, atss_assign, fcos_assign, max_iou_assign, simota_assign
from efldet.models.backbones import YOLOX_SIZES, CSPDarknet, ResNet, TinyBackbone
from efldet.models.build import (
    DETECTORS,
    LOSSES,
    YOLOX_DETECTORS,
    AnchorConfig,
    AssignerConfig,
    BackboneConfig,
    DetectorConfig,
    HeadConfig,
    LossConfig,
    NeckConfig,
    TestConfig,
    build_backbone,
    build_cls_loss,
    build_detector,
    build_yolox_network,
)
from efldet.models.detector import DenseDetector
from efldet.models.heads import DenseHead, YOLOXHead, concat_levels
from efldet.models.necks import FPN, PAFPN
from efldet.models.paa import PAADetector
from efldet.models.postprocess import postprocess_detections
from efldet.models.yolox import SoftTargetBCELoss, YOLOXDetector

__all__ = [
    "PAADetector",
    "PAFPN",
    "YOLOX_DETECTORS",
    "YOLOX_SIZES",
    "CSPDarknet",
    "SoftTargetBCELoss",
    "YOLOXDetector",
    "YOLOXHead",
    "build_backbone",
    "build_yolox_network",
    "simota_assign",
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
