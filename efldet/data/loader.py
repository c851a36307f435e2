"""Batching and DataLoader set-up. Our own code only pads and collates; the rest is torch's DataLoader.

Shape letters: `N` images in a batch, `H`/`W` padded height/width (multiples of `size_divisibility`).

A batch is `(images, targets)`: `images` float32 [N, 3, H, W], each image at the top-left with zeros (the
normalised mean colour) to the right and below; `targets` a list of N dicts holding the dataset's target
(`boxes` float32 [M, 4] xyxy in the resized image's pixels, `labels` int64 [M], `image_id`, `orig_size`)
plus `image_size` = (h, w), the image's size before padding. Boxes in `orig_size` pixels are
`boxes * (orig_w / w, orig_h / h, orig_w / w, orig_h / h)` (not for Mosaic samples, which mix 4 images).

YOLOX's strong augmentation (`data.strong_aug`): `build_train_dataset` wraps the dataset in
`MosaicMixUpDataset`, and `build_train_loader` then hands it `SampleKey`s instead of indices
(`AugmentBatchSampler`): the epoch, the batch's multi-scale side and the switch-off of the last
`no_aug_epochs` epochs travel with each index, so they reach persistent workers. `set_epoch(loader, epoch)`
is all the training loop calls.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler
from torchvision.transforms import v2

from efldet.data.augment import AugmentBatchSampler, MosaicMixUpDataset, multiscale_sizes
from efldet.data.lvis import LVISDataset
from efldet.data.samplers import (
    ClassBalancedSampler,
    GroupedBatchSampler,
    InferenceSampler,
    RepeatFactorSampler,
    ResumableBatchSampler,
    aspect_ratio_groups,
)
from efldet.data.transforms import IMAGENET_MEAN, IMAGENET_STD, train_transforms
from efldet.engine.dist import get_rank, get_world_size
from efldet.errors import UserInputError

SAMPLERS = ("repeat_factor", "class_balanced", "random")


def pad_images(
    images: Sequence[torch.Tensor], size_divisibility: int = 32, pad_value: float = 0.0
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Stack [3, h_i, w_i] images into [N, 3, H, W], H and W the largest sizes rounded up to a multiple of
    `size_divisibility`; returns the batch and each image's (h_i, w_i)."""
    if not images:
        raise ValueError("pad_images needs at least one image")
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    d = max(int(size_divisibility), 1)
    height = math.ceil(max(h for h, _ in sizes) / d) * d
    width = math.ceil(max(w for _, w in sizes) / d) * d
    first = images[0]
    batch = torch.full(
        (len(images), first.shape[-3], height, width), pad_value, dtype=first.dtype, device=first.device
    )
    for im, out, (h, w) in zip(images, batch, sizes, strict=True):
        out[:, :h, :w].copy_(im)
    return batch, sizes


