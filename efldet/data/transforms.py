"""Image + box transforms, all from torchvision.transforms.v2: boxes move with the image by torchvision's own
kernels because they travel as `tv_tensors.BoundingBoxes` in the target dict.

Training (paper, Sec. 4.1): horizontal flip, keep-aspect-ratio resize with the shorter side drawn from
640..800 step 32 and the longer side at most 1333, ImageNet normalisation. Boxes that become empty (under
one pixel wide or high after clamping to the image) are dropped together with their labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB in [0, 1], what torchvision's ImageNet weights expect
IMAGENET_STD = (0.229, 0.224, 0.225)
TRAIN_MIN_SIZES = (640, 672, 704, 736, 768, 800)  # multi-scale training, shorter side
TEST_MIN_SIZE = 800
MAX_SIZE = 1333


def resize_shorter_side(min_sizes: Sequence[int], max_size: int | None) -> v2.Transform:
    """Keep-aspect-ratio resize: shorter side drawn from `min_sizes`, longer side at most `max_size`.
    (v2.Resize with an int size gives the shorter side exactly; v2.RandomShortestSize can be one pixel short
    because it truncates a float product.)"""
    sizes = [int(s) for s in min_sizes]
    if not sizes or min(sizes) < 1:
        raise ValueError(f"min_sizes must be positive integers; got {list(min_sizes)}")
    if max_size is not None and max_size <= max(sizes):
        raise ValueError(f"max_size ({max_size}) must be larger than every shorter-side size {sizes}")
    choices = [v2.Resize(size=s, max_size=max_size, antialias=True) for s in sizes]
    return choices[0] if len(choices) == 1 else v2.RandomChoice(choices)


def train_transforms(
    min_sizes: Sequence[int] = TRAIN_MIN_SIZES,
    max_size: int | None = MAX_SIZE,
    flip_prob: float = 0.5,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """(uint8 image, target) -> (normalised float32 image, target), randomly flipped and resized."""
    return v2.Compose(
        [
            v2.ClampBoundingBoxes(),
            v2.RandomHorizontalFlip(p=flip_prob),
            resize_shorter_side(min_sizes, max_size),
            v2.SanitizeBoundingBoxes(),  # drops boxes under 1 px and their labels (target["labels"])
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(mean), std=list(std)),
        ]
    )


def eval_transforms(
    min_size: int = TEST_MIN_SIZE,
    max_size: int | None = MAX_SIZE,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """Deterministic resize (shorter side `min_size`, longer at most `max_size`) and normalisation."""
    return v2.Compose(
        [
            v2.ClampBoundingBoxes(),
            resize_shorter_side([min_size], max_size),
            v2.SanitizeBoundingBoxes(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(mean), std=list(std)),
        ]
    )
