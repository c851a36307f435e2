"""The training loader reshuffles per epoch with and without aspect-ratio grouping; the dataset exposes the
per-category and per-image metadata that samplers, the engine and evaluation read without decoding images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from efldet.data import LVISDataset, build_train_loader, set_epoch, train_transforms


class _Tiny(torch.utils.data.Dataset):
    """The sampler protocol (image_labels + num_classes) over blank images; one class per image."""

    num_classes = 3

    def __init__(self, n: int = 24) -> None:
        self.labels = [i % 3 for i in range(n)]

    def __len__(self) -> int:
        return len(self.labels)

    def image_labels(self):
        return np.arange(len(self) + 1, dtype=np.int64), np.array(self.labels, dtype=np.int64)

    def aspect_ratios(self):  # width / height: portrait and landscape alternate
        return np.array([0.5, 2.0] * (len(self) // 2))

    def __getitem__(self, i):
        return torch.full((3, 4, 4), float(i)), {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0).long(),
                                                  "image_id": i}


@pytest.mark.parametrize("grouping", [False, True])
@pytest.mark.parametrize("sampler", ["repeat_factor", "class_balanced", "random"])
def test_set_epoch_reshuffles_every_sampler_setup(grouping, sampler):
    def epoch_ids(loader, epoch):
        set_epoch(loader, epoch)
        return [[t["image_id"] for t in targets] for _, targets in loader]

    kwargs = {"batch_size": 4, "sampler": sampler, "seed": 3, "num_workers": 0, "num_replicas": 1, "rank": 0,
              "aspect_ratio_grouping": grouping}
    a, b = build_train_loader(_Tiny(), **kwargs), build_train_loader(_Tiny(), **kwargs)
    e0, e1 = epoch_ids(a, 0), epoch_ids(a, 1)
    assert e0 != e1  # a new order each epoch (24 images: equal orders by chance are ~impossible)
    assert epoch_ids(b, 1) == e1 and epoch_ids(b, 0) == e0  # deterministic for (seed, epoch)


def _files(tmp_path):
    data = {
        "images": [
            {"id": 30, "height": 20, "width": 40, "file_name": "a.png"},
            {"id": 10, "height": 16, "width": 8, "file_name": "b.png"},
        ],
        "annotations": [
            {"id": 1, "image_id": 30, "category_id": 9, "bbox": [2, 2, 10, 8]},
            {"id": 2, "image_id": 10, "category_id": 4, "bbox": [1, 1, 4, 4]},
        ],
        "categories": [
            {"id": 9, "name": "nine", "frequency": "r"},
            {"id": 4, "name": "four", "frequency": "f"},
        ],
    }
    for img in data["images"]:
        Image.new("RGB", (img["width"], img["height"]), (90, 10, 200)).save(tmp_path / img["file_name"])
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path


def test_dataset_metadata_without_decoding(tmp_path):
    ds = LVISDataset(_files(tmp_path), tmp_path)
    assert ds.category_ids == [4, 9] and ds.category_names == ["four", "nine"]  # sorted ids -> labels 0, 1
    assert ds.frequency_groups == ["f", "r"]
    assert ds.image_ids.tolist() == [30, 10]
    assert ds.image_sizes.tolist() == [[20, 40], [16, 8]]
    offsets, labels = ds.image_labels()
    assert offsets.tolist() == [0, 1, 2] and labels.tolist() == [1, 0]


def test_target_size_is_the_transformed_size(tmp_path):
    ds = LVISDataset(_files(tmp_path), tmp_path)
    image, target = ds[1]
    assert target["size"] == (16, 8) == tuple(image.shape[-2:]) and target["orig_size"] == (16, 8)
    ds = LVISDataset(_files(tmp_path), tmp_path, train_transforms(min_sizes=[10], max_size=100, flip_prob=0.0))
    image, target = ds[0]  # 20 x 40 -> shorter side 10 -> 10 x 20
    assert target["size"] == (10, 20) == tuple(image.shape[-2:]) and target["orig_size"] == (20, 40)
    torch.testing.assert_close(target["boxes"].as_subclass(torch.Tensor), torch.tensor([[1.0, 1.0, 6.0, 5.0]]))


def test_resumable_batch_sampler_starts_an_epoch_at_batch_n_in_the_same_order():
    from torch.utils.data import BatchSampler, SequentialSampler

    from efldet.data import ResumableBatchSampler

    class Shuffled(SequentialSampler):
        def __init__(self, n):
            super().__init__(range(n))
            self.epoch = 0

        def set_epoch(self, epoch):
            self.epoch = epoch

        def __iter__(self):
            return iter(torch.randperm(len(self.data_source), generator=torch.Generator().manual_seed(self.epoch))
                        .tolist())

    batches = ResumableBatchSampler(BatchSampler(Shuffled(10), 3, drop_last=False))
    batches.set_epoch(4)
    full = list(batches)
    batches.set_epoch(4)
    batches.start_at(2)
    assert list(batches) == full[2:]
    assert list(batches) == full            # start_at applies to one iteration only
    batches.set_epoch(5)                    # reaches the sampler inside the plain BatchSampler
    assert list(batches) != full and len(batches) == 4
