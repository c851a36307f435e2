"""Architecture summary of a detector: parameters per component and a FLOPs estimate.

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` on one forward of the network (backbone,
neck, head) for a single image; assignment, losses and post-processing are not counted.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from efldet.models.build import DetectorConfig, build_detector
from efldet.models.detector import DenseDetector


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(all parameters, trainable parameters) of `module`; frozen BN statistics are buffers, not counted."""
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return total, trainable


def network_flops(model: DenseDetector, input_size: tuple[int, int]) -> int:
    """FLOPs (2 per multiply-add) of backbone + neck + head on one [1, 3, H, W] image of `model`'s device."""
    param = next(model.parameters())
    images = torch.zeros(1, 3, *input_size, device=param.device, dtype=param.dtype)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.predict_raw(model.features(images))
    return int(counter.get_total_flops())


def _backbone_name(cfg: DetectorConfig) -> str:
    """Short backbone name for the summary: "resnet50", "tiny", "cspdarknet-s", ..."""
    if cfg.backbone.name == "resnet":
        return f"resnet{cfg.backbone.depth}"
    if cfg.backbone.name == "cspdarknet":
        return f"cspdarknet-{cfg.backbone.size}"
    return cfg.backbone.name


def detector_summary(cfg: DetectorConfig, input_size: tuple[int, int] = (800, 1333)) -> dict:
    """Summary of the detector `cfg` describes, built without weights on the meta device (no memory, no
    compute): name, classes, priors per location, parameters (total / trainable / per component), FLOPs."""
    cfg_meta = dataclasses.replace(cfg, backbone=dataclasses.replace(cfg.backbone, weights=None))
    with torch.device("meta"):
        model = build_detector(cfg_meta)
    model.eval()
    total, trainable = count_parameters(model)
    components = {}
    for name in ("backbone", "neck", "head"):
        part_total, part_trainable = count_parameters(getattr(model, name))
        components[name] = {"class": type(getattr(model, name)).__name__, "params": part_total,
                            "trainable_params": part_trainable}
    return {
        "name": cfg.name,
        "num_classes": cfg.num_classes,
        "backbone": _backbone_name(cfg),
        "priors_per_location": model.prior_generator.num_anchors,
        "quality": model.head.quality,
        "cls_loss": type(model.cls_loss).__name__,
        "params": total,
        "trainable_params": trainable,
        "components": components,
        "input_size": list(input_size),
        "flops": network_flops(model, input_size),
    }
