"""The synthetic long-tailed benchmark and the `efldet data` command."""

from __future__ import annotations

import hashlib
import json
import warnings
from collections import Counter

import numpy as np
import pytest

from efldet.cli import main
from efldet.data import LVISDataset, LVISIndex
from efldet.data.synthetic import generate, lvis_shaped_image_counts, synthetic_categories


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    summary = generate(str(root), num_classes=12, train_images=400, val_images=40, image_size=64, seed=1)
    return root, summary


def test_lvis_groups_and_val_coverage(synth):
    root, summary = synth
    train, val = LVISIndex.from_json(root / "train.json"), LVISIndex.from_json(root / "val.json")
    assert set(train.frequency) == {"r", "c", "f"} and train.frequency_from_file
    # the frequency field agrees with the real image counts under the LVIS thresholds
    counts = train.images_per_category()
    np.testing.assert_array_equal(counts, train.image_counts)
    assert ((counts <= 10) == (train.frequency == "r")).all() and (
        (counts > 100) == (train.frequency == "f")
    ).all()
    assert summary["groups"] == {g: int((train.frequency == g).sum()) for g in "rcf"}
    # val: every category at least 5 instances; the same category list and frequency as train (as LVIS)
    val_instances = np.bincount(val.ann_labels, minlength=val.num_classes)
    assert val_instances.min() >= 5 and summary["min_val_instances"] == val_instances.min()
    assert (
        val.cat_ids.tolist() == train.cat_ids.tolist() and val.frequency.tolist() == train.frequency.tolist()
    )
    # exhaustive annotation: absent categories are all listed as negatives
    for i in range(len(val)):
        present = set(val.cat_ids[val.ann_labels[val.annotations(i)]].tolist())
        neg = set(val.neg_cat_ids[val.neg_offsets[i] : val.neg_offsets[i + 1]].tolist())
        assert present.isdisjoint(neg) and present | neg == set(val.cat_ids.tolist())


def test_images_and_boxes(synth):
    root, _ = synth
    ds = LVISDataset(root / "train.json", root)
    assert len(ds) == 400
    for i in range(0, 400, 37):
        image, target = ds[i]
        assert image.shape == (3, 64, 64)
        b = target["boxes"]
        assert len(b) >= 1 and (b[:, 0] >= 0).all() and (b[:, 2] <= 64).all() and (b[:, 2] > b[:, 0]).all()
        x0, y0, x1, y1 = b[0].int().tolist()
        inside = image[:, y0:y1, x0:x1].float()
        assert inside.std() > 10  # something is drawn in the box


def test_category_attributes_are_shared():
    cats = synthetic_categories(40)
    assert len({c.name for c in cats}) == 40
    for attr in ("shape", "colour", "texture"):
        values = Counter(getattr(c, attr) for c in cats)
        assert len(values) >= 3 and max(values.values()) > 1  # categories share attribute values


def test_lvis_shaped_counts():
    counts = lvis_shaped_image_counts(40, 2000)
    assert (np.diff(counts) <= 0).all() and counts.max() <= 600 and counts.min() >= 1  # 0.3 x 2000
    fractions = [(counts <= 10).mean(), ((counts > 10) & (counts <= 100)).mean(), (counts > 100).mean()]
    # LVIS v1: 337 rare, 461 common, 405 frequent of 1,203 categories
    np.testing.assert_allclose(fractions, [337 / 1203, 461 / 1203, 405 / 1203], atol=0.05)


def test_deterministic_for_a_seed(tmp_path):
    kwargs = dict(num_classes=5, train_images=30, val_images=10, image_size=40)
    generate(str(tmp_path / "a"), seed=3, **kwargs)
    generate(str(tmp_path / "b"), seed=3, **kwargs)
    generate(str(tmp_path / "c"), seed=4, **kwargs)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")


def test_official_lvis_api_reads_the_val_file(synth):
    root, _ = synth
    lvis = pytest.importorskip("lvis")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        api = lvis.LVIS(str(root / "val.json"))
    assert len(api.get_img_ids()) == 40 and len(api.get_cat_ids()) == 12


def test_cli_synth_and_stats(tmp_path, capsys):
    out = tmp_path / "d"
    assert (
        main(
            [
                "data",
                "synth",
                "--out",
                str(out),
                "--classes",
                "8",
                "--train-images",
                "250",
                "--val-images",
                "20",
                "--image-size",
                "48",
                "--seed",
                "2",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "train.json (250 images" in text and "rare" in text
    assert main(["data", "stats", str(out / "train.json"), "--rfs-threshold", "0.1", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    ix = LVISIndex.from_json(out / "train.json")
    assert stats["images"] == 250 and stats["annotations"] == ix.num_annotations and stats["categories"] == 8
    assert sum(g["categories"] for g in stats["groups"].values()) == 8
    assert stats["frequency_source"] == "file"
    from efldet.data.samplers import repeat_factors

    r = repeat_factors(*ix.image_labels(), ix.num_classes, threshold=0.1)
    assert stats["rfs"]["epoch_length"] == int(np.ceil(r - 1e-9).sum()) > 250
    assert main(["data", "stats", str(out / "train.json")]) == 0
    text = capsys.readouterr().out
    assert "RFS" in text and "epoch length" in text and "frequent" in text


def test_cli_errors_exit_2(tmp_path, capsys):
    assert main(["data", "stats", str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err
    assert main(["data", "synth", "--out", str(tmp_path), "--classes", "500"]) == 2
    assert "--classes must be between 1 and 192" in capsys.readouterr().err
    assert main(["data"]) == 2
