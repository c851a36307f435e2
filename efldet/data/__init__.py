"""Everything between a dataset on disk and a batch of tensors: COCO/LVIS json (at LVIS scale), long-tail
samplers, torchvision transforms, YOLOX's strong augmentation (Mosaic / MixUp), batching, and the synthetic
long-tailed benchmark.

Names are imported on first use (PEP 562), so `efldet data synth` and the category metadata do not pay for
importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "efldet.data.augment": (
        "AugmentBatchSampler",
        "MosaicMixUpDataset",
        "RandomHSV",
        "SampleKey",
        "adjust_hsv",
        "box_candidates",
        "multiscale_sizes",
        "random_affine",
    ),
    "efldet.data.categories": ("FREQUENCY_GROUPS", "frequency_groups", "packaged_lvis_categories"),
    "efldet.data.loader": (
        "augment_loader_kwargs",
        "build_test_loader",
        "build_train_dataset",
        "build_train_loader",
        "collate_detection",
        "normalize_transforms",
        "pad_images",
        "set_epoch",
        "set_strong_aug_epochs",
    ),
    "efldet.data.lvis": ("ImageReadError", "LVISDataset", "LVISIndex", "read_image"),
    "efldet.data.samplers": (
        "ClassBalancedSampler",
        "GroupedBatchSampler",
        "InferenceSampler",
        "RepeatFactorSampler",
        "ResumableBatchSampler",
        "aspect_ratio_groups",
        "repeat_factors",
    ),
    "efldet.data.transforms": ("IMAGENET_MEAN", "IMAGENET_STD", "eval_transforms", "train_transforms"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'efldet.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
