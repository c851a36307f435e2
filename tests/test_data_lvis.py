"""COCO/LVIS json index and dataset: reading, the LVIS layout, frequency groups, clear errors."""

from __future__ import annotations

import gzip
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from efldet.data import json_stream
from efldet.data.json_stream import read_json_object
from efldet.data.lvis import ImageReadError, LVISDataset, LVISIndex
from efldet.errors import UserInputError


def _lvis_file(tmp_path, **overrides):
    """A small LVIS-v1-style file: coco_url instead of file_name, federated fields, frequency."""
    data = {
        "info": {"year": 2020},
        "images": [
            {
                "id": 7,
                "height": 20,
                "width": 30,
                "coco_url": "http://images.cocodataset.org/train2017/000000000007.jpg",
                "neg_category_ids": [5],
                "not_exhaustive_category_ids": [9],
            },
            {
                "id": 3,
                "height": 10,
                "width": 10,
                "coco_url": "http://images.cocodataset.org/val2017/000000000003.jpg",
                "neg_category_ids": [],
                "not_exhaustive_category_ids": [],
            },
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 7,
                "category_id": 9,
                "bbox": [1, 2, 3, 4],
                "area": 12,
                "segmentation": [[1, 2, 4, 2, 4, 6, 1, 6], [0.5, 0.5, 1, 1, 1.5, 0.5]],
            },
            {
                "id": 2,
                "image_id": 3,
                "category_id": 5,
                "bbox": [0.0, 0.0, 5.5, 2.5],
                "segmentation": [[0, 0]],
            },
            {"id": 4, "image_id": 7, "category_id": 5, "bbox": [10, 10, 5, 5], "area": 25},
        ],
        "categories": [
            {"id": 9, "name": "zebra", "frequency": "f", "image_count": 500, "synset": "zebra.n.01"},
            {"id": 5, "name": "aardvark", "frequency": "r", "image_count": 3},
        ],
    }
    data.update(overrides)
    path = tmp_path / "lvis.json"
    path.write_text(json.dumps(data))
    return path, data


def test_index_lvis_layout_and_contiguous_labels(tmp_path):
    path, _ = _lvis_file(tmp_path)
    ix = LVISIndex.from_json(path)
    assert len(ix) == 2 and ix.num_annotations == 3 and ix.num_classes == 2
    # categories sorted by id -> labels 0..C-1
    assert ix.cat_ids.tolist() == [5, 9] and ix.cat_names == ["aardvark", "zebra"]
    assert ix.frequency.tolist() == ["r", "f"] and ix.frequency_from_file
    assert ix.image_counts.tolist() == [3, 500]
    # LVIS v1 images: coco_url -> <split>/<file>
    assert ix.file_names == ["train2017/000000000007.jpg", "val2017/000000000003.jpg"]
    # annotations grouped by image in file order of images, file order inside an image
    rows = ix.annotations(0)
    assert ix.ann_ids[rows].tolist() == [1, 4]
    assert ix.ann_labels[rows].tolist() == [1, 0]
    np.testing.assert_allclose(ix.ann_boxes[rows], [[1, 2, 4, 6], [10, 10, 15, 15]])
    assert ix.ann_ids[ix.annotations(1)].tolist() == [2]
    np.testing.assert_allclose(ix.ann_areas, [12, 25, 5.5 * 2.5])
    # federated fields kept (json category ids)
    assert ix.neg_cat_ids[ix.neg_offsets[0] : ix.neg_offsets[1]].tolist() == [5]
    assert ix.not_exhaustive_cat_ids[
        ix.not_exhaustive_offsets[0] : ix.not_exhaustive_offsets[1]
    ].tolist() == [9]
    assert ix.extra == {"info": {"year": 2020}}
    offsets, labels = ix.image_labels()
    assert offsets.tolist() == [0, 2, 3] and labels.tolist() == [0, 1, 0]


def test_index_coco_file_frequency_from_image_counts(tmp_path):
    # COCO-style: file_name, iscrowd, no frequency: groups from the image counts (LVIS thresholds).
    images = [{"id": i, "file_name": f"{i}.jpg", "height": 8, "width": 8} for i in range(1, 121)]
    anns = [
        {"id": i, "image_id": i, "category_id": 1, "bbox": [0, 0, 2, 2], "iscrowd": 0} for i in range(1, 121)
    ]
    anns += [{"id": 1000 + i, "image_id": i, "category_id": 2, "bbox": [0, 0, 2, 2]} for i in range(1, 12)]
    anns += [
        {"id": 2000, "image_id": 1, "category_id": 3, "bbox": [0, 0, 2, 2]},
        {"id": 2001, "image_id": 1, "category_id": 3, "bbox": [1, 1, 2, 2]},
        {"id": 2002, "image_id": 2, "category_id": 3, "bbox": [0, 0, 4, 4], "iscrowd": 1},
    ]
    cats = [{"id": k, "name": f"c{k}"} for k in (1, 2, 3)]
    path = tmp_path / "coco.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    ix = LVISIndex.from_json(path)
    assert not ix.frequency_from_file
    # category 3: one image with non-crowd boxes (the crowd box does not count)
    assert ix.image_counts.tolist() == [120, 11, 1]
    assert ix.frequency.tolist() == ["f", "c", "r"]
    assert ix.ann_iscrowd.sum() == 1
    assert ix.file_names[0] == "1.jpg"


