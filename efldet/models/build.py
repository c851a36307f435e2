"""Detector configuration and the one place that maps config names to classes.

`DetectorConfig` is a nested dataclass whose defaults are the paper's improved baseline (Sec. 4.1):
ATSS (top-k 18) with anchors {6, 8} x stride, ratio 1, IoU branch, GIoU weighted by the IoU target,
GN(32) head with 4 convs per tower, prior 0.001, ResNet-50 with frozen stem + stage 1 and frozen BN,
FPN P3-P7 with 256 channels, LVIS v1 (1203 classes). Fields left `None` take the chosen detector's own
value from `DETECTORS` (or `YOLOX_DETECTORS`). The later config system nests this dataclass as the `model:`
section.
"""

from __future__ import annotations

import difflib
import functools
import typing
from dataclasses import dataclass, field

from torch import nn

from efldet.errors import UserInputError
from efldet.losses import (
    EQLv2FocalLoss,
    EqualizedFocalLoss,
    EqualizedQualityFocalLoss,
    FocalLoss,
    QualityFocalLoss,
    SigmoidBCELoss,
)
from efldet.models.anchors import AnchorGenerator, PointGenerator
from efldet.models.assigners import atss_assign, fcos_assign, max_iou_assign
from efldet.models.backbones import YOLOX_SIZES, CSPDarknet, ResNet, TinyBackbone
from efldet.models.detector import DenseDetector
from efldet.models.heads import DenseHead, YOLOXHead
from efldet.models.necks import FPN, PAFPN
from efldet.models.paa import PAADetector
from efldet.models.yolox import SoftTargetBCELoss, YOLOXDetector

_RETINANET_SCALES = (4.0, 4.0 * 2 ** (1 / 3), 4.0 * 2 ** (2 / 3))

# Per-detector values for the fields left None: priors, assigner, quality branch, anchors, ATSS top-k.
DETECTORS: dict[str, dict] = {
    # the improved baseline of the paper (Sec. 4.1)
    "atss_iou": {"priors": "anchor", "assigner": "atss", "quality": "iou", "scales": (6.0, 8.0),
                 "ratios": (1.0,), "topk": 18},
    # original ATSS (Zhang et al. 2020): one anchor of scale 8, centerness, top-k 9
    "atss": {"priors": "anchor", "assigner": "atss", "quality": "centerness", "scales": (8.0,),
             "ratios": (1.0,), "topk": 9},
    # RetinaNet (Lin et al. 2017): 9 anchors, IoU 0.5 / 0.4, no quality branch
    "retinanet": {"priors": "anchor", "assigner": "max_iou", "quality": "none", "scales": _RETINANET_SCALES,
                  "ratios": (0.5, 1.0, 2.0), "topk": None},
    # PAA (Kim & Lee 2020): one anchor of scale 8, max-IoU 0.1 initial matching, then per-GT two-component GMM
    # re-assignment of the top-9-per-level candidates by (focal + GIoU) score; IoU branch; score voting at test time
    "paa": {"priors": "anchor", "assigner": "paa", "quality": "iou", "scales": (8.0,), "ratios": (1.0,), "topk": 9},
    # FCOS with centre sampling (as in the ATSS paper's FCOS), centerness on the box tower
    "fcos": {"priors": "point", "assigner": "fcos", "quality": "centerness", "scales": None, "ratios": None,
             "topk": None},
}

# Detectors on YOLOX's network (CSPDarknet `backbone.size` + PAFPN + decoupled `YOLOXHead`, strides 8-32). They
# need `backbone.name: cspdarknet`; neck.channels, head.num_convs and head.norm_groups do not apply to them.
# Extra keys: box_loss / l1_weight, the defaults of loss.box_loss / loss.l1_weight.
YOLOX_DETECTORS: dict[str, dict] = {
    # YOLOX-IP (Appendix A): the improved baseline's supervision and predictor (ATSS top-k 18, anchors {6, 8} x
    # stride, IoU branch) on YOLOX's network, IoU + L1 box loss; a `DenseDetector`
    "yolox_ip": {"priors": "anchor", "assigner": "atss", "quality": "iou", "scales": (6.0, 8.0),
                 "ratios": (1.0,), "topk": 18, "box_loss": "iou", "l1_weight": 1.0},
    # the original YOLOX (the "Sigmoid" rows of Table 8): anchor-free points, SimOTA, objectness, YOLOX's IoU (x5)
    # and L1 losses (L1 switched on by the trainer for the last data.no_aug_epochs); a `YOLOXDetector`
    "yolox": {"priors": "point", "assigner": "simota", "quality": "obj", "scales": None, "ratios": None,
              "topk": None},
}

