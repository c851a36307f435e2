"""Long-tail samplers and batch grouping, DDP-aware and deterministic for a given (seed, epoch).

Shape letters: `N` images in the dataset, `C` classes.

Every sampler here builds the whole epoch's index list from `numpy.random.default_rng([seed, epoch])` (the
same list on every rank), pads it by wrapping around to a multiple of `num_replicas`, and gives rank `r` the
entries `r, r + R, r + 2R, ...`, so all ranks see the same number of samples (DDP needs that) and no image is
dropped. Call `set_epoch(epoch)` before each epoch to reshuffle.

The dataset protocol the samplers use: `dataset.image_labels()` -> CSR `(offsets int64 [N + 1], labels int64)`
with the unique labels of each image, and `dataset.num_classes`. `efldet.data.LVISDataset` provides both.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from efldet.engine.dist import get_rank, get_world_size

ROUNDINGS = ("ceil", "stochastic", "floor", "round")
_EPS = 1e-9  # (t / f)^p computed in floating point may land a hair above an integer: do not round that up


def repeat_factors(
    offsets: np.ndarray, labels: np.ndarray, num_classes: int, threshold: float = 0.001, power: float = 0.5
) -> np.ndarray:
    """Repeat factor sampling (Gupta et al., LVIS, 2019), before rounding; float64 [N].

    f_c = fraction of the N images that contain class c; r_c = max(1, (t / f_c) ^ power);
    r_i = max over the classes c in image i of r_c (1 for an image without boxes).
    """
    num_images = len(offsets) - 1
    counts = np.bincount(labels, minlength=num_classes)[:num_classes].astype(
        np.float64
    )  # [C] images per class
    freq = counts / max(num_images, 1)
    with np.errstate(divide="ignore"):
        r_class = np.maximum(1.0, (threshold / freq) ** power)  # [C]; inf for absent classes, never used
    factors = np.ones(num_images, dtype=np.float64)
    lengths = np.diff(offsets)
    nonempty = lengths > 0
    if labels.size:
        # reduceat segments run from one non-empty image's start to the next one's: exactly its own labels.
        factors[nonempty] = np.maximum.reduceat(r_class[labels], offsets[:-1][nonempty])
    return factors


def round_repeat_factors(factors: np.ndarray, rounding: str, rng: np.random.Generator) -> np.ndarray:
    """Integer repeats int64 [N]: 'ceil' (the paper's setting), 'floor', 'round' (half up) or 'stochastic'
    (floor(r) + Bernoulli(r - floor(r)), detectron2's: the expected number of repeats equals r)."""
    if rounding == "ceil":
        return np.ceil(factors - _EPS).astype(np.int64)
    if rounding == "floor":
        return np.floor(factors + _EPS).astype(np.int64)
    if rounding == "round":
        return np.floor(factors + 0.5).astype(np.int64)
    if rounding == "stochastic":
        whole = np.floor(factors)
        return (whole + (rng.random(len(factors)) < factors - whole)).astype(np.int64)
    raise ValueError(f"rounding must be one of {', '.join(ROUNDINGS)}; got {rounding!r}")


def _replicas(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    num_replicas = get_world_size() if num_replicas is None else int(num_replicas)
    rank = get_rank() if rank is None else int(rank)
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas; got {num_replicas}, {rank}")
    return num_replicas, rank


def _shard(indices: np.ndarray, num_replicas: int, rank: int) -> np.ndarray:
    """Pad by wrapping to a multiple of num_replicas, then take every num_replicas-th entry from rank."""
    if len(indices) == 0:
        return indices
    total = math.ceil(len(indices) / num_replicas) * num_replicas
    if total > len(indices):
        indices = np.concatenate([indices, np.resize(indices, total - len(indices))])
    return indices[rank:total:num_replicas]


def _image_labels(dataset: Any) -> tuple[np.ndarray, np.ndarray, int]:
    if not hasattr(dataset, "image_labels") or not hasattr(dataset, "num_classes"):
        raise TypeError(
            f"{type(dataset).__name__} cannot be used with a long-tail sampler: it needs image_labels() -> "
            "(offsets, labels) and num_classes, as efldet.data.LVISDataset has"
        )
    offsets, labels = dataset.image_labels()
    return np.asarray(offsets, np.int64), np.asarray(labels, np.int64), int(dataset.num_classes)


class _EpochSampler(Sampler[int]):
    """Shared part: an epoch's full index list (cached), sharded per rank."""

    def __init__(self, seed: int, num_replicas: int | None, rank: int | None) -> None:
        self.seed = int(seed)
        self.num_replicas, self.rank = _replicas(num_replicas, rank)
        self.epoch = 0
        self._cache: tuple[int, np.ndarray] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _make_epoch(self, rng: np.random.Generator) -> np.ndarray:  # all ranks' indices for one epoch
        raise NotImplementedError  # abstract: each sampler defines its epoch

    def epoch_indices(self) -> np.ndarray:
        """All ranks' indices of the current epoch, before padding and sharding."""
        if self._cache is None or self._cache[0] != self.epoch:
            self._cache = (self.epoch, self._make_epoch(np.random.default_rng([self.seed, self.epoch])))
        return self._cache[1]

    @property
    def epoch_length(self) -> int:
        """Images in the current epoch over all ranks (before padding to a multiple of num_replicas)."""
        return len(self.epoch_indices())

    def __len__(self) -> int:
        return math.ceil(self.epoch_length / self.num_replicas)

    def __iter__(self) -> Iterator[int]:
        return iter(_shard(self.epoch_indices(), self.num_replicas, self.rank).tolist())


class RepeatFactorSampler(_EpochSampler):
    """Repeat factor sampling: image i appears round(r_i) times per epoch, r_i as in `repeat_factors`.

    `repeat_factors` (float64 tensor [N]) holds r_i before rounding; `epoch_length` is the epoch's size over
    all ranks (with 'stochastic' rounding it changes from epoch to epoch; its expectation is sum(r_i)).
    """

    def __init__(
        self,
        dataset: Any,
        threshold: float = 0.001,
        power: float = 0.5,
        rounding: str = "ceil",
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
    ) -> None:
        super().__init__(seed, num_replicas, rank)
        if rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {', '.join(ROUNDINGS)}; got {rounding!r}")
        if not threshold > 0:
            raise ValueError(f"threshold must be > 0; got {threshold}")
        self.threshold, self.power, self.rounding, self.shuffle = (
            float(threshold),
            float(power),
            rounding,
            shuffle,
        )
        offsets, labels, num_classes = _image_labels(dataset)
        self.repeat_factors = torch.from_numpy(repeat_factors(offsets, labels, num_classes, threshold, power))

    def _make_epoch(self, rng: np.random.Generator) -> np.ndarray:
        reps = round_repeat_factors(self.repeat_factors.numpy(), self.rounding, rng)  # [N]
        indices = np.repeat(np.arange(len(reps), dtype=np.int64), reps)
        return rng.permutation(indices) if self.shuffle else indices


class ClassBalancedSampler(_EpochSampler):
    """Class-aware sampling (Shen et al., 2016): pick a class uniformly among those with at least one image,
    then an image of that class uniformly. `num_samples` per epoch over all ranks (default: len(dataset))."""

    def __init__(
        self,
        dataset: Any,
        num_samples: int | None = None,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        super().__init__(seed, num_replicas, rank)
        offsets, labels, num_classes = _image_labels(dataset)
        num_images = len(offsets) - 1
        self.num_samples = num_images if num_samples is None else int(num_samples)
        # Images of each class, CSR by class: (class_offsets [C + 1], class_images).
        image_of = np.repeat(np.arange(num_images, dtype=np.int64), np.diff(offsets))  # image of each label
        order = np.argsort(labels, kind="stable")
        self.class_images = image_of[order]
        counts = np.bincount(labels, minlength=num_classes)[:num_classes]
        self.class_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.classes = np.flatnonzero(counts > 0)  # classes that can be drawn
        if len(self.classes) == 0 and self.num_samples > 0:
            raise ValueError("ClassBalancedSampler needs a dataset with at least one labelled box")

    def _make_epoch(self, rng: np.random.Generator) -> np.ndarray:
        cls = self.classes[rng.integers(0, len(self.classes), size=self.num_samples)]
        count = self.class_offsets[cls + 1] - self.class_offsets[cls]
        pick = np.minimum((rng.random(self.num_samples) * count).astype(np.int64), count - 1)
        return self.class_images[self.class_offsets[cls] + pick]


class InferenceSampler(Sampler[int]):
    """Evaluation: rank r gets the contiguous shard [N r / R, N (r + 1) / R), in order, nothing repeated."""

    def __init__(self, size: int, num_replicas: int | None = None, rank: int | None = None) -> None:
        self.num_replicas, self.rank = _replicas(num_replicas, rank)
        self.start = size * self.rank // self.num_replicas
        self.end = size * (self.rank + 1) // self.num_replicas

    def __len__(self) -> int:
        return self.end - self.start

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.end))


def aspect_ratio_groups(aspect_ratios: Sequence[float] | np.ndarray) -> np.ndarray:
    """Group id of each image: 1 for landscape or square (width >= height), 0 for portrait."""
    return (np.asarray(aspect_ratios) >= 1.0).astype(np.int64)


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches whose images share a group (aspect ratio), so padding wastes little.

    Batches are yielded as soon as a group fills one; what is left in the groups at the end of the epoch is
    batched together (mixed groups), so the number of batches is exactly ceil(len(sampler) / batch_size)
    (floor with drop_last) and equal on every rank.
    """

    def __init__(
        self,
        sampler: Sampler[int],
        group_ids: Sequence[int] | np.ndarray,
        batch_size: int,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        self.sampler = sampler
        self.group_ids = np.asarray(group_ids, dtype=np.int64)
        self.batch_size = int(batch_size)
        self.drop_last = drop_last

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        buckets: dict[int, list[int]] = {}
        for idx in self.sampler:
            bucket = buckets.setdefault(int(self.group_ids[idx]), [])
            bucket.append(idx)
            if len(bucket) == self.batch_size:
                yield bucket[:]
                bucket.clear()
        rest = [i for g in sorted(buckets) for i in buckets[g]]
        for k in range(0, len(rest), self.batch_size):
            batch = rest[k : k + self.batch_size]
            if len(batch) < self.batch_size and self.drop_last:
                return
            yield batch

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)


class ResumableBatchSampler(Sampler[list[int]]):
    """Wraps a batch sampler so that an epoch can start at its batch n (`start_at(n)`, for resuming a run inside
    an epoch): the skipped batches' indices are drawn, so the order is unchanged, but their images are never
    loaded. `set_epoch` reaches the sampler that shuffles (the wrapped one, or the one inside a BatchSampler)."""

    def __init__(self, batches: Sampler[list[int]]) -> None:
        self.batches = batches
        self._start = 0

    def set_epoch(self, epoch: int) -> None:
        for part in (self.batches, getattr(self.batches, "sampler", None)):
            if hasattr(part, "set_epoch"):
                part.set_epoch(epoch)
                return

    def start_at(self, batch: int) -> None:
        """The next iteration begins at batch `batch` of the epoch (then starts at 0 again)."""
        self._start = int(batch)

    def __iter__(self) -> Iterator[list[int]]:
        start, self._start = self._start, 0
        for position, batch in enumerate(self.batches):
            if position >= start:
                yield batch

    def __len__(self) -> int:
        return len(self.batches)

