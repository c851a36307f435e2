"""Analyses (margins, gradient ratios, AP per category), results tables, COCO metrics and `efldet analyze`."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from efldet.cli import main
from efldet.errors import UserInputError
from efldet.evaluation import (
    MarginAccumulator,
    ap_by_frequency,
    category_table,
    evaluate_coco,
    evaluate_lvis_detailed,
    format_markdown_table,
    load_grad_stats,
    plot_gradient_ratio,
    plot_margins,
    read_margin_csv,
    read_per_category_ap,
    save_lvis_evaluation,
    write_results_table,
)
from efldet.evaluation.simulate import detections_to_list, make_lvis_case

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _cats(n: int) -> list[dict]:
    return [
        {
            "category_id": j + 1,
            "name": f"c{j + 1}",
            "frequency": "rcf"[j % 3],
            "image_count": [5, 50, 500][j % 3],
        }
        for j in range(n)
    ]


def test_margin_accumulator_hand_computed():
    acc = MarginAccumulator(num_classes=2)
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.6], [0.3, 0.3], [0.5, 0.5]])
    labels = torch.tensor([0, 1, 2, -1])  # class 0, class 1, background, ignored
    acc.update(scores, labels)
    res = acc.result()
    # class 0: positive 0.9; negatives (anchors 1, 2) 0.2, 0.3 -> 0.25.  class 1: 0.6 vs (0.1, 0.3) -> 0.2
    np.testing.assert_allclose(res["pos_mean"], [0.9, 0.6])
    np.testing.assert_allclose(res["neg_mean"], [0.25, 0.2])
    np.testing.assert_allclose(res["margin"], [0.65, 0.4])
    np.testing.assert_array_equal(res["num_pos"], [1, 1])
    empty = MarginAccumulator(num_classes=3)
    empty.update(np.zeros((2, 3)), np.array([3, 3]))
    assert math.isnan(empty.result()["margin"][0])
    with pytest.raises(UserInputError, match="labels must be"):
        acc.update(scores, torch.tensor([0, 1, 5, -1]))


@settings(max_examples=25, deadline=None)
@given(k=st.integers(1, 30), split=st.integers(0, 30), seed=st.integers(0, 2**16))
def test_margin_batches_and_merge_equal_one_pass(k, split, seed):
    rng = np.random.default_rng(seed)
    c = 4
    scores = rng.random((k, c))
    labels = rng.integers(-1, c + 1, size=k)
    one = MarginAccumulator(c)
    one.update(scores, labels)
    a, b = MarginAccumulator(c), MarginAccumulator(c)
    s = min(split, k)
    a.update(scores[:s], labels[:s])
    b.update(scores[s:], labels[s:])
    a.merge(b)
    for key in ("pos_mean", "neg_mean", "num_pos"):
        np.testing.assert_allclose(a.result()[key], one.result()[key], rtol=1e-12)
    # reference: explicit per-class means
    for j in range(c):
        pos = scores[labels == j, j]
        neg = scores[(labels >= 0) & (labels != j), j]
        if len(pos) and len(neg):
            assert one.result()["margin"][j] == pytest.approx(pos.mean() - neg.mean())


def test_margins_csv_and_plot(tmp_path):
    cats = _cats(6)
    runs = {}
    for name, shift in (("focal", 0.0), ("efl", 0.1)):
        acc = MarginAccumulator(6)
        scores = np.full((12, 6), 0.1)
        labels = np.repeat(np.arange(6), 2)
        scores[np.arange(12), labels] = 0.5 + shift
        acc.update(scores, labels)
        path = acc.write_csv(tmp_path / f"{name}.csv", cats)
        runs[name] = read_margin_csv(path)
    assert runs["efl"][0]["margin"] == pytest.approx(0.5)
    png, table = plot_margins(runs, tmp_path / "out")
    assert png.read_bytes()[:8] == PNG_MAGIC
    rows = list(csv.DictReader(open(table)))
    assert [int(r["image_count"]) for r in rows] == sorted((c["image_count"] for c in cats), reverse=True)
    assert float(rows[0]["margin_efl"]) - float(rows[0]["margin_focal"]) == pytest.approx(0.1)


def test_gradient_ratio_from_checkpoint(tmp_path):
    pos = torch.tensor([1.0, 2.0, 0.0], dtype=torch.float32)
    neg = torch.tensor([10.0, 4.0, 0.0], dtype=torch.float32)
    ckpt = tmp_path / "last.pt"
    torch.save(
        {
            "model": {
                "head.cls.weight": torch.zeros(3, 2),
                "head.loss.pos_grad": pos,
                "head.loss.neg_grad": neg,
            },
            "iter": 7,
        },
        ckpt,
    )
    stats = load_grad_stats(ckpt)
    assert list(stats) == ["head.loss"]
    assert load_grad_stats({"loss.pos_grad": pos, "loss.neg_grad": neg}).keys() == {"loss"}
    png, table = plot_gradient_ratio(*stats["head.loss"], _cats(3), tmp_path)
    assert png.read_bytes()[:8] == PNG_MAGIC
    ratio = {int(r["category_id"]): r["ratio"] for r in csv.DictReader(open(table))}
    assert float(ratio[1]) == pytest.approx(0.1) and float(ratio[2]) == pytest.approx(0.5) and ratio[3] == ""
    with pytest.raises(UserInputError, match="no gradient statistics"):
        load_grad_stats({"model": {"w": pos}})
    with pytest.raises(UserInputError, match="3 classes but 2 categories"):
        plot_gradient_ratio(pos.numpy(), neg.numpy(), _cats(2), tmp_path)


def test_category_table_counts_from_annotations():
    data = {
        "categories": [{"id": 3, "name": "a"}, {"id": 1, "name": "b"}],
        "annotations": [{"image_id": i, "category_id": 1} for i in range(150)]
        + [{"image_id": 1, "category_id": 3}, {"image_id": 1, "category_id": 3}],
    }
    rows = category_table(data)
    assert [(r["category_id"], r["image_count"], r["frequency"]) for r in rows] == [
        (1, 150, "f"),
        (3, 1, "r"),
    ]
    lvis = category_table(None)
    assert len(lvis) == 1203 and {r["frequency"] for r in lvis} == {"r", "c", "f"}


def test_per_category_ap_groups_match_official_summary(tmp_path):
    gt, det = make_lvis_case(num_images=30, num_categories=20, seed=11)
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt))
    res = evaluate_lvis_detailed(gt_path, det)
    paths = save_lvis_evaluation(tmp_path / "run", res, run_name="efl")
    rows = read_per_category_ap(paths["per_category"])
    groups = ap_by_frequency(rows)
    for key in ("AP", "APr", "APc", "APf"):
        assert groups[key] == pytest.approx(res.metrics[key], abs=1e-12)
    saved = json.loads(paths["json"].read_text())
    assert saved["efl"]["AP"] == pytest.approx(res.metrics["AP"])
    assert "| efl |" in paths["markdown"].read_text()


def test_markdown_table_percent_and_missing(tmp_path, capsys):
    runs = {
        "focal": {"AP": 0.2512, "APr": -1.0, "APc": 0.2, "APf": 0.3},
        "efl": {"AP": 0.273, "APr": 0.15, "APc": float("nan"), "APf": 0.31},
    }
    table = format_markdown_table(runs, ["AP", "APr", "APc", "APf"])
    assert "| focal | 25.1 | - | 20.0 | 30.0 |" in table and "| efl | 27.3 | 15.0 | - | 31.0 |" in table
    json_path, md_path = write_results_table(tmp_path, runs, name="table")
    assert md_path.read_text() == table and "| efl |" in capsys.readouterr().out
    assert json.loads(json_path.read_text())["efl"]["APc"] is None


def test_coco_backends_agree(tmp_path):
    gt, det = make_lvis_case(num_images=25, num_categories=12, dets_per_image=60, seed=4)
    for im in gt["images"]:
        del im["neg_category_ids"], im["not_exhaustive_category_ids"]
    for a in gt["annotations"]:
        a["iscrowd"] = 0
    gt_path = tmp_path / "coco.json"
    gt_path.write_text(json.dumps(gt))
    dets = detections_to_list(det)
    fast = evaluate_coco(gt_path, dets)
    ref = evaluate_coco(gt_path, dets, backend="pycocotools")
    assert len(fast) == 12 and 0.02 < ref["AP"] < 0.9
    for k in ref:
        assert fast[k] == pytest.approx(ref[k], abs=1e-4), k
    perfect = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in gt["annotations"]
    ]
    assert evaluate_coco(gt_path, perfect)["AP"] == pytest.approx(1.0)
    with pytest.raises(UserInputError, match="category_id 9999"):
        evaluate_coco(gt_path, dets[:1] + [dict(dets[0], category_id=9999)])


def test_cli_analyze(tmp_path, capsys):
    gt, det = make_lvis_case(num_images=20, num_categories=15, seed=2)
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt))
    noisy = dict(det, score=np.random.default_rng(0).permutation(det["score"]))  # a worse "run"
    for name, dets in (("focal", noisy), ("efl", det)):
        save_lvis_evaluation(tmp_path / name, evaluate_lvis_detailed(gt_path, dets), run_name=name)
    out = tmp_path / "figs"
    rc = main(
        [
            "analyze",
            "ap",
            "--per-category",
            str(tmp_path / "focal" / "per_category_ap.csv"),
            "--per-category",
            str(tmp_path / "efl" / "per_category_ap.csv"),
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    assert (out / "ap_vs_count.png").read_bytes()[:8] == PNG_MAGIC
    assert (out / "ap_by_group.png").read_bytes()[:8] == PNG_MAGIC
    groups = list(csv.DictReader(open(out / "ap_by_group.csv")))
    assert [g["run"] for g in groups] == ["focal", "efl"]
    assert "| focal |" in capsys.readouterr().out
    one = str(tmp_path / "efl" / "per_category_ap.csv")
    assert main(["analyze", "ap", "--per-category", one, "--label", "a", "--label", "b", "--out", str(out)]) == 2
    assert "one --label per file" in capsys.readouterr().err
    assert main(["analyze", "ap", "--per-category", one, "--ann", str(gt_path), "--out", str(out / "x")]) == 0

    ckpt = tmp_path / "last.pt"
    torch.save({"model": {"loss.pos_grad": torch.rand(15), "loss.neg_grad": torch.rand(15) + 1}}, ckpt)
    assert main(["analyze", "grad-ratio", "--weights", str(ckpt), "--ann", str(gt_path), "--out", str(out)]) == 0
    assert (out / "grad_ratio.png").exists() and (out / "grad_ratio.csv").exists()
    # 15 classes against the 1,203 LVIS categories: a user error, exit code 2
    assert main(["analyze", "grad-ratio", "--weights", str(ckpt), "--out", str(out)]) == 2
    assert "15 classes but 1203 categories" in capsys.readouterr().err

    acc = MarginAccumulator(15)
    acc.update(np.random.default_rng(0).random((40, 15)), np.arange(40) % 16)
    acc.write_csv(tmp_path / "m.csv", category_table(gt_path))
    assert main(["analyze", "margins", "--csv", str(tmp_path / "m.csv"), "--out", str(out)]) == 0
    assert (out / "margins.png").exists()
    assert main(["analyze", "margins", "--csv", str(tmp_path / "missing.csv"), "--out", str(out)]) == 2