# Losses that the original YOLOX applies to its positive points only (objectness carries the negatives);
# every other loss (the focal family) runs on all points, since it needs the negatives.
POSITIVES_ONLY_LOSSES = ("bce_iou", "bce")

# Classification losses by name -> (class, the LossConfig fields it takes, whether it takes num_classes).
LOSSES: dict[str, tuple[type[nn.Module], tuple[str, ...], bool]] = {
    "focal": (FocalLoss, ("alpha", "gamma"), False),
    "efl": (EqualizedFocalLoss, ("gamma_b", "scale_factor", "alpha", "focusing_factor", "weighting_factor"),
            True),
    "eqfl": (EqualizedQualityFocalLoss, ("gamma_b", "scale_factor", "focusing_factor", "weighting_factor"),
             True),
    "eqlv2_focal": (EQLv2FocalLoss, ("alpha", "gamma", "eqlv2_gamma", "eqlv2_mu", "eqlv2_alpha"), True),
    "qfl": (QualityFocalLoss, ("beta",), False),
    "bce": (SigmoidBCELoss, (), False),
    "bce_iou": (SoftTargetBCELoss, (), False),  # YOLOX: BCE with target one-hot x IoU
}


@dataclass
class BackboneConfig:
    name: str = "resnet"  # "resnet" (torchvision ResNet) | "tiny" (our small conv-GN CPU backbone) | "cspdarknet"
    depth: int = 50  # ResNet depth: 18 | 34 | 50 | 101
    weights: str | None = None  # torchvision ResNet state dict: local path or http(s) URL; None = random init
    frozen_stages: int = 1  # ResNet stages frozen: 1 = stem + layer1 (paper), 0 = none
    norm: str = "frozen_bn"  # ResNet norm: "frozen_bn" (paper) | "bn"
    tiny_widths: tuple[int, ...] = (16, 32, 64, 96, 128)  # "tiny" only: channels of its 5 stages
    size: str = "s"  # "cspdarknet" only: YOLOX size nano | tiny | s | m | l | x (also the PAFPN depth and head width)


@dataclass
class NeckConfig:
    channels: int = 256  # FPN P3-P7 channels (also the head's width); YOLOX detectors: set by backbone.size


@dataclass
class HeadConfig:
    num_convs: int = 4  # convs per tower (classification and box)
    norm_groups: int = 32  # GroupNorm groups (gcd with the width for narrow heads); 0 = no norm
    prior_prob: float = 0.001  # initial foreground probability of the classification layer (paper: 0.001)
    quality: str | None = None  # "iou" | "centerness" | "none"; None = the detector's (atss_iou: iou)


@dataclass
class AnchorConfig:
    scales: tuple[float, ...] | None = None  # anchor sizes in strides; None = detector's (atss_iou: 6, 8)
    ratios: tuple[float, ...] | None = None  # aspect ratios h/w; None = detector's (atss_iou: 1)
    offset: float = 0.5  # prior centre within its cell, in strides


@dataclass
class AssignerConfig:
    atss_topk: int | None = None  # ATSS candidates per level and GT; None = detector's (atss_iou 18, atss 9)
    fg_iou: float = 0.5  # RetinaNet: IoU at or above -> foreground
    bg_iou: float = 0.4  # RetinaNet: IoU below -> background (in between: ignored)
    center_radius: float = 1.5  # FCOS centre sampling radius in strides
    paa_topk: int | None = None  # PAA candidates per level and GT; None = detector's (paa: 9)
    paa_init_iou: float = 0.1  # PAA initial max-IoU matching threshold (foreground and background)


@dataclass
class LossConfig:
    name: str = "focal"  # classification loss: focal | efl | eqfl | eqlv2_focal | qfl | bce | bce_iou (YOLOX)
    alpha: float = 0.25  # focal / efl / eqlv2_focal balance factor
    gamma: float = 2.0  # focal / eqlv2_focal focusing parameter
    gamma_b: float = 2.0  # efl / eqfl base focusing factor
    scale_factor: float = 8.0  # efl / eqfl s (4 for YOLOX-IP)
    focusing_factor: bool = True  # efl / eqfl: category-relevant focusing factor (Table 3 ablation)
    weighting_factor: bool = True  # efl / eqfl: weighting factor gamma_j / gamma_b (Table 3 ablation)
    beta: float = 2.0  # qfl exponent
    eqlv2_gamma: float = 12.0  # eqlv2_focal: mapping function slope
    eqlv2_mu: float = 0.8  # eqlv2_focal: mapping function centre
    eqlv2_alpha: float = 4.0  # eqlv2_focal: positive re-weighting strength
    box_weight: float = 2.0  # multiplier of the box loss (GIoU or IoU, see box_loss)
    box_loss: str | None = None  # "giou" | "iou" (YOLOX's 1 - IoU^2); None = detector's (yolox_ip: iou, others giou)
    l1_weight: float | None = None  # L1 loss on the encoded box regression; None = detector's (yolox_ip 1, others 0)
    box_coder_weights: tuple[float, ...] = (10.0, 10.0, 5.0, 5.0)  # anchor delta coding (wx, wy, ww, wh)


