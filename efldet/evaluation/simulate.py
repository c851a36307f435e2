"""Generated LVIS-shaped evaluation cases (ground truth + detections), for tests and benchmarks.

Nothing here is learned: boxes and scores are random, shaped like a real detector's output on LVIS v1 val
(about 12 annotations per image over a few categories, verified-negative and not-exhaustive categories, and
up to 300 detections per image mixing good, noisy, duplicate and background boxes).
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import numpy as np


def lvis_v1_categories() -> list[dict[str, Any]]:
    """The real LVIS v1 category list shipped with efldet: id, name, synset, frequency, train_image_count."""
    with resources.files("efldet.data").joinpath("lvis_v1_categories.json").open("rb") as f:
        return json.load(f)


def make_lvis_case(
    *,
    num_images: int,
    num_categories: int | None = None,
    anns_per_image: float = 12.0,
    dets_per_image: int = 300,
    seed: int = 0,
    empty_image_fraction: float = 0.02,
    ignore_fraction: float = 0.0,
    score_decimals: int | None = None,
    box_decimals: int | None = 2,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Return (LVIS-format ground-truth dict, detections as arrays image_id/category_id/bbox xywh/score).

    num_categories: take the first n LVIS v1 categories (None: all 1,203) with their real frequencies.
    score_decimals: round scores (creates ties, to test tie-breaking); box_decimals: round box coordinates.
    dets_per_image: detections per image before any cap (values above 300 test the per-image cap).
    """
    rng = np.random.default_rng(seed)
    cats = lvis_v1_categories()
    if num_categories is not None:
        cats = cats[:num_categories]
        # Keep all three frequency groups present in small cases.
        for k, f in zip(range(min(3, len(cats))), "rcf", strict=False):
            cats[k] = dict(cats[k], frequency=f)
    cat_ids = np.array([c["id"] for c in cats], dtype=np.int64)
    c = len(cats)
    weight = np.array([max(c_.get("train_image_count", 1), 1) for c_ in cats], dtype=np.float64)
    weight = weight / weight.sum()

    images, anns = [], []
    det_img, det_cat, det_box, det_score = [], [], [], []
    ann_id = 1
    for i in range(num_images):
        image_id = int(i * 3 + 1)  # non-contiguous ids
        w, h = int(rng.integers(320, 1024)), int(rng.integers(240, 800))
        empty = rng.random() < empty_image_fraction
        n_pos = 0 if empty else int(min(c, rng.integers(1, 7)))
        pos = rng.choice(c, size=n_pos, replace=False, p=weight) if n_pos else np.zeros(0, np.int64)
        n_ann = 0 if empty else max(n_pos, int(rng.poisson(anns_per_image)))
        ann_cat = (
            np.concatenate([pos, rng.choice(pos, size=n_ann - n_pos)]) if n_pos else np.zeros(0, np.int64)
        )
        # box sizes spanning small / medium / large
        side = np.exp(rng.uniform(np.log(6), np.log(min(w, h) * 0.9), size=(n_ann, 2)))
        x0 = rng.uniform(0, w - side[:, 0])
        y0 = rng.uniform(0, h - side[:, 1])
        gbox = np.stack([x0, y0, side[:, 0], side[:, 1]], axis=1)
        if box_decimals is not None:
            gbox = np.round(gbox, box_decimals)
        gbox[:, 2:] = np.maximum(gbox[:, 2:], 1.0)
        for j in range(n_ann):
            ann = {
                "id": ann_id,
                "image_id": image_id,
                "category_id": int(cat_ids[ann_cat[j]]),
                "bbox": [float(v) for v in gbox[j]],
                # mask area: a fraction of the box, as segmentations are
                "area": float(round(gbox[j, 2] * gbox[j, 3] * rng.uniform(0.4, 1.0), 2)),
            }
            if ignore_fraction and rng.random() < ignore_fraction:
                ann["ignore"] = 1
            anns.append(ann)
            ann_id += 1
        absent = np.setdiff1d(np.arange(c), pos)
        n_neg = int(min(len(absent), rng.integers(0, 16)))
        neg = rng.choice(absent, size=n_neg, replace=False) if n_neg else np.zeros(0, np.int64)
        nel = pos[rng.random(len(pos)) < 0.15]
        images.append(
            {
                "id": image_id,
                "width": w,
                "height": h,
                "file_name": f"{image_id:012d}.jpg",
                "neg_category_ids": sorted(int(cat_ids[k]) for k in neg),
                "not_exhaustive_category_ids": sorted(int(cat_ids[k]) for k in nel),
            }
        )
        if empty and rng.random() < 0.5:
            continue  # some images get no detections at all
        # detections: true positives with jitter, duplicates, wrong-class copies, background boxes
        nd = dets_per_image
        n_tp = min(nd, n_ann * 2)
        src = rng.integers(0, max(n_ann, 1), size=n_tp) if n_ann else np.zeros(0, np.int64)
        jitter = (
            rng.normal(0, 0.08, size=(len(src), 4)) * np.repeat(gbox[src, 2:], 2, axis=1) if n_ann else None
        )
        tp_box = gbox[src] + jitter if n_ann else np.zeros((0, 4))
        tp_cat = ann_cat[src].copy() if n_ann else np.zeros(0, np.int64)
        flip = rng.random(len(tp_cat)) < 0.2
        if len(neg):
            tp_cat[flip] = rng.choice(neg, size=int(flip.sum()))
        n_bg = nd - len(tp_box)
        bw = np.exp(rng.uniform(np.log(4), np.log(min(w, h)), size=(n_bg, 2)))
        bg_box = np.stack([rng.uniform(0, w - bw[:, 0]), rng.uniform(0, h - bw[:, 1]), bw[:, 0], bw[:, 1]], 1)
        pool = np.concatenate([pos, neg, rng.integers(0, c, size=4)]).astype(np.int64)
        bg_cat = rng.choice(pool, size=n_bg)
        box = np.concatenate([tp_box, bg_box])
        box[:, 2:] = np.abs(box[:, 2:])
        if box_decimals is not None:
            box = np.round(box, box_decimals)
        score = np.concatenate([rng.beta(4, 2, size=len(tp_box)), rng.beta(1, 4, size=n_bg)])
        if score_decimals is not None:
            score = np.round(score, score_decimals)
        det_img.append(np.full(len(box), image_id, dtype=np.int64))
        det_cat.append(cat_ids[np.concatenate([tp_cat, bg_cat]).astype(np.int64)])
        det_box.append(box)
        det_score.append(score)
    gt = {
        "info": {"description": "efldet generated LVIS-shaped evaluation case", "seed": seed},
        "images": images,
        "annotations": anns,
        "categories": [
            {k: v for k, v in c_.items() if k in ("id", "name", "synset", "frequency")}
            | {"image_count": int(c_.get("train_image_count", 0))}
            for c_ in cats
        ],
    }
    det = {
        "image_id": np.concatenate(det_img) if det_img else np.zeros(0, np.int64),
        "category_id": np.concatenate(det_cat) if det_cat else np.zeros(0, np.int64),
        "bbox": np.concatenate(det_box) if det_box else np.zeros((0, 4)),
        "score": np.concatenate(det_score) if det_score else np.zeros(0),
    }
    return gt, det


def detections_to_list(det: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Arrays -> COCO-style result dicts (what a results json holds)."""
    return [
        {"image_id": int(i), "category_id": int(c), "bbox": [float(v) for v in b], "score": float(s)}
        for i, c, b, s in zip(det["image_id"], det["category_id"], det["bbox"], det["score"], strict=True)
    ]