def test_stream_reader_matches_json_load_at_every_chunk_border(tmp_path, monkeypatch):
    """Tiny chunks put chunk borders inside numbers, strings, keys and dropped polygons."""
    path, data = _lvis_file(tmp_path)
    text = json.dumps(data, indent=1)  # whitespace everywhere
    (tmp_path / "pretty.json").write_text(text)
    expected = LVISIndex.from_json(path)
    for chunk in (1, 2, 3, 5, 7, 11, 64):
        monkeypatch.setattr(json_stream, "_CHUNK_CHARS", chunk)
        for p in (path, tmp_path / "pretty.json"):
            got = LVISIndex.from_json(p)
            for name in (
                "image_ids",
                "ann_ids",
                "ann_boxes",
                "ann_labels",
                "ann_offsets",
                "neg_cat_ids",
                "cat_ids",
            ):
                np.testing.assert_array_equal(
                    getattr(got, name), getattr(expected, name), err_msg=f"{name} {chunk}"
                )
            assert got.file_names == expected.file_names and got.extra == expected.extra


def test_stream_reader_generic_values(tmp_path, monkeypatch):
    data = {
        "a": [1, 2.5, "x,]}", {"k": [[1], [2]]}],
        "b": 12345,
        "c": None,
        "segmentation": [[1, 2], [3]],
        "d": {"segmentation": [[1.5, 2]], "e": '\u00e9"\\'},
        "empty": [],
    }
    path = tmp_path / "g.json"
    path.write_text(json.dumps(data))
    monkeypatch.setattr(json_stream, "_CHUNK_CHARS", 3)
    seen = []
    out = read_json_object(str(path), {"a": seen.append, "empty": seen.append})
    assert seen == data["a"]
    assert out == {
        "a": None,
        "b": 12345,
        "c": None,
        "segmentation": [[1, 2], [3]],
        "d": data["d"],
        "empty": None,
    }
    # a dropped key's value cut by a chunk border is decoded as it is ...
    out = read_json_object(str(path), {}, drop_keys=("segmentation", "k"))
    assert out["d"] == data["d"] and out["a"] == data["a"]
    # ... and comes out as None when it fits in a chunk; values of other shapes are decoded as they are
    monkeypatch.undo()
    out = read_json_object(str(path), {}, drop_keys=("segmentation", "k", "e"))
    assert (
        out["d"]["segmentation"] is None and out["segmentation"] is None and out["d"]["e"] == data["d"]["e"]
    )
    assert out["a"][3] == {"k": None} and out["b"] == 12345


def test_gzip_file(tmp_path):
    path, data = _lvis_file(tmp_path)
    gz = tmp_path / "lvis.json.gz"
    with gzip.open(gz, "wt") as f:
        json.dump(data, f)
    assert LVISIndex.from_json(gz).ann_ids.tolist() == LVISIndex.from_json(path).ann_ids.tolist()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d["images"][1].pop("height"),
            r"images\[1\] \(id 3\) is missing the required key 'height'",
        ),
        (
            lambda d: d["images"][0].pop("coco_url"),
            r"images\[0\] \(id 7\) is missing .*'file_name' or 'coco_url'",
        ),
        (
            lambda d: d["annotations"][2].pop("bbox"),
            r"annotations\[2\] \(id 4\) is missing the required key 'bbox'",
        ),
        (lambda d: d["annotations"][1].update(bbox=[1, 2, 3]), r"annotations\[1\] \(id 2\) has a bad value"),
        (
            lambda d: d["annotations"][1].update(image_id=99),
            r"annotations\[1\] \(id 2\) has image_id 99, which is not",
        ),
        (lambda d: d["annotations"][0].update(category_id=4), r"annotations\[0\] \(id 1\) has category_id 4"),
        (
            lambda d: d["annotations"][2].update(id=1),
            r"duplicate id.* id 1 is used by annotations\[0\] and annotations\[2\]",
        ),
        (lambda d: d["images"][1].update(id=7), r"duplicate id.* id 7 .*images\[0\] and images\[1\]"),
        (lambda d: d["categories"][1].update(id=9), r"duplicate id.*categories"),
        (
            lambda d: d["categories"][0].pop("name"),
            r"categories\[0\] \(id 9\) is missing the required key 'name'",
        ),
        (lambda d: d["categories"][0].update(frequency="often"), r"category id 9 has frequency 'often'"),
        (
            lambda d: d["annotations"][0].update(bbox=[0, float("nan"), 1, 1]),
            r"annotations\[0\] \(id 1\) has a non-finite",
        ),
        (lambda d: d.pop("categories"), r"top-level key 'categories' is missing"),
    ],
)
def test_bad_input_names_file_and_entry(tmp_path, change, message):
    path, data = _lvis_file(tmp_path)
    change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(UserInputError, match=message) as err:
        LVISIndex.from_json(path)
    assert str(path) in str(err.value)