@dataclass
class TestConfig:
    __test__ = False  # not a pytest test class

    pre_nms_topk: int = 1000  # best (prior, class) pairs kept per level before NMS
    score_thresh: float = 0.0  # paper: no score threshold
    nms_iou: float = 0.5  # class-aware NMS IoU threshold
    max_per_image: int = 300  # detections per image (LVIS protocol)


@dataclass
class DetectorConfig:
    name: str = "atss_iou"  # atss_iou (improved baseline) | atss | retinanet | fcos | paa | yolox_ip | yolox
    num_classes: int = 1203  # foreground classes C (LVIS v1: 1203)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    neck: NeckConfig = field(default_factory=NeckConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    assigner: AssignerConfig = field(default_factory=AssignerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    test: TestConfig = field(default_factory=TestConfig)


def _choice(value: str, choices: typing.Iterable[str], key: str) -> str:
    choices = list(choices)
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UserInputError(f"{key} = {value!r} is not one of {choices}{hint}")
    return value


def build_cls_loss(cfg: LossConfig, num_classes: int) -> nn.Module:
    """The classification loss module named by `cfg.name`, with the fields it takes."""
    cls, names, takes_classes = LOSSES[_choice(cfg.name, LOSSES, "loss.name")]
    kwargs = {name: getattr(cfg, name) for name in names}
    return cls(num_classes=num_classes, **kwargs) if takes_classes else cls(**kwargs)


def build_backbone(cfg: BackboneConfig) -> nn.Module:
    """The backbone named by `cfg.name`: image [N,3,H,W] -> [C3, C4, C5], with `out_channels`."""
    name = _choice(cfg.name, ("resnet", "tiny", "cspdarknet"), "backbone.name")
    if name == "resnet":
        return ResNet(cfg.depth, frozen_stages=cfg.frozen_stages, norm=cfg.norm, weights=cfg.weights)
    if name == "cspdarknet":
        return CSPDarknet.from_size(_choice(cfg.size, YOLOX_SIZES, "backbone.size"))
    if len(cfg.tiny_widths) != 5:
        raise UserInputError(f"backbone.tiny_widths needs 5 widths, got {list(cfg.tiny_widths)}")
    return TinyBackbone(widths=cfg.tiny_widths)


def _yolox_multipliers(cfg: DetectorConfig) -> tuple[float, float, bool]:
    if cfg.backbone.name != "cspdarknet":
        raise UserInputError(f"model.name = {cfg.name!r} runs on YOLOX's network: set model.backbone.name to "
                             f"'cspdarknet' (and model.backbone.size), not {cfg.backbone.name!r}")
    return YOLOX_SIZES[_choice(cfg.backbone.size, YOLOX_SIZES, "backbone.size")]


def build_yolox_network(cfg: DetectorConfig, *, num_anchors: int, quality: str) -> tuple[CSPDarknet, PAFPN, YOLOXHead]:
    """YOLOX's CSPDarknet + PAFPN + decoupled head of size `cfg.backbone.size` for `cfg.num_classes` classes,
    `num_anchors` priors per location and a `quality` ("obj" | "iou") branch; the head's classification prior is
    `cfg.head.prior_prob`. Shared by the YOLOX presets (yolox_ip here, the original YOLOX's `YOLOXDetector`)."""
    depth_multiplier, width_multiplier, depthwise = _yolox_multipliers(cfg)
    backbone = CSPDarknet(depth_multiplier=depth_multiplier, width_multiplier=width_multiplier, depthwise=depthwise)
    neck = PAFPN(in_channels=backbone.out_channels, depth_multiplier=depth_multiplier, depthwise=depthwise)
    head = YOLOXHead(in_channels=neck.out_channels, width=int(256 * width_multiplier), num_classes=cfg.num_classes,
                     num_anchors=num_anchors, quality=quality, prior_prob=cfg.head.prior_prob, depthwise=depthwise)
    return backbone, neck, head


def _prior_generator(cfg: DetectorConfig, preset: dict) -> AnchorGenerator | PointGenerator:
    """Anchors (scales / ratios from `cfg.anchors` or the preset) or points at the preset's neck strides."""
    strides = (8, 16, 32) if cfg.name in YOLOX_DETECTORS else (8, 16, 32, 64, 128)  # PAFPN P3-P5 | FPN P3-P7
    if preset["priors"] == "anchor":
        scales = cfg.anchors.scales if cfg.anchors.scales is not None else preset["scales"]
        ratios = cfg.anchors.ratios if cfg.anchors.ratios is not None else preset["ratios"]
        return AnchorGenerator(strides=strides, scales=scales, ratios=ratios, offset=cfg.anchors.offset)
    return PointGenerator(strides=strides, offset=cfg.anchors.offset)


