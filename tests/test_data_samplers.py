"""Repeat factor sampling, class-balanced sampling, batch grouping: formulas, determinism, DDP sharding."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from efldet.data import (
    ClassBalancedSampler,
    GroupedBatchSampler,
    InferenceSampler,
    RepeatFactorSampler,
    build_train_loader,
    repeat_factors,
    set_epoch,
)


class _Labels:
    """The sampler protocol: image_labels() CSR + num_classes."""

    def __init__(self, per_image, num_classes):
        self.per_image = [sorted(set(x)) for x in per_image]
        self.num_classes = num_classes

    def __len__(self):
        return len(self.per_image)

    def image_labels(self):
        offsets = np.cumsum([0] + [len(x) for x in self.per_image])
        labels = np.array([c for x in self.per_image for c in x], dtype=np.int64)
        return offsets, labels


def _reference_factors(per_image, threshold, power=0.5):
    n = len(per_image)
    count = Counter(c for x in per_image for c in set(x))
    r_c = {c: max(1.0, (threshold / (k / n)) ** power) for c, k in count.items()}
    return [max([r_c[c] for c in x], default=1.0) for x in per_image]


def _long_tail(n=200, seed=0):
    rng = np.random.default_rng(seed)
    per_image = []
    for i in range(n):
        labels = [0] if i % 2 == 0 else [1]
        if i % 10 == 0:
            labels.append(2)
        if i == 7:
            labels.append(3)  # in one image
        if i in (3, 4):
            labels = []  # no boxes
        labels += list(rng.integers(4, 6, size=rng.integers(0, 2)))
        per_image.append(labels)
    return _Labels(per_image, num_classes=7)  # class 6 in no image


def test_repeat_factors_formula():
    ds = _long_tail()
    for t in (0.001, 0.05, 0.3):
        sampler = RepeatFactorSampler(ds, threshold=t, num_replicas=1, rank=0)
        expected = _reference_factors(ds.per_image, t)
        assert sampler.repeat_factors.dtype == torch.float64 and len(sampler.repeat_factors) == len(ds)
        np.testing.assert_allclose(sampler.repeat_factors.numpy(), expected, rtol=1e-12)
    # t = 0.3: class 3 (1 of 200 images) -> sqrt(0.3 / 0.005); class 2 (20 images) -> sqrt(0.3 / 0.1)
    r = RepeatFactorSampler(ds, threshold=0.3, num_replicas=1, rank=0).repeat_factors
    assert r[7] == pytest.approx(math.sqrt(60)) and r[10] == pytest.approx(math.sqrt(3)) and r[3] == 1.0


def test_rounding_modes_and_epoch_length():
    ds = _long_tail()
    base = _reference_factors(ds.per_image, 0.3)
    for rounding, fn in (
        ("ceil", math.ceil),
        ("floor", math.floor),
        ("round", lambda x: math.floor(x + 0.5)),
    ):
        s = RepeatFactorSampler(ds, threshold=0.3, rounding=rounding, num_replicas=1, rank=0)
        counts = Counter(list(s))
        assert [counts[i] for i in range(len(ds))] == [fn(x) for x in base]
        assert s.epoch_length == len(s) == sum(fn(x) for x in base)
    s = RepeatFactorSampler(ds, threshold=0.3, rounding="stochastic", num_replicas=1, rank=0)
    totals = []
    for epoch in range(200):
        s.set_epoch(epoch)
        counts = Counter(list(s))
        assert all(math.floor(x) <= counts[i] <= math.ceil(x) for i, x in enumerate(base))
        totals.append(s.epoch_length)
    assert np.mean(totals) == pytest.approx(sum(base), rel=0.01)
    with pytest.raises(ValueError, match="rounding must be one of"):
        RepeatFactorSampler(ds, rounding="up", num_replicas=1, rank=0)


def test_ceil_of_an_exact_integer_is_not_rounded_up():
    # f_c = 1/4000, t = 0.001: r = sqrt(4) = 2 in exact arithmetic; float error must not make it 3
    per_image = [[0]] + [[1]] * 3999
    s = RepeatFactorSampler(_Labels(per_image, 2), threshold=0.001, num_replicas=1, rank=0)
    assert s.repeat_factors[0] == pytest.approx(2.0)
    assert Counter(list(s))[0] == 2


def test_deterministic_per_seed_and_epoch_and_reshuffled():
    ds = _long_tail()
    a = RepeatFactorSampler(ds, threshold=0.1, seed=3, num_replicas=1, rank=0)
    b = RepeatFactorSampler(ds, threshold=0.1, seed=3, num_replicas=1, rank=0)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first and sorted(list(a)) == sorted(first)
    c = RepeatFactorSampler(ds, threshold=0.1, seed=4, num_replicas=1, rank=0)
    assert list(c) != first


@pytest.mark.parametrize("world", [2, 3, 8])
@pytest.mark.parametrize("kind", ["rfs", "cbs"])
def test_shards_have_equal_length_and_cover_the_epoch(world, kind):
    ds = _long_tail(n=101)

    def make(rank):
        if kind == "rfs":
            return RepeatFactorSampler(
                ds, threshold=0.3, rounding="stochastic", seed=1, num_replicas=world, rank=rank
            )
        return ClassBalancedSampler(ds, seed=1, num_replicas=world, rank=rank)

    shards = []
    for rank in range(world):
        s = make(rank)
        s.set_epoch(5)
        shards.append(list(s))
        assert len(shards[-1]) == len(s)
    assert len({len(x) for x in shards}) == 1
    full = make(0)
    full.set_epoch(5)
    epoch = full.epoch_indices().tolist()
    merged = [shards[r][k] for k in range(len(shards[0])) for r in range(world)]
    assert merged[: len(epoch)] == epoch and merged[len(epoch) :] == epoch[: len(merged) - len(epoch)]


def test_class_balanced_sampler_draws_classes_uniformly():
    ds = _long_tail(n=400)
    s = ClassBalancedSampler(ds, num_samples=30000, seed=0, num_replicas=1, rank=0)
    per_image = ds.per_image
    idx = list(s)
    assert len(idx) == 30000
    # images of the class seen in 1 image (class 3) are drawn about 1/6 of the time (6 classes present)
    share = np.mean([3 in per_image[i] for i in idx])
    assert share == pytest.approx(1 / 6, abs=0.02)
    assert not any(per_image[i] == [] for i in idx)  # images without boxes are never drawn


def test_grouped_batches_by_aspect_ratio():
    sampler = list(range(23))
    groups = [i % 2 for i in range(23)]

    class _S(torch.utils.data.Sampler):
        def __iter__(self):
            return iter(sampler)

        def __len__(self):
            return len(sampler)

    batches = list(GroupedBatchSampler(_S(), groups, batch_size=4))
    assert len(batches) == len(GroupedBatchSampler(_S(), groups, batch_size=4)) == math.ceil(23 / 4)
    assert sorted(i for b in batches for i in b) == sampler
    full = [b for b in batches if len(b) == 4 and len({groups[i] for i in b}) == 1]
    assert len(full) == 5 and batches[-1] == [17, 19, 21]  # 12 even, 11 odd indices: 3 + 2 full, 3 left over
    assert len(list(GroupedBatchSampler(_S(), groups, batch_size=4, drop_last=True))) == 23 // 4


def test_inference_sampler_contiguous_shards():
    shards = [list(InferenceSampler(10, num_replicas=3, rank=r)) for r in range(3)]
    assert shards == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    with pytest.raises(ValueError, match="rank"):
        InferenceSampler(10, num_replicas=2, rank=2)


def test_repeat_factors_function_handles_no_labels():
    assert repeat_factors(np.zeros(4, np.int64), np.zeros(0, np.int64), 3).tolist() == [1.0, 1.0, 1.0]


def test_sampler_needs_the_protocol():
    with pytest.raises(TypeError, match="needs image_labels"):
        RepeatFactorSampler(list(range(3)), num_replicas=1, rank=0)


def test_train_loader_end_to_end(tmp_path):
    """Batches padded to multiples of 32; samples and augmentation (in 2 workers) fixed by the seed."""
    from efldet.data import LVISDataset, train_transforms
    from efldet.data.synthetic import generate

    generate(str(tmp_path), num_classes=6, train_images=24, val_images=6, image_size=48, seed=0)
    ds = LVISDataset(tmp_path / "train.json", tmp_path, train_transforms(min_sizes=[40, 56, 72], max_size=200))

    def epoch(seed, number):
        loader = build_train_loader(ds, batch_size=4, seed=seed, num_workers=2, rfs_threshold=0.2)
        set_epoch(loader, number)
        out = [(images, [t["image_id"] for t in targets]) for images, targets in loader]
        assert len(out) == len(loader.batch_sampler)
        return out

    a, b, c = epoch(0, 1), epoch(0, 1), epoch(1, 1)
    assert [ids for _, ids in a] == [ids for _, ids in b] != [ids for _, ids in c]
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a, b, strict=True))
    assert {tuple(x.shape[-2:]) for x, _ in a} == {(64, 64), (96, 96)}  # 40 / 56 -> 64, 72 -> 96
    assert [ids for _, ids in epoch(0, 2)] != [ids for _, ids in a]
