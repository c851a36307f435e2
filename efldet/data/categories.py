"""Category metadata without torch: LVIS frequency groups and the real LVIS v1 category list."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

# LVIS frequency groups by number of training images containing the category (LVIS paper, Sec. 3).
RARE_MAX_IMAGES = 10  # rare: 1-10 training images (0 counts as rare too)
COMMON_MAX_IMAGES = 100  # common: 11-100; frequent: > 100
FREQUENCY_GROUPS = ("r", "c", "f")


@lru_cache(maxsize=1)
def packaged_lvis_categories() -> list[dict[str, Any]]:
    """The real LVIS v1 category list shipped with the package: id, name, synset, frequency,
    train_image_count for each of the 1,203 categories, sorted by id."""
    text = resources.files("efldet.data").joinpath("lvis_v1_categories.json").read_text(encoding="utf-8")
    return json.loads(text)


def frequency_groups(image_counts: np.ndarray) -> np.ndarray:
    """LVIS frequency group ('r', 'c' or 'f') of each category from its number of training images."""
    counts = np.asarray(image_counts)
    groups = np.full(counts.shape, "f", dtype="<U1")
    groups[counts <= COMMON_MAX_IMAGES] = "c"
    groups[counts <= RARE_MAX_IMAGES] = "r"
    return groups