def build_detector(cfg: DetectorConfig) -> DenseDetector | YOLOXDetector:
    """Build the detector described by `cfg` (see `DetectorConfig`)."""
    presets = {**DETECTORS, **YOLOX_DETECTORS}
    preset = presets[_choice(cfg.name, presets, "name")]
    if cfg.num_classes < 1:
        raise UserInputError(f"num_classes must be >= 1, got {cfg.num_classes}")
    if cfg.name == "yolox":
        backbone, neck, head = build_yolox_network(cfg, num_anchors=1, quality="obj")
        return YOLOXDetector(
            backbone=backbone, neck=neck, head=head, num_classes=cfg.num_classes, strides=neck.strides,
            cls_loss=build_cls_loss(cfg.loss, cfg.num_classes),
            cls_positives_only=cfg.loss.name in POSITIVES_ONLY_LOSSES,
            test_pre_nms_topk=cfg.test.pre_nms_topk, test_score_thresh=cfg.test.score_thresh,
            test_nms_iou=cfg.test.nms_iou, test_max_per_image=cfg.test.max_per_image,
        )
    priors = _prior_generator(cfg, preset)
    quality = cfg.head.quality if cfg.head.quality is not None else preset["quality"]
    backbone: nn.Module
    neck: nn.Module
    head: nn.Module
    if cfg.name in YOLOX_DETECTORS:
        _choice(quality, ("iou",), "head.quality")  # the one quality branch both YOLOXHead and DenseDetector know
        backbone, neck, head = build_yolox_network(cfg, num_anchors=priors.num_anchors, quality=quality)
    else:
        _choice(quality, ("iou", "centerness", "none"), "head.quality")
        backbone = build_backbone(cfg.backbone)
        neck = FPN(in_channels=backbone.out_channels, out_channels=cfg.neck.channels)
        head = DenseHead(
            in_channels=cfg.neck.channels, num_classes=cfg.num_classes, num_anchors=priors.num_anchors,
            num_convs=cfg.head.num_convs, norm_groups=cfg.head.norm_groups, quality=quality,
            prior_prob=cfg.head.prior_prob, num_levels=len(neck.strides),
        )
    if tuple(neck.strides) != priors.strides:
        raise ValueError(f"neck strides {neck.strides} differ from the prior strides {priors.strides}")
    if preset["assigner"] == "atss":
        topk = cfg.assigner.atss_topk if cfg.assigner.atss_topk is not None else preset["topk"]
        assigner = functools.partial(atss_assign, topk=topk)
    elif preset["assigner"] == "max_iou":
        assigner = functools.partial(max_iou_assign, fg_iou=cfg.assigner.fg_iou, bg_iou=cfg.assigner.bg_iou)
    elif preset["assigner"] == "paa":
        assigner = None  # PAADetector: its initial max-IoU matching at assigner.paa_init_iou, then the GMM
    else:
        assigner = functools.partial(
            fcos_assign, strides=neck.strides, center_radius=cfg.assigner.center_radius
        )
    box_loss = cfg.loss.box_loss if cfg.loss.box_loss is not None else preset.get("box_loss", "giou")
    l1_weight = cfg.loss.l1_weight if cfg.loss.l1_weight is not None else preset.get("l1_weight", 0.0)
    if not l1_weight >= 0:
        raise UserInputError(f"loss.l1_weight must be >= 0, got {l1_weight}")
    detector_class, extra = DenseDetector, {}
    if preset["assigner"] == "paa":
        topk = cfg.assigner.paa_topk if cfg.assigner.paa_topk is not None else preset["topk"]
        detector_class, extra = PAADetector, {"topk": topk, "init_iou": cfg.assigner.paa_init_iou}
    return detector_class(
        **extra,
        backbone=backbone, neck=neck, head=head, prior_generator=priors, assigner=assigner,
        cls_loss=build_cls_loss(cfg.loss, cfg.num_classes), num_classes=cfg.num_classes,
        box_coder_weights=cfg.loss.box_coder_weights, box_loss_weight=cfg.loss.box_weight,
        box_loss=_choice(box_loss, ("giou", "iou"), "loss.box_loss"), l1_loss_weight=l1_weight,
        test_pre_nms_topk=cfg.test.pre_nms_topk, test_score_thresh=cfg.test.score_thresh,
        test_nms_iou=cfg.test.nms_iou, test_max_per_image=cfg.test.max_per_image,
    )
