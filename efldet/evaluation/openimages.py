"""OpenImages Challenge-style box evaluation (mAP@IoU 0.5) and the grouped AP of the paper's Table 7.

Protocol (the Open Images Challenge 2019 detection metric, as in the TF Object Detection API):
- ground truth has group-of boxes and verified image-level labels (positive and negative);
- detections of a class that is not verified in an image (neither a positive/negative label nor a box) are
  ignored;
- with a class hierarchy, ground truth is expanded: every box also counts for all ancestors of its class,
  positive labels propagate to ancestors and negative labels to descendants (detections are not expanded);
- per image and class, detections by decreasing score: each takes the non-group-of box of highest IoU; it is a
  true positive if that IoU >= 0.5 and the box was not taken yet, else a false positive. Detections left over
  whose best intersection-over-detection-area with a group-of box is >= 0.5 are ignored, and each group-of
  box hit this way counts once, as one true positive with the highest score among its detections;
- AP per class: area under the precision/recall curve with precision made monotone (all points);
  classes without ground truth are left out of the mean.
Grouped AP (Table 7): categories sorted by training instance count, split into `num_groups` equal groups,
AP1 (rarest) .. AP5 (most frequent) = mean AP of each group.

efldet's OpenImages json (written by `convert_openimages_challenge`) is COCO-like:
images[*] {id, file_name, width, height, openimages_id, pos_category_ids, neg_category_ids},
annotations[*] {id, image_id, category_id, bbox [x, y, w, h], area, is_group_of},
categories[*] {id, name, label_name, instance_count}.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from efldet.errors import UserInputError
from efldet.evaluation.lvis_fast import as_detections


# ------------------------------------------------------------------------------------------ hierarchy
def _walk_hierarchy(
    node: Mapping[str, Any], path: list[str], ancestors: dict[str, set[str]], where: str
) -> None:
    name = node.get("LabelName")
    if name is None:
        raise UserInputError(f"{where}: every node of the hierarchy needs a 'LabelName'")
    ancestors.setdefault(name, set()).update(path)
    for child in node.get("Subcategory", []) or []:
        _walk_hierarchy(child, path + [name], ancestors, where)


def load_hierarchy(
    hierarchy: str | Path | Mapping[str, Any], categories: Sequence[Mapping[str, Any]]
) -> dict[int, set[int]]:
    """Ancestors of each category: {category_id: {ancestor category ids}}.

    hierarchy: the Challenge hierarchy json (path or dict: nested {"LabelName", "Subcategory": [...]}, names
    matched to categories' `label_name`), or already a mapping {category id: [parent ids]} (ancestors are
    followed transitively).
    """
    if isinstance(hierarchy, (str, Path)):
        try:
            with open(hierarchy, "rb") as f:
                hierarchy = json.load(f)
        except FileNotFoundError:
            raise UserInputError(f"hierarchy file {hierarchy} does not exist") from None
    ids = {int(c["id"]) for c in categories}
    if isinstance(hierarchy, Mapping) and "LabelName" in hierarchy:
        by_name = {c.get("label_name"): int(c["id"]) for c in categories if c.get("label_name")}
        anc_names: dict[str, set[str]] = {}
        _walk_hierarchy(hierarchy, [], anc_names, "hierarchy")
        out: dict[int, set[int]] = {}
        for name, anc in anc_names.items():
            if name in by_name:
                out[by_name[name]] = {by_name[a] for a in anc if a in by_name}
        return out
    if not isinstance(hierarchy, Mapping):
        raise UserInputError(
            "hierarchy must be the Challenge hierarchy json or a {category id: [parent ids]} map"
        )
    parents = {int(k): {int(p) for p in v} for k, v in hierarchy.items()}
    out = {}
    for c in ids:
        seen: set[int] = set()
        stack = list(parents.get(c, ()))
        while stack:
            p = stack.pop()
            if p in seen or p == c:
                continue
            seen.add(p)
            stack.extend(parents.get(p, ()))
        out[c] = seen & ids
    return out


# ------------------------------------------------------------------------------------------ evaluation
@dataclass
class OpenImagesEvalResult:
    """mAP and grouped AP plus per-category AP (NaN where a category has no ground truth)."""

    metrics: dict[str, float]
    category_ids: np.ndarray  # int64 [C]
    category_ap: np.ndarray  # float64 [C]
    num_gt: np.ndarray  # int64 [C]: ground-truth instances (group-of boxes count one each) after expansion


def _iou_xywh(d: np.ndarray, g: np.ndarray) -> np.ndarray:
    """IoU [n, m] of boxes d [n, 4] and g [m, 4] (xywh)."""
    ix = np.minimum(d[:, None, 0] + d[:, None, 2], g[None, :, 0] + g[None, :, 2]) - np.maximum(
        d[:, None, 0], g[None, :, 0]
    )
    iy = np.minimum(d[:, None, 1] + d[:, None, 3], g[None, :, 1] + g[None, :, 3]) - np.maximum(
        d[:, None, 1], g[None, :, 1]
    )
    inter = np.maximum(ix, 0) * np.maximum(iy, 0)
    union = (d[:, 2] * d[:, 3])[:, None] + (g[:, 2] * g[:, 3])[None, :] - inter
    return inter / np.maximum(union, np.finfo(np.float64).tiny)


def _ioa_xywh(d: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Intersection over the detection's area [n, m]."""
    ix = np.minimum(d[:, None, 0] + d[:, None, 2], g[None, :, 0] + g[None, :, 2]) - np.maximum(
        d[:, None, 0], g[None, :, 0]
    )
    iy = np.minimum(d[:, None, 1] + d[:, None, 3], g[None, :, 1] + g[None, :, 3]) - np.maximum(
        d[:, None, 1], g[None, :, 1]
    )
    inter = np.maximum(ix, 0) * np.maximum(iy, 0)
    return inter / np.maximum(d[:, 2] * d[:, 3], np.finfo(np.float64).tiny)[:, None]