def collate_detection(
    batch: Sequence[tuple[torch.Tensor, dict[str, Any]]], size_divisibility: int = 32
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """DataLoader collate_fn: pad and stack the images, keep one target dict per image (see module doc)."""
    images, sizes = pad_images([im.as_subclass(torch.Tensor) for im, _ in batch], size_divisibility)
    targets = []
    for (_, target), size in zip(batch, sizes, strict=True):
        out = dict(target)
        for key in ("boxes", "labels"):
            if key in out:
                out[key] = out[key].as_subclass(torch.Tensor)  # plain tensors from here on
        out["image_size"] = size
        targets.append(out)
    return images, targets


def _worker_init(worker_id: int) -> None:
    # torch already seeds `random`, numpy and torch in each worker from the loader's generator (base seed +
    # worker id), so augmentation is reproducible for a given seed; keep each worker on one thread so that
    # the workers, not intra-op threads, use the cores.
    torch.set_num_threads(1)


def _loader_kwargs(num_workers: int | None, pin_memory: bool | None) -> dict[str, Any]:
    workers = min(2, os.cpu_count() or 1) if num_workers is None else int(num_workers)
    kwargs: dict[str, Any] = {
        "num_workers": workers,
        "pin_memory": torch.cuda.is_available() if pin_memory is None else pin_memory,
        "worker_init_fn": _worker_init if workers > 0 else None,
        "persistent_workers": workers > 0,
    }
    if workers > 0:
        kwargs["prefetch_factor"] = 2
    return kwargs


def build_train_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    sampler: str = "repeat_factor",
    rfs_threshold: float = 0.001,
    rfs_power: float = 0.5,
    rfs_rounding: str = "ceil",
    aspect_ratio_grouping: bool = True,
    drop_last: bool = False,
    seed: int = 0,
    num_workers: int | None = None,
    pin_memory: bool | None = None,
    size_divisibility: int = 32,
    num_replicas: int | None = None,
    rank: int | None = None,
    multiscale_sizes: Sequence[int] = (),
    multiscale_interval: int = 10,
    strong_aug_epochs: int | None = None,
) -> DataLoader:
    """A training DataLoader: `batch_size` images per rank, sampled by `sampler` ('repeat_factor',
    'class_balanced' or 'random'), batches grouped by aspect ratio. Call `set_epoch(loader, epoch)` before
    each epoch; `loader.batch_sampler.start_at(n)` makes the next epoch start at its batch n (resume).
    `num_workers` defaults to min(2, cores); workers persist across epochs; memory is pinned when CUDA is
    available.

    For a `MosaicMixUpDataset` (YOLOX strong augmentation) each batch is made at one side drawn from
    `multiscale_sizes` (pixels) every `multiscale_interval` batches, the same on all ranks (none: the
    dataset's `output_size`), and strong augmentation runs in epochs < `strong_aug_epochs` (None: all)."""
    num_replicas = get_world_size() if num_replicas is None else num_replicas
    rank = get_rank() if rank is None else rank
    if sampler == "repeat_factor":
        base = RepeatFactorSampler(
            dataset,
            threshold=rfs_threshold,
            power=rfs_power,
            rounding=rfs_rounding,
            seed=seed,
            num_replicas=num_replicas,
            rank=rank,
        )
    elif sampler == "class_balanced":
        base = ClassBalancedSampler(dataset, seed=seed, num_replicas=num_replicas, rank=rank)
    elif sampler == "random":
        base = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
    else:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}; got {sampler!r}")
    if aspect_ratio_grouping and hasattr(dataset, "aspect_ratios"):
        batches = GroupedBatchSampler(
            base, aspect_ratio_groups(dataset.aspect_ratios()), batch_size, drop_last
        )
    else:
        batches = BatchSampler(base, batch_size, drop_last)
    if isinstance(dataset, MosaicMixUpDataset):  # indices become SampleKeys (epoch, side, switch): module doc
        batches = AugmentBatchSampler(
            batches,
            input_size=dataset.output_size,
            sizes=multiscale_sizes,
            interval=multiscale_interval,
            strong_epochs=strong_aug_epochs,
            seed=seed,
            rank=rank,
            num_replicas=num_replicas,
        )
    elif multiscale_sizes or strong_aug_epochs is not None:
        raise UserInputError(
            "multi-scale sizes and strong_aug_epochs need the YOLOX strong augmentation (a MosaicMixUpDataset, "
            "data.strong_aug=true); the plain training transforms draw their sizes themselves"
        )
    generator = torch.Generator().manual_seed(int(seed) * 1000 + int(rank))  # per-rank augmentation stream
    return DataLoader(
        dataset,
        batch_sampler=ResumableBatchSampler(batches),
        collate_fn=functools.partial(collate_detection, size_divisibility=size_divisibility),
        generator=generator,
        **_loader_kwargs(num_workers, pin_memory),
    )


def build_test_loader(
    dataset: Dataset,
    *,
    batch_size: int = 1,
    num_workers: int | None = None,
    pin_memory: bool | None = None,
    size_divisibility: int = 32,
    num_replicas: int | None = None,
    rank: int | None = None,
) -> DataLoader:
    """An evaluation DataLoader over this rank's contiguous shard of the dataset, in order."""
    sampler = InferenceSampler(len(dataset), num_replicas=num_replicas, rank=rank)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=functools.partial(collate_detection, size_divisibility=size_divisibility),
        **_loader_kwargs(num_workers, pin_memory),
    )