def test_malformed_json_and_missing_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"images": [{"id": 1,, }]}')
    with pytest.raises(UserInputError, match=r"bad.json: not a valid json annotation file: .* at character"):
        LVISIndex.from_json(path)
    path.write_text('{"images": [], "annotations": [')
    with pytest.raises(UserInputError, match="not a valid json"):
        LVISIndex.from_json(path)
    with pytest.raises(UserInputError, match="cannot open annotation file .*nope.json"):
        LVISIndex.from_json(tmp_path / "nope.json")


def test_non_positive_boxes_are_skipped_with_a_counted_warning(tmp_path):
    path, data = _lvis_file(tmp_path)
    data["annotations"][0]["bbox"] = [1, 1, 0, 4]
    data["annotations"][2]["bbox"] = [1, 1, 3, -1]
    path.write_text(json.dumps(data))
    with pytest.warns(
        UserWarning, match=r"skipped 2 annotation\(s\) .*non-positive width or height \(ids 1, 4\)"
    ):
        ix = LVISIndex.from_json(path)
    assert ix.num_skipped_boxes == 2 and ix.ann_ids.tolist() == [2]
    assert ix.ann_offsets.tolist() == [0, 0, 1]


# ------------------------------------------------------------------------------------------------ dataset
def _dataset_dir(tmp_path, sizes=((20, 30), (10, 10))):
    path, data = _lvis_file(tmp_path)
    for img, (h, w) in zip(data["images"], sizes, strict=True):
        url = img["coco_url"].split("/")
        os.makedirs(tmp_path / url[-2], exist_ok=True)
        Image.new("RGB", (w, h), (10, 200, 30)).save(tmp_path / url[-2] / url[-1], quality=95)
    return path


def test_dataset_item(tmp_path):
    ds = LVISDataset(_dataset_dir(tmp_path), tmp_path)
    assert len(ds) == 2 and ds.num_classes == 2 and ds.class_names == ["aardvark", "zebra"]
    image, target = ds[0]
    assert image.shape == (3, 20, 30) and image.dtype == torch.uint8
    assert target["boxes"].canvas_size == (20, 30) and target["boxes"].dtype == torch.float32
    torch.testing.assert_close(
        target["boxes"].as_subclass(torch.Tensor), torch.tensor([[1.0, 2, 4, 6], [10, 10, 15, 15]])
    )
    assert target["labels"].tolist() == [1, 0] and target["labels"].dtype == torch.int64
    assert target["image_id"] == 7 and target["orig_size"] == (20, 30)
    np.testing.assert_allclose(ds.aspect_ratios(), [1.5, 1.0])


def test_dataset_filter_empty_and_image_labels(tmp_path):
    path, data = _lvis_file(tmp_path)
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] == 3]
    path.write_text(json.dumps(data))
    ds = LVISDataset(path, tmp_path, filter_empty=True)
    assert len(ds) == 1 and ds.image_path(0).endswith("val2017/000000000003.jpg")
    offsets, labels = ds.image_labels()
    assert offsets.tolist() == [0, 1] and labels.tolist() == [0]


def test_missing_or_unreadable_or_wrong_size_image_names_the_path(tmp_path):
    ds = LVISDataset(_dataset_dir(tmp_path, sizes=((20, 30), (11, 10))), tmp_path)
    with pytest.raises(ImageReadError, match=r"000000000003.jpg is 11x10 \(HxW\) but .*lvis.json says 10x10"):
        ds[1]
    (tmp_path / "train2017" / "000000000007.jpg").write_bytes(b"not an image at all")
    with pytest.raises(ImageReadError, match=r"000000000007.jpg cannot be decoded"):
        ds[0]
    os.remove(tmp_path / "train2017" / "000000000007.jpg")
    with pytest.raises(ImageReadError, match=r"train2017/000000000007.jpg does not exist"):
        ds[0]


def test_missing_image_in_a_worker_raises_in_the_main_process(tmp_path):
    """The error names the path; the loader neither hangs nor loses its workers: iteration goes on."""
    ds = LVISDataset(_dataset_dir(tmp_path), tmp_path)
    os.remove(tmp_path / "val2017" / "000000000003.jpg")
    subset = torch.utils.data.Subset(ds, [0, 1, 0, 0])
    it = iter(torch.utils.data.DataLoader(subset, batch_size=None, num_workers=2, timeout=60))
    assert next(it)[1]["image_id"] == 7
    with pytest.raises(ImageReadError, match="val2017/000000000003.jpg does not exist"):
        next(it)
    assert [t["image_id"] for _, t in it] == [7, 7]
