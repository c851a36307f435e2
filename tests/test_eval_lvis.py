"""LVIS evaluation: every backend agrees with the official `lvis` API; hand-computed federated cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from efldet.errors import UserInputError
from efldet.evaluation import evaluate_lvis, evaluate_lvis_detailed, read_detections_json
from efldet.evaluation.lvis_fast import METRIC_KEYS
from efldet.evaluation.simulate import detections_to_list, make_lvis_case

ALL_KEYS = METRIC_KEYS + ("AR@300", "ARs@300", "ARm@300", "ARl@300")
FIXED_KEYS = METRIC_KEYS + ("AR@-1", "ARs@-1", "ARm@-1", "ARl@-1")


def _write(tmp_path, name, obj):
    path = tmp_path / name
    path.write_text(json.dumps(obj))
    return str(path)


def _assert_close(a: dict, b: dict, keys=ALL_KEYS, tol=1e-4):
    for k in keys:
        assert abs(a[k] - b[k]) <= tol, (k, a[k], b[k])


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """40 images, 25 categories (all of r/c/f), > 300 detections on most images, tied scores, empty images."""
    tmp = tmp_path_factory.mktemp("lvis")
    gt, det = make_lvis_case(
        num_images=40,
        num_categories=25,
        dets_per_image=320,
        seed=3,
        score_decimals=2,
        empty_image_fraction=0.1,
    )
    gt_path = tmp / "gt.json"
    gt_path.write_text(json.dumps(gt))
    return str(gt_path), gt, det


@pytest.fixture(scope="module")
def official(generated):
    gt_path, _, det = generated
    return evaluate_lvis_detailed(gt_path, detections_to_list(det), backend="lvis")


def test_fast_equals_official_on_generated_case(generated, official):
    gt_path, _, det = generated
    fast = evaluate_lvis_detailed(gt_path, det, backend="fast")
    _assert_close(fast.metrics, official.metrics, tol=1e-9)
    assert 0.05 < fast.metrics["AP"] < 0.95  # a non-trivial case
    np.testing.assert_allclose(fast.category_ap, official.category_ap, atol=1e-9)
    assert fast.frequency.count("r") > 0 and fast.frequency.count("f") > 0


def test_faster_backend_equals_official(generated, official):
    gt_path, _, det = generated
    faster = evaluate_lvis(gt_path, detections_to_list(det), backend="faster")
    _assert_close(faster, official.metrics, keys=METRIC_KEYS)


def test_results_json_path_equals_list(generated, official, tmp_path):
    gt_path, _, det = generated
    res_path = _write(tmp_path, "results.json", detections_to_list(det))
    fast = evaluate_lvis(gt_path, res_path)
    _assert_close(fast, official.metrics, tol=1e-9)


def test_fixed_ap_equals_official_with_class_cap(generated):
    gt_path, _, det = generated
    dets = detections_to_list(det)
    ref = evaluate_lvis(gt_path, dets, backend="lvis", fixed_ap=True, max_dets_per_class=200)
    fast = evaluate_lvis(gt_path, det, backend="fast", fixed_ap=True, max_dets_per_class=200)
    _assert_close(fast, ref, keys=FIXED_KEYS, tol=1e-9)
    faster = evaluate_lvis(gt_path, dets, backend="faster", fixed_ap=True, max_dets_per_class=200)
    _assert_close(faster, ref, keys=METRIC_KEYS)
    default = evaluate_lvis(gt_path, det, backend="fast")
    assert abs(fast["AP"] - default["AP"]) > 1e-4  # the cap changes the result


def test_perfect_detections_score_one(tmp_path):
    gt, _ = make_lvis_case(num_images=12, num_categories=10, seed=5, empty_image_fraction=0.2)
    gt_path = _write(tmp_path, "gt.json", gt)
    dets = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": 1.0 - 1e-3 * i,
        }
        for i, a in enumerate(gt["annotations"])
    ]
    fast = evaluate_lvis(gt_path, dets)
    ref = evaluate_lvis(gt_path, dets, backend="lvis")
    _assert_close(fast, ref, tol=1e-9)
    assert fast["AP"] == pytest.approx(1.0) and fast["AP75"] == pytest.approx(1.0)


def _hand_case():
    """Two images, four categories; the expected APs are computed by hand in the test below."""
    images = [
        {"id": 1, "width": 100, "height": 100, "neg_category_ids": [2], "not_exhaustive_category_ids": []},
        {"id": 2, "width": 100, "height": 100, "neg_category_ids": [], "not_exhaustive_category_ids": [4]},
    ]
    box_a, box_b, box_c = [10, 10, 40, 40], [60, 60, 30, 30], [0, 50, 40, 40]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": box_a, "area": 1600.0},
        {"id": 2, "image_id": 2, "category_id": 2, "bbox": box_a, "area": 1600.0},
        {"id": 3, "image_id": 2, "category_id": 3, "bbox": box_b, "area": 900.0},
        {"id": 4, "image_id": 2, "category_id": 4, "bbox": box_c, "area": 1600.0},
    ]
    cats = [
        {"id": 1, "name": "one", "frequency": "r"},
        {"id": 2, "name": "two", "frequency": "c"},
        {"id": 3, "name": "three", "frequency": "f"},
        {"id": 4, "name": "four", "frequency": "f"},
        {"id": 5, "name": "five", "frequency": "f"},  # no ground truth anywhere: excluded (-1)
    ]
    dets = [
        {"image_id": 1, "category_id": 1, "bbox": box_a, "score": 0.9},  # TP
        {"image_id": 1, "category_id": 1, "bbox": box_b, "score": 0.95},  # FP ranked first: cat 1 AP 0.5
        {"image_id": 1, "category_id": 2, "bbox": box_b, "score": 0.6},  # negative category: FP
        {"image_id": 2, "category_id": 2, "bbox": box_a, "score": 0.5},  # TP: cat 2 AP 0.5
        {"image_id": 1, "category_id": 3, "bbox": box_b, "score": 0.99},  # unverified in image 1: dropped
        {"image_id": 2, "category_id": 3, "bbox": box_b, "score": 0.1},  # TP: cat 3 AP 1
        {"image_id": 2, "category_id": 4, "bbox": box_b, "score": 0.8},  # not exhaustive, unmatched: ignored
        {"image_id": 2, "category_id": 4, "bbox": box_c, "score": 0.7},  # TP: cat 4 AP 1
    ]
    return {"images": images, "annotations": anns, "categories": cats}, dets


def test_hand_computed_federated_rules(tmp_path):
    gt, dets = _hand_case()
    gt_path = _write(tmp_path, "gt.json", gt)
    for backend in ("fast", "lvis", "faster"):
        res = evaluate_lvis_detailed(gt_path, dets, backend=backend)
        m = res.metrics
        assert m["APr"] == pytest.approx(0.5), backend
        assert m["APc"] == pytest.approx(0.5), backend
        assert m["APf"] == pytest.approx(1.0), backend
        assert m["AP"] == pytest.approx(0.75), backend
        assert m["APl"] == -1  # no ground truth above 96^2
        assert m["APs"] == pytest.approx(1.0)  # only category 3 (30 x 30) is small, and found
        np.testing.assert_allclose(res.category_ap[:4], [0.5, 0.5, 1.0, 1.0])
        assert math.isnan(res.category_ap[4])
    # Without the negative label the detection on image 1 is not judged: category 2 becomes perfect.
    gt["images"][0]["neg_category_ids"] = []
    gt["images"][1]["not_exhaustive_category_ids"] = []  # and the cat-4 false positive now counts
    gt_path = _write(tmp_path, "gt2.json", gt)
    res = evaluate_lvis_detailed(gt_path, dets)
    np.testing.assert_allclose(res.category_ap[:4], [0.5, 1.0, 1.0, 0.5])


def test_ties_area_and_cap_match_official(tmp_path):
    """Equal scores across images, a gt with area 0 (dropped), a detection with w=0, and > 300 per image."""
    gt, dets = _hand_case()
    gt["annotations"].append(
        {"id": 5, "image_id": 1, "category_id": 1, "bbox": [50, 50, 10, 10], "area": 0.0}
    )
    dets += [{"image_id": 2, "category_id": 2, "bbox": [5, 5, 0, 10], "score": 0.5}]
    dets += [{"image_id": 1, "category_id": 1, "bbox": [60, 60, 30, 30], "score": 0.9}]  # tie with the TP
    rng = np.random.default_rng(0)
    for _ in range(310):
        x, y = rng.uniform(0, 60, 2).round(1)
        dets.append(
            {"image_id": 2, "category_id": 3, "bbox": [x, y, 30, 30], "score": float(rng.uniform(0, 0.2))}
        )
    gt_path = _write(tmp_path, "gt.json", gt)
    _assert_close(evaluate_lvis(gt_path, dets), evaluate_lvis(gt_path, dets, backend="lvis"), tol=1e-9)


_grid = st.sampled_from([0.0, 10.0, 20.0, 30.0])
_size = st.sampled_from([10.0, 20.0, 40.0])


@st.composite
def _tiny_case(draw):
    n_img = draw(st.integers(1, 3))
    n_cat = draw(st.integers(1, 3))
    images, anns, dets = [], [], []
    for i in range(1, n_img + 1):
        neg = draw(st.lists(st.integers(1, n_cat), unique=True, max_size=n_cat))
        nel = draw(st.lists(st.integers(1, n_cat), unique=True, max_size=n_cat))
        images.append({"id": i, "neg_category_ids": neg, "not_exhaustive_category_ids": nel})
        for _ in range(draw(st.integers(0, 4))):
            x, y, w, h = draw(_grid), draw(_grid), draw(_size), draw(_size)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": draw(st.integers(1, n_cat)),
                    "bbox": [x, y, w, h],
                    "area": w * h * draw(st.sampled_from([0.5, 1.0])),
                    "ignore": draw(st.sampled_from([0, 0, 0, 1])),
                }
            )
        for _ in range(draw(st.integers(0, 6))):
            x, y, w, h = draw(_grid), draw(_grid), draw(_size), draw(_size)
            score = draw(st.sampled_from([0.2, 0.5, 0.7, 0.9]))
            dets.append(
                {
                    "image_id": i,
                    "category_id": draw(st.integers(1, n_cat)),
                    "bbox": [x, y, w, h],
                    "score": score,
                }
            )
    cats = [{"id": c, "name": str(c), "frequency": "rcf"[(c - 1) % 3]} for c in range(1, n_cat + 1)]
    return {"images": images, "annotations": anns, "categories": cats}, dets


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=_tiny_case())
def test_fast_equals_official_on_random_tiny_cases(case, tmp_path):
    gt, dets = case
    if not dets:
        return  # the official API cannot take an empty results list
    gt_path = _write(tmp_path, "gt.json", gt)
    fast = evaluate_lvis_detailed(gt_path, dets)
    ref = evaluate_lvis_detailed(gt_path, dets, backend="lvis")
    _assert_close(fast.metrics, ref.metrics, tol=1e-9)
    np.testing.assert_allclose(fast.category_ap, ref.category_ap, atol=1e-9)


def test_read_detections_json_layouts(tmp_path):
    _, det = make_lvis_case(num_images=5, num_categories=8, dets_per_image=20, seed=2)
    dets = detections_to_list(det)
    compact = tmp_path / "compact.json"
    compact.write_text(json.dumps(dets))
    pretty = tmp_path / "pretty.json"
    pretty.write_text(json.dumps([dict(reversed(list(d.items()))) for d in dets], indent=2))
    nested = tmp_path / "nested.json"  # extra nested field -> falls back to json.load
    nested.write_text(json.dumps([dict(d, segmentation={"size": [2, 2], "counts": "x"}) for d in dets]))
    tight = tmp_path / "tight.json"  # no spaces: the flexible patterns
    tight.write_text(json.dumps(dets, separators=(",", ":")))
    for path in (compact, pretty, nested, tight):
        got = read_detections_json(path, chunk_bytes=997)  # tiny chunks exercise the chunk boundaries
        np.testing.assert_array_equal(got.image_id, det["image_id"])
        np.testing.assert_array_equal(got.category_id, det["category_id"])
        np.testing.assert_array_equal(got.bbox, det["bbox"])
        np.testing.assert_array_equal(got.score, det["score"])


def test_user_errors(tmp_path):
    gt, dets = _hand_case()
    gt_path = _write(tmp_path, "gt.json", gt)
    with pytest.raises(UserInputError, match="category_id 7"):
        evaluate_lvis(gt_path, dets + [{"image_id": 1, "category_id": 7, "bbox": [0, 0, 5, 5], "score": 0.1}])
    with pytest.raises(UserInputError, match="image_id 9"):
        evaluate_lvis(gt_path, dets + [{"image_id": 9, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.1}])
    with pytest.raises(UserInputError, match="unknown LVIS evaluation backend"):
        evaluate_lvis(gt_path, dets, backend="nope")
    with pytest.raises(UserInputError, match="entry 1"):
        evaluate_lvis(gt_path, [dets[0], {"image_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}])
    del gt["images"][1]["neg_category_ids"]
    with pytest.raises(UserInputError, match=r"images\[id=2\] has no 'neg_category_ids'"):
        evaluate_lvis(_write(tmp_path, "bad.json", gt), dets)


def test_empty_results_give_zero_ap(tmp_path):
    gt, _ = _hand_case()
    m = evaluate_lvis(_write(tmp_path, "gt.json", gt), [])
    assert m["AP"] == 0.0 and m["APr"] == 0.0 and m["AR@300"] == 0.0


def test_crowded_groups_match_official(tmp_path):
    """Many boxes of one category per image (padding buckets of 32-64 boxes) and ignored boxes."""
    gt, det = make_lvis_case(
        num_images=4, num_categories=3, anns_per_image=50, dets_per_image=150, seed=8, ignore_fraction=0.1
    )
    gt_path = _write(tmp_path, "gt.json", gt)
    fast = evaluate_lvis_detailed(gt_path, det)
    ref = evaluate_lvis_detailed(gt_path, detections_to_list(det), backend="lvis")
    _assert_close(fast.metrics, ref.metrics, tol=1e-9)
    np.testing.assert_allclose(fast.category_ap, ref.category_ap, atol=1e-9)