def match_image_class(
    det_boxes: np.ndarray,
    det_scores: np.ndarray,
    gt_boxes: np.ndarray,
    gt_group_of: np.ndarray,
    iou_threshold: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """TP/FP of one image and class. det_boxes [n, 4] xywh, det_scores [n], gt_boxes [m, 4],
    gt_group_of bool [m].

    Returns (scores [k], is_tp bool [k]): the judged detections (those matched to a group-of box dropped) plus
    one true positive per group-of box that was hit, with the highest score of its detections.
    """
    order = np.argsort(-det_scores, kind="stable")
    boxes, scores = det_boxes[order], det_scores[order]
    n = len(scores)
    tp = np.zeros(n, dtype=bool)
    regular = gt_boxes[~gt_group_of]
    groups = gt_boxes[gt_group_of]
    if n and len(regular):
        iou = _iou_xywh(boxes, regular)
        best = np.argmax(iou, axis=1)  # the box of highest IoU, taken or not (first on ties)
        passing = iou[np.arange(n), best] >= iou_threshold
        first = np.zeros(n, dtype=bool)
        cand = np.flatnonzero(passing)
        _, first_idx = np.unique(best[cand], return_index=True)  # earliest = highest score per box
        first[cand[first_idx]] = True
        tp = passing & first
    in_group = np.zeros(n, dtype=bool)
    group_scores = np.zeros(0)
    if n and len(groups):
        ioa = _ioa_xywh(boxes, groups)
        best = np.argmax(ioa, axis=1)
        in_group = ~tp & (ioa[np.arange(n), best] >= iou_threshold)
        group_best = np.zeros(len(groups))
        np.maximum.at(group_best, best[in_group], scores[in_group])
        group_scores = group_best[group_best > 0]
    keep = ~in_group
    return (
        np.concatenate([scores[keep], group_scores]),
        np.concatenate([tp[keep], np.ones(len(group_scores), dtype=bool)]),
    )


def average_precision(scores: np.ndarray, is_tp: np.ndarray, num_gt: int) -> float:
    """All-point interpolated AP (precision made monotone); NaN when num_gt == 0."""
    if num_gt == 0:
        return math.nan
    if len(scores) == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(is_tp[order], dtype=np.float64)
    fp = np.cumsum(~is_tp[order], dtype=np.float64)
    recall = np.concatenate([[0.0], tp / num_gt, [1.0]])
    precision = np.concatenate([[0.0], tp / (tp + fp), [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[idx] - recall[idx - 1]) * precision[idx]))


def grouped_ap(
    category_ids: np.ndarray, category_ap: np.ndarray, instance_counts: Mapping[int, int], num_groups: int = 5
) -> dict[str, float]:
    """AP1 (rarest) .. AP<num_groups>: categories sorted by training instance count (ties by id), split into
    equal groups (numpy.array_split), mean AP over the categories with ground truth in each group."""
    missing = [int(c) for c in category_ids if int(c) not in instance_counts]
    if missing:
        raise UserInputError(
            f"no training instance count for category ids {missing[:5]}; give counts for every category "
            "(e.g. the instance_count field that convert-openimages writes from the train CSV)"
        )
    counts = np.array([instance_counts[int(c)] for c in category_ids])
    order = np.lexsort((category_ids, counts))
    out = {}
    for g, part in enumerate(np.array_split(order, num_groups), start=1):
        aps = category_ap[part]
        aps = aps[~np.isnan(aps)]
        out[f"AP{g}"] = float(aps.mean()) if aps.size else math.nan
    return out


def _load_json(gt: str | Path | Mapping[str, Any], what: str) -> Mapping[str, Any]:
    if isinstance(gt, Mapping):
        return gt
    try:
        with open(gt, "rb") as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserInputError(f"{what} {gt} does not exist") from None
    except json.JSONDecodeError as err:
        raise UserInputError(f"{what} {gt} is not valid json: {err}") from None


def evaluate_openimages_detailed(
    gt: str | Path | Mapping[str, Any],
    results: Any,
    *,
    hierarchy: str | Path | Mapping[Any, Any] | None = None,
    iou_threshold: float = 0.5,
    instance_counts: Mapping[int, int] | None = None,
    num_groups: int = 5,
) -> OpenImagesEvalResult:
    """See `evaluate_openimages`; also returns per-category AP and ground-truth counts."""
    data = _load_json(gt, "annotation file")
    cats = sorted(data.get("categories", []), key=lambda c: c["id"])
    cat_ids = np.array([int(c["id"]) for c in cats], dtype=np.int64)
    cat_index = {int(c): k for k, c in enumerate(cat_ids)}
    anc = load_hierarchy(hierarchy, cats) if hierarchy is not None else {}
    desc: dict[int, set[int]] = defaultdict(set)
    for c, parents in anc.items():
        for p in parents:
            desc[p].add(c)

    # ground truth per (image, class) after expansion, and the verified classes of each image
    gt_boxes: dict[tuple[int, int], list[list[float]]] = defaultdict(list)
    gt_group: dict[tuple[int, int], list[bool]] = defaultdict(list)
    verified: dict[int, set[int]] = {}
    for im in data.get("images", []):
        pos = {int(c) for c in im.get("pos_category_ids", [])}
        neg = {int(c) for c in im.get("neg_category_ids", [])}
        pos |= {a for c in pos for a in anc.get(c, ())}
        neg |= {d for c in neg for d in desc.get(c, ())}
        verified[int(im["id"])] = pos | neg
    for j, a in enumerate(data.get("annotations", [])):
        try:
            img, c, box = int(a["image_id"]), int(a["category_id"]), [float(v) for v in a["bbox"]]
        except (KeyError, TypeError, ValueError):
            raise UserInputError(
                f"annotations[{j}] needs image_id, category_id and bbox [x, y, w, h]"
            ) from None
        if img not in verified:
            raise UserInputError(f"annotations[{j}] refers to image_id {img}, which is not listed in images")
        if c not in cat_index:
            raise UserInputError(
                f"annotations[{j}] refers to category_id {c}, which is not listed in categories"
            )
        group = bool(a.get("is_group_of", a.get("iscrowd", 0)))
        for cc in (c, *anc.get(c, ())):
            gt_boxes[img, cc].append(box)
            gt_group[img, cc].append(group)
            verified[img].add(cc)

    det = as_detections(results)
    unknown_img = ~np.isin(det.image_id, np.fromiter(verified, dtype=np.int64, count=len(verified)))
    if unknown_img.any():
        i = int(np.flatnonzero(unknown_img)[0])
        raise UserInputError(
            f"results entry {i} has image_id {int(det.image_id[i])}, which is not an image here"
        )
    unknown_cat = ~np.isin(det.category_id, cat_ids)
    if unknown_cat.any():
        i = int(np.flatnonzero(unknown_cat)[0])
        raise UserInputError(
            f"results entry {i} has category_id {int(det.category_id[i])}, which is not a category here"
        )
    valid = (det.bbox[:, 2] > 0) & (det.bbox[:, 3] > 0)
    is_verified = np.fromiter(
        (int(c) in verified[int(i)] for i, c in zip(det.image_id, det.category_id, strict=True)),
        dtype=bool,
        count=len(det),
    )
    keep = np.flatnonzero(valid & is_verified)
    order = keep[np.lexsort((det.category_id[keep], det.image_id[keep]))]
    keys = np.stack([det.image_id[order], det.category_id[order]], axis=1)
    bounds = np.flatnonzero(np.r_[True, np.any(keys[1:] != keys[:-1], axis=1), True]) if len(order) else []

    num_c = len(cat_ids)
    num_gt = np.zeros(num_c, dtype=np.int64)
    for (_, c), boxes in gt_boxes.items():
        num_gt[cat_index[c]] += len(boxes)
    scores: list[list[np.ndarray]] = [[] for _ in range(num_c)]
    tps: list[list[np.ndarray]] = [[] for _ in range(num_c)]
    empty_box = np.zeros((0, 4))
    for s, e in zip(bounds[:-1], bounds[1:], strict=True):
        idx = order[s:e]
        img, c = int(det.image_id[idx[0]]), int(det.category_id[idx[0]])
        g = np.array(gt_boxes.get((img, c), empty_box), dtype=np.float64).reshape(-1, 4)
        gg = np.array(gt_group.get((img, c), []), dtype=bool)
        sc, tp = match_image_class(det.bbox[idx], det.score[idx], g, gg, iou_threshold)
        scores[cat_index[c]].append(sc)
        tps[cat_index[c]].append(tp)
    ap = np.array(
        [
            average_precision(
                np.concatenate(scores[k]) if scores[k] else np.zeros(0),
                np.concatenate(tps[k]) if tps[k] else np.zeros(0, dtype=bool),
                int(num_gt[k]),
            )
            for k in range(num_c)
        ]
    )
    valid_ap = ap[~np.isnan(ap)]
    metrics = {"mAP": float(valid_ap.mean()) if valid_ap.size else math.nan}
    if instance_counts is None and cats and all("instance_count" in c for c in cats):
        instance_counts = {int(c["id"]): int(c["instance_count"]) for c in cats}
    if instance_counts is not None:
        metrics.update(grouped_ap(cat_ids, ap, instance_counts, num_groups))
    return OpenImagesEvalResult(metrics=metrics, category_ids=cat_ids, category_ap=ap, num_gt=num_gt)


def evaluate_openimages(
    gt: str | Path | Mapping[str, Any],
    results: Any,
    *,
    hierarchy: str | Path | Mapping[Any, Any] | None = None,
    iou_threshold: float = 0.5,
    instance_counts: Mapping[int, int] | None = None,
    num_groups: int = 5,
) -> dict[str, float]:
    """OpenImages Challenge mAP@IoU 0.5 and the grouped AP1..AP5 (fractions in [0, 1]).

    gt: efldet OpenImages json (see the module docstring) or its dict. results: results json path / list of
    COCO-style dicts / arrays (as for `evaluate_lvis`). hierarchy: Challenge hierarchy json (or a
    {category id: [parent ids]} map) to expand the ground truth. instance_counts: training instances per
    category id for the groups (default: the categories' `instance_count` fields; no groups without them).
    """
    return evaluate_openimages_detailed(
        gt,
        results,
        hierarchy=hierarchy,
        iou_threshold=iou_threshold,
        instance_counts=instance_counts,
        num_groups=num_groups,
    ).metrics


# ------------------------------------------------------------------------------------------ converter
def _read_csv(path: str | Path, required: Sequence[str], what: str) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [k for k in required if k not in (reader.fieldnames or [])]
            if missing:
                raise UserInputError(
                    f"{what} {path} lacks the column(s) {missing}; its header is {reader.fieldnames}"
                )
            return list(reader)
    except FileNotFoundError:
        raise UserInputError(f"{what} {path} does not exist") from None


def convert_openimages_challenge(
    *,
    boxes_csv: str | Path,
    classes_csv: str | Path,
    out: str | Path,
    labels_csv: str | Path | None = None,
    image_sizes_csv: str | Path | None = None,
) -> dict[str, Any]:
    """Convert Open Images Challenge 2019 CSV files to efldet's json; returns the dict and writes `out`.

    boxes_csv: `challenge-2019-*-detection-bbox.csv` (ImageID, LabelName, XMin, XMax, YMin, YMax, IsGroupOf;
        coordinates normalised to [0, 1]). classes_csv: `challenge-2019-classes-description-500.csv`
        (LabelName, DisplayName; no header). labels_csv: `*-detection-human-imagelabels.csv` (ImageID,
        LabelName, Confidence: 1 verified present, 0 verified absent). image_sizes_csv: ImageID, width,
        height; boxes are then in pixels, otherwise width = height = 1 and boxes stay normalised (IoU is
        unchanged).
    `instance_count` of each category = its boxes in this file (convert the train split to get the counts
    for the grouped AP).
    """
    classes = []
    try:
        with open(classes_csv, newline="", encoding="utf-8") as f:
            for row in csv.reader(f):
                if len(row) >= 2 and row[0].startswith("/"):
                    classes.append((row[0], row[1]))
    except FileNotFoundError:
        raise UserInputError(f"classes file {classes_csv} does not exist") from None
    if not classes:
        raise UserInputError(f"classes file {classes_csv} has no 'LabelName,DisplayName' rows")
    label_to_id = {name: k + 1 for k, (name, _) in enumerate(classes)}
    sizes: dict[str, tuple[float, float]] = {}
    if image_sizes_csv is not None:
        for row in _read_csv(image_sizes_csv, ["ImageID", "width", "height"], "image sizes file"):
            sizes[row["ImageID"]] = (float(row["width"]), float(row["height"]))
    boxes = _read_csv(
        boxes_csv, ["ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax", "IsGroupOf"], "boxes file"
    )
    labels = (
        _read_csv(labels_csv, ["ImageID", "LabelName", "Confidence"], "labels file") if labels_csv else []
    )

    image_names = sorted({r["ImageID"] for r in boxes} | {r["ImageID"] for r in labels})
    image_id = {name: k + 1 for k, name in enumerate(image_names)}
    if sizes:
        lacking = [n for n in image_names if n not in sizes]
        if lacking:
            raise UserInputError(f"image sizes file {image_sizes_csv} has no size for image {lacking[0]}")
    pos: dict[str, set[int]] = defaultdict(set)
    neg: dict[str, set[int]] = defaultdict(set)
    for r in labels:
        c = label_to_id.get(r["LabelName"])
        if c is None:
            continue
        (pos if float(r["Confidence"]) > 0 else neg)[r["ImageID"]].add(c)
    anns = []
    counts: dict[int, int] = defaultdict(int)
    for j, r in enumerate(boxes):
        c = label_to_id.get(r["LabelName"])
        if c is None:
            continue
        w, h = sizes.get(r["ImageID"], (1.0, 1.0))
        try:
            x0, x1, y0, y1 = (float(r[k]) for k in ("XMin", "XMax", "YMin", "YMax"))
        except ValueError:
            raise UserInputError(
                f"boxes file {boxes_csv}, row {j + 2}: coordinates are not numbers"
            ) from None
        bbox = [x0 * w, y0 * h, (x1 - x0) * w, (y1 - y0) * h]
        anns.append(
            {
                "id": len(anns) + 1,
                "image_id": image_id[r["ImageID"]],
                "category_id": c,
                "bbox": bbox,
                "area": bbox[2] * bbox[3],
                "is_group_of": int(float(r["IsGroupOf"] or 0) > 0),
            }
        )
        counts[c] += 1
        pos[r["ImageID"]].add(c)
    images = []
    for name in image_names:
        w, h = sizes.get(name, (1.0, 1.0))
        images.append(
            {
                "id": image_id[name],
                "file_name": f"{name}.jpg",
                "openimages_id": name,
                "width": w,
                "height": h,
                "pos_category_ids": sorted(pos[name]),
                "neg_category_ids": sorted(neg[name] - pos[name]),
            }
        )
    data = {
        "info": {
            "description": "Open Images Challenge 2019 converted by efldet",
            "box_units": "pixels" if sizes else "normalized",
        },
        "images": images,
        "annotations": anns,
        "categories": [
            {"id": k + 1, "name": disp, "label_name": name, "instance_count": counts.get(k + 1, 0)}
            for k, (name, disp) in enumerate(classes)
        ],
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        json.dump(data, f)
    return data