def _augment_batch_sampler(loader: DataLoader) -> AugmentBatchSampler | None:
    part = loader.batch_sampler
    while part is not None and not isinstance(part, AugmentBatchSampler):
        part = getattr(part, "batches", None)
    return part


def set_strong_aug_epochs(loader: DataLoader, epochs: int | None) -> None:
    """From the next epoch on, strong augmentation (Mosaic / MixUp) runs in epochs < `epochs` (None: all).
    For when the run's length is known only after the loader is built (e.g. `train.max_iters`)."""
    sampler = _augment_batch_sampler(loader)
    if sampler is None:
        raise UserInputError("set_strong_aug_epochs needs a loader built on a MosaicMixUpDataset "
                             "(data.strong_aug=true)")
    sampler.strong_epochs = None if epochs is None else int(epochs)


def normalize_transforms(mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> v2.Compose:
    """uint8 image -> float32 in [0, 1] -> (x - mean) / std, as at the end of `train_transforms`."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))])


def build_train_dataset(data: Any, ann_file: str, image_root: str, *, seed: int = 0) -> Dataset:
    """The training dataset of a `DataConfig` (`data`): an `LVISDataset` with the paper's transforms
    (shorter side from `train_short_sides`, `max_size`, `flip_prob`), or with `data.strong_aug` YOLOX's
    `MosaicMixUpDataset` (side `input_size`, data.mosaic_* / mixup_* / affine_* / hsv_gains / flip_prob)
    around an untransformed `LVISDataset`, then ToDtype + Normalize. `seed` seeds the augmentation."""
    if not data.strong_aug:
        return LVISDataset(ann_file, image_root,
                           transforms=train_transforms(data.train_short_sides, data.max_size, data.flip_prob))
    return MosaicMixUpDataset(
        LVISDataset(ann_file, image_root),
        output_size=data.input_size,
        mosaic_prob=data.mosaic_prob,
        mixup_prob=data.mixup_prob,
        mosaic_scale=tuple(data.mosaic_scale),
        mixup_scale=tuple(data.mixup_scale),
        degrees=data.affine_degrees,
        translate=data.affine_translate,
        shear=data.affine_shear,
        hsv=tuple(data.hsv_gains),
        flip_prob=data.flip_prob,
        seed=seed,
        transforms=normalize_transforms(),
    )


def augment_loader_kwargs(data: Any, *, epochs: int) -> dict[str, Any]:
    """`build_train_loader` keyword arguments for a `DataConfig`'s strong augmentation ({} when
    `data.strong_aug` is off): the multi-scale sides and the last `data.no_aug_epochs` of `epochs` epochs
    without Mosaic / MixUp."""
    if not data.strong_aug:
        return {}
    if not 0 <= data.no_aug_epochs < max(int(epochs), 1):
        raise UserInputError(f"data.no_aug_epochs = {data.no_aug_epochs} must be >= 0 and below train.epochs = "
                             f"{epochs} (YOLOX: 15 of 300), or strong augmentation would never run")
    sizes: tuple[int, ...] = ()
    if data.multiscale_range is not None:
        if len(data.multiscale_range) != 2:
            raise UserInputError(f"data.multiscale_range must be [low, high] in pixels (YOLOX: [448, 832]); got "
                                 f"{list(data.multiscale_range)}")
        sizes = multiscale_sizes(*data.multiscale_range)
    return {
        "multiscale_sizes": sizes,
        "multiscale_interval": data.multiscale_interval,
        "strong_aug_epochs": epochs - data.no_aug_epochs if data.no_aug_epochs else None,
    }


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Reshuffle a training loader for `epoch` (deterministic for the loader's seed)."""
    # A plain BatchSampler has no set_epoch; its `.sampler` does. (`loader.sampler` is then DataLoader's
    # default SequentialSampler, not ours.)
    batch_sampler = loader.batch_sampler
    for part in (batch_sampler, getattr(batch_sampler, "sampler", None), loader.sampler):
        if hasattr(part, "set_epoch"):
            part.set_epoch(epoch)
            return
