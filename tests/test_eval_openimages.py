"""OpenImages Challenge-style evaluation: hand-computed group-of, verified-label and hierarchy cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from efldet.errors import UserInputError
from efldet.evaluation.openimages import (
    average_precision,
    convert_openimages_challenge,
    evaluate_openimages,
    evaluate_openimages_detailed,
    grouped_ap,
    load_hierarchy,
    match_image_class,
)

ANIMAL, CAT, CAR, DOG = 1, 2, 3, 4
BOX_A = [10.0, 10.0, 20.0, 20.0]
GROUP = [0.0, 50.0, 100.0, 50.0]  # a group-of box over a row of cars


def _case():
    images = [
        {"id": 1, "pos_category_ids": [CAT, CAR], "neg_category_ids": []},
        {"id": 2, "pos_category_ids": [CAT], "neg_category_ids": []},
        {"id": 3, "pos_category_ids": [], "neg_category_ids": [ANIMAL]},
    ]
    anns = [
        {"id": 1, "image_id": 1, "category_id": CAT, "bbox": BOX_A, "is_group_of": 0},
        {"id": 2, "image_id": 1, "category_id": CAR, "bbox": GROUP, "is_group_of": 1},
        {"id": 3, "image_id": 2, "category_id": CAT, "bbox": [40.0, 40.0, 30.0, 30.0], "is_group_of": 0},
    ]
    cats = [
        {"id": ANIMAL, "name": "Animal", "label_name": "/m/animal", "instance_count": 50},
        {"id": CAT, "name": "Cat", "label_name": "/m/cat", "instance_count": 5},
        {"id": CAR, "name": "Car", "label_name": "/m/car", "instance_count": 100},
        {"id": DOG, "name": "Dog", "label_name": "/m/dog", "instance_count": 1},
    ]
    dets = [
        {"image_id": 1, "category_id": CAT, "bbox": BOX_A, "score": 0.9},  # TP
        {"image_id": 1, "category_id": CAT, "bbox": BOX_A, "score": 0.8},  # duplicate: FP
        {"image_id": 1, "category_id": CAR, "bbox": [10.0, 60.0, 10.0, 10.0], "score": 0.7},  # inside group
        {
            "image_id": 1,
            "category_id": CAR,
            "bbox": [40.0, 60.0, 10.0, 10.0],
            "score": 0.6,
        },  # same group: once
        {"image_id": 1, "category_id": CAR, "bbox": [0.0, 0.0, 20.0, 20.0], "score": 0.75},  # outside: FP
        {"image_id": 1, "category_id": DOG, "bbox": BOX_A, "score": 0.99},  # dog not verified: ignored
        {"image_id": 3, "category_id": CAT, "bbox": BOX_A, "score": 0.95},  # cat verified only via hierarchy
        {"image_id": 1, "category_id": ANIMAL, "bbox": BOX_A, "score": 0.4},  # verified only via hierarchy
    ]
    return {"images": images, "annotations": anns, "categories": cats}, dets


def test_group_of_and_unverified_without_hierarchy():
    gt, dets = _case()
    res = evaluate_openimages_detailed(gt, dets)
    ap = dict(zip(res.category_ids.tolist(), res.category_ap.tolist(), strict=True))
    # Cat: TP 0.9, FP 0.8 (duplicate); 2 gt (image 2 missed) -> precision 1 up to recall 0.5 -> AP 0.5.
    assert ap[CAT] == pytest.approx(0.5)
    # Car: FP 0.75 then the group-of box as one TP with score 0.7 (two detections inside it) -> AP 0.5.
    assert ap[CAR] == pytest.approx(0.5)
    assert math.isnan(ap[ANIMAL]) and math.isnan(ap[DOG])  # no ground truth
    assert res.metrics["mAP"] == pytest.approx(0.5)
    assert res.num_gt.tolist() == [0, 2, 1, 0]


def test_hierarchy_expansion():
    gt, dets = _case()
    hierarchy = {
        "LabelName": "/m/entity",
        "Subcategory": [
            {"LabelName": "/m/animal", "Subcategory": [{"LabelName": "/m/cat"}, {"LabelName": "/m/dog"}]},
            {"LabelName": "/m/car"},
        ],
    }
    res = evaluate_openimages_detailed(gt, dets, hierarchy=hierarchy)
    ap = dict(zip(res.category_ids.tolist(), res.category_ap.tolist(), strict=True))
    # Animal gets both cat boxes; its one detection (on box A) is a TP: recall 0.5 at precision 1.
    assert ap[ANIMAL] == pytest.approx(0.5)
    # Image 3's negative "Animal" makes Cat verified there: FP 0.95, TP 0.9, FP 0.8 -> 0.5 * 0.5.
    assert ap[CAT] == pytest.approx(0.25)
    assert res.num_gt.tolist() == [2, 2, 1, 0]
    # The same hierarchy given as a parent map.
    res2 = evaluate_openimages_detailed(gt, dets, hierarchy={CAT: [ANIMAL], DOG: [ANIMAL]})
    np.testing.assert_allclose(res2.category_ap, res.category_ap)
    assert load_hierarchy({CAT: [ANIMAL], ANIMAL: [9]}, gt["categories"])[CAT] == {ANIMAL}


def test_grouped_ap_uses_training_counts():
    gt, dets = _case()
    m = evaluate_openimages(gt, dets, num_groups=2)
    # sorted by instance count: Dog (1), Cat (5) | Animal (50), Car (100); NaN APs are left out
    assert m["AP1"] == pytest.approx(0.5) and m["AP2"] == pytest.approx(0.5)
    g = grouped_ap(
        np.array([1, 2, 3, 4, 5]),
        np.array([0.1, 0.2, 0.3, 0.4, 0.5]),
        {1: 5, 2: 4, 3: 3, 4: 2, 5: 1},
        num_groups=5,
    )
    assert [g[f"AP{i}"] for i in range(1, 6)] == pytest.approx([0.5, 0.4, 0.3, 0.2, 0.1])
    with pytest.raises(UserInputError, match="instance count"):
        grouped_ap(np.array([1, 2]), np.array([0.1, 0.2]), {1: 3})


def test_match_and_ap_primitives():
    # Two detections on one regular box: the lower-scored one is a false positive even though a second box
    # with IoU >= 0.5 exists, because it is judged against its best box only (the Challenge rule).
    gts = np.array([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 10.0, 10.0]])
    dets = np.array([[1.0, 0.0, 10.0, 10.0], [1.0, 0.0, 10.0, 10.0]])
    scores, tp = match_image_class(dets, np.array([0.5, 0.9]), gts, np.array([False, False]))
    assert scores.tolist() == [0.9, 0.5] and tp.tolist() == [True, False]
    assert average_precision(np.array([0.9, 0.8, 0.7]), np.array([True, False, True]), 2) == pytest.approx(
        0.5 * 1.0 + 0.5 * (2 / 3)
    )
    assert average_precision(np.zeros(0), np.zeros(0, bool), 3) == 0.0
    assert math.isnan(average_precision(np.zeros(0), np.zeros(0, bool), 0))


def test_convert_challenge_csv_and_evaluate(tmp_path):
    (tmp_path / "classes.csv").write_text("/m/cat,Cat\n/m/car,Car\n")
    (tmp_path / "boxes.csv").write_text(
        "ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsGroupOf\n"
        "img1,xclick,/m/cat,1,0.1,0.3,0.1,0.5,0\n"
        "img1,xclick,/m/car,1,0.0,1.0,0.5,1.0,1\n"
        "img2,xclick,/m/unknown,1,0.0,1.0,0.0,1.0,0\n"
    )
    (tmp_path / "labels.csv").write_text(
        "ImageID,Source,LabelName,Confidence\nimg1,verification,/m/cat,1\nimg2,verification,/m/car,0\n"
    )
    (tmp_path / "sizes.csv").write_text("ImageID,width,height\nimg1,200,100\nimg2,50,50\n")
    out = tmp_path / "val.json"
    data = convert_openimages_challenge(
        boxes_csv=tmp_path / "boxes.csv",
        classes_csv=tmp_path / "classes.csv",
        out=out,
        labels_csv=tmp_path / "labels.csv",
        image_sizes_csv=tmp_path / "sizes.csv",
    )
    assert json.loads(out.read_text()) == data
    assert [c["instance_count"] for c in data["categories"]] == [1, 1]
    assert data["annotations"][0]["bbox"] == pytest.approx([20.0, 10.0, 40.0, 40.0])
    assert data["annotations"][1]["is_group_of"] == 1
    img2 = next(im for im in data["images"] if im["openimages_id"] == "img2")
    assert img2["neg_category_ids"] == [2] and img2["pos_category_ids"] == []
    dets = [
        {"image_id": 1, "category_id": 1, "bbox": [20.0, 10.0, 40.0, 40.0], "score": 0.8},
        {
            "image_id": img2["id"],
            "category_id": 2,
            "bbox": [0.0, 0.0, 10.0, 10.0],
            "score": 0.9,
        },  # verified absent
        {
            "image_id": 1,
            "category_id": 2,
            "bbox": [10.0, 60.0, 20.0, 20.0],
            "score": 0.5,
        },  # in the group-of box
    ]
    m = evaluate_openimages(out, dets, num_groups=2)
    assert m["mAP"] == pytest.approx((1.0 + 0.5) / 2)  # car: FP 0.9 then group TP 0.5


def test_user_errors(tmp_path):
    gt, dets = _case()
    with pytest.raises(UserInputError, match="category_id 9"):
        evaluate_openimages(gt, dets + [{"image_id": 1, "category_id": 9, "bbox": BOX_A, "score": 0.1}])
    with pytest.raises(UserInputError, match="does not exist"):
        evaluate_openimages(tmp_path / "missing.json", dets)
    (tmp_path / "boxes.csv").write_text("ImageID,LabelName\n")
    (tmp_path / "classes.csv").write_text("/m/cat,Cat\n")
    with pytest.raises(UserInputError, match="lacks the column"):
        convert_openimages_challenge(
            boxes_csv=tmp_path / "boxes.csv", classes_csv=tmp_path / "classes.csv", out=tmp_path / "o.json"
        )
