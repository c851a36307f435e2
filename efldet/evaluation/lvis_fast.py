"""Array-based LVIS box evaluator: the official `lvis` API's protocol, with no Python object per detection.

It reproduces `lvis.LVISEval` (bbox) step by step, on flat numpy arrays:
1. results are cut to the top `max_dets` per image by score (`LVISResults.limit_dets_per_image`), or, for the
   "fixed AP" variant (Dave et al. 2021), to the top `max_dets_per_class` per category over the dataset;
2. ground truth and detections with area <= 0 are dropped (the official `get_ann_ids` filter);
3. federated rule: a detection of category c in image i is kept only if c has ground truth in i or c is in
   the image's `neg_category_ids`;
4. greedy matching per (image, category) group and IoU threshold, detections by decreasing score: each takes
   the unmatched ground truth with the highest IoU >= threshold (regular boxes before ignored ones, the last
   one on ties), vectorised over all groups at once, one step per detection rank;
5. unmatched detections of a category in the image's `not_exhaustive_category_ids` are ignored;
6. per category: cumulative TP/FP, precision made monotone, sampled at 101 recall points (COCO style).
Ties between equal scores are broken exactly as the official code does (image order, then results order).

Shape letters: D detections, M ground-truth boxes, N images, C categories, T IoU thresholds (10),
R recall points (101), A area ranges (4: all, small, medium, large), G (image, category) groups.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from efldet.errors import UserInputError

# The official parameters (lvis.eval.Params): np.linspace, not np.arange, exactly as there.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
AREA_RANGES = np.array([[0**2, 1e5**2], [0**2, 32**2], [32**2, 96**2], [96**2, 1e5**2]], dtype=np.float64)
AREA_LABELS = ("all", "small", "medium", "large")
FREQUENCY_LABELS = ("r", "c", "f")
METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")


# ------------------------------------------------------------------------------------------ ground truth
@dataclass
class LVISGroundTruth:
    """An LVIS-format annotation file as arrays. Boxes are COCO xywh in pixels, as in the file.

    Index arrays (`*_index`) point into `image_ids` / `category_ids` (both sorted ascending).
    """

    image_ids: np.ndarray  # int64 [N], sorted
    category_ids: np.ndarray  # int64 [C], sorted
    category_names: list[str]  # [C]
    frequency: np.ndarray  # int64 [C]: 0 rare, 1 common, 2 frequent, -1 missing/unknown
    image_count: np.ndarray  # int64 [C]: `image_count` (or `train_image_count`) field, -1 when absent
    ann_ids: np.ndarray  # int64 [M]
    ann_image_index: np.ndarray  # int64 [M]
    ann_category_index: np.ndarray  # int64 [M]
    ann_boxes: np.ndarray  # float64 [M, 4] xywh
    ann_area: np.ndarray  # float64 [M]: the `area` field (used for the small/medium/large ranges)
    ann_ignore: np.ndarray  # bool [M]: the optional `ignore` field
    neg_keys: np.ndarray  # int64 sorted unique: image_index * C + category_index of verified-absent pairs
    not_exhaustive_keys: np.ndarray  # int64 sorted unique, same encoding
    path: str = ""

    @property
    def num_categories(self) -> int:
        return int(self.category_ids.shape[0])


def _require(obj: Mapping, key: str, where: str, source: str) -> Any:
    if key not in obj:
        raise UserInputError(
            f"{source}: {where} has no '{key}' field; an LVIS-format annotation file needs it "
            "(see https://www.lvisdataset.org/dataset for the format)"
        )
    return obj[key]


def _pair_keys(image_index: np.ndarray, category_index: np.ndarray, num_categories: int) -> np.ndarray:
    return image_index.astype(np.int64) * num_categories + category_index.astype(np.int64)


def load_lvis_ground_truth(gt: str | Path | Mapping[str, Any]) -> LVISGroundTruth:
    """Read an LVIS-format annotation file (path or already-loaded dict) into arrays.

    Needs `images[*].neg_category_ids` and `images[*].not_exhaustive_category_ids` (the federated labels) and
    `categories[*].frequency` ('r', 'c' or 'f'); raises UserInputError naming the first offending entry.
    """
    source = str(gt) if not isinstance(gt, Mapping) else "<annotation dict>"
    if isinstance(gt, Mapping):
        data = gt
    else:
        try:
            with open(gt, "rb") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise UserInputError(f"annotation file {gt} does not exist") from None
        except json.JSONDecodeError as err:
            raise UserInputError(f"annotation file {gt} is not valid json: {err}") from None
    if not isinstance(data, Mapping):
        raise UserInputError(f"{source}: the top level must be a json object with images/annotations/categories")
    images = _require(data, "images", "the top level", source)
    anns = _require(data, "annotations", "the top level", source)
    cats = _require(data, "categories", "the top level", source)

    cats = sorted(cats, key=lambda c: c["id"])
    category_ids = np.array([c["id"] for c in cats], dtype=np.int64)
    if len(np.unique(category_ids)) != len(category_ids):
        raise UserInputError(f"{source}: categories have duplicate ids")
    freq_code = {"r": 0, "c": 1, "f": 2}
    frequency = np.full(len(cats), -1, dtype=np.int64)
    image_count = np.full(len(cats), -1, dtype=np.int64)
    for k, c in enumerate(cats):
        if "frequency" in c:
            if c["frequency"] not in freq_code:
                raise UserInputError(
                    f"{source}: categories[id={c['id']}].frequency is {c['frequency']!r}; expected 'r', 'c' or 'f'"
                )
            frequency[k] = freq_code[c["frequency"]]
        count = c.get("image_count", c.get("train_image_count"))
        if count is not None:
            image_count[k] = int(count)
    names = [str(c.get("name", c["id"])) for c in cats]

    image_ids = np.array(sorted(int(im["id"]) for im in images), dtype=np.int64)
    if len(np.unique(image_ids)) != len(image_ids):
        raise UserInputError(f"{source}: images have duplicate ids")
    num_c = len(cats)

    def lookup(ids: np.ndarray, table: np.ndarray, what: str, where: str) -> np.ndarray:
        pos = np.searchsorted(table, ids)
        pos = np.minimum(pos, max(len(table) - 1, 0))
        ok = (table[pos] == ids) if len(table) else np.zeros(len(ids), dtype=bool)
        if not ok.all():
            bad = int(np.flatnonzero(~ok)[0])
            raise UserInputError(f"{source}: {where}[{bad}] refers to {what} id {int(ids[bad])}, which is not listed")
        return pos

    neg_img, neg_cat, nel_img, nel_cat = [], [], [], []
    for im in images:
        where = f"images[id={im['id']}]"
        neg = _require(im, "neg_category_ids", where, source)
        nel = _require(im, "not_exhaustive_category_ids", where, source)
        neg_img.extend([im["id"]] * len(neg))
        neg_cat.extend(neg)
        nel_img.extend([im["id"]] * len(nel))
        nel_cat.extend(nel)

    def keys(img: list, cat: list) -> np.ndarray:
        img_a = np.array(img, dtype=np.int64)
        cat_a = np.array(cat, dtype=np.int64)
        if len(cat_a) == 0:
            return np.zeros(0, dtype=np.int64)
        cpos = np.minimum(np.searchsorted(category_ids, cat_a), num_c - 1)
        known = category_ids[cpos] == cat_a  # ids of unknown categories can never match a detection
        ipos = np.searchsorted(image_ids, img_a)
        return np.unique(_pair_keys(ipos[known], cpos[known], num_c))

    m = len(anns)
    ann_ids = np.empty(m, dtype=np.int64)
    ann_img = np.empty(m, dtype=np.int64)
    ann_cat = np.empty(m, dtype=np.int64)
    boxes = np.empty((m, 4), dtype=np.float64)
    area = np.empty(m, dtype=np.float64)
    ignore = np.zeros(m, dtype=bool)
    for j, a in enumerate(anns):
        try:
            ann_ids[j] = a["id"]
            ann_img[j] = a["image_id"]
            ann_cat[j] = a["category_id"]
            boxes[j] = a["bbox"]
            area[j] = a["area"]
        except (KeyError, ValueError, TypeError) as err:
            raise UserInputError(
                f"{source}: annotations[{j}] needs id, image_id, category_id, bbox [x, y, w, h] and area ({err})"
            ) from None
        if a.get("ignore", 0):
            ignore[j] = True
    ann_img_index = lookup(ann_img, image_ids, "image", "annotations")
    ann_cat_index = lookup(ann_cat, category_ids, "category", "annotations")
    return LVISGroundTruth(
        image_ids=image_ids,
        category_ids=category_ids,
        category_names=names,
        frequency=frequency,
        image_count=image_count,
        ann_ids=ann_ids,
        ann_image_index=ann_img_index,
        ann_category_index=ann_cat_index,
        ann_boxes=boxes,
        ann_area=area,
        ann_ignore=ignore,
        neg_keys=keys(neg_img, neg_cat),
        not_exhaustive_keys=keys(nel_img, nel_cat),
        path=source,
    )


# ------------------------------------------------------------------------------------------ detections
@dataclass
class Detections:
    """Detections as flat arrays, in results-file order. Boxes are COCO xywh in pixels."""

    image_id: np.ndarray  # int64 [D]
    category_id: np.ndarray  # int64 [D]: original dataset ids
    bbox: np.ndarray  # float64 [D, 4] xywh
    score: np.ndarray  # float64 [D]

    def __len__(self) -> int:
        return int(self.score.shape[0])


_KEYS = ("image_id", "category_id", "score")
# Python's json.dump writes `"key": value`; the first pattern is that layout (faster), the second any spacing.
_KEY_PATTERNS = {
    k: (re.compile(rb'"' + k.encode() + rb'": ([^,}\s]+)'), re.compile(rb'"' + k.encode() + rb'"\s*:\s*([^,}\s]+)'))
    for k in _KEYS
}
_BBOX_PATTERNS = (re.compile(rb'"bbox": \[([^\]]*)\]'), re.compile(rb'"bbox"\s*:\s*\[([^\]]*)\]'))


def _parse_flat_chunk(chunk: bytes) -> tuple[np.ndarray, ...] | None:
    """Parse a piece of a results json holding whole flat objects; None when the layout is another one."""
    n = chunk.count(b"{")
    cols = {}
    for key in (*_KEYS, "bbox"):
        for pat in _KEY_PATTERNS[key] if key != "bbox" else _BBOX_PATTERNS:
            found = pat.findall(chunk)
            if len(found) == n:
                break
        else:
            return None
        cols[key] = found
    boxes = cols.pop("bbox")
    if n == 0:
        z = np.zeros(0)
        return z.astype(np.int64), z.astype(np.int64), z.reshape(0, 4), z
    try:
        img = np.fromiter(map(float, cols["image_id"]), dtype=np.float64, count=n)
        cat = np.fromiter(map(float, cols["category_id"]), dtype=np.float64, count=n)
        score = np.fromiter(map(float, cols["score"]), dtype=np.float64, count=n)
        box = np.fromstring(b",".join(boxes), sep=",")  # text mode: exact decimal -> double like float()
    except ValueError:
        return None
    if box.shape[0] != 4 * n or not (np.all(img == np.round(img)) and np.all(cat == np.round(cat))):
        return None
    return img.astype(np.int64), cat.astype(np.int64), box.reshape(n, 4), score


def read_detections_json(path: str | Path, chunk_bytes: int = 1 << 25) -> Detections:
    """Read a COCO/LVIS results json (a list of {image_id, category_id, bbox, score}) straight into arrays.

    Files of flat objects are parsed in chunks with regular expressions (no Python dict per detection);
    anything else (extra nested fields, unusual layout) falls back to `json.load`.
    """
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"results file {path} does not exist")
    parts: list[tuple[np.ndarray, ...]] = []
    with open(path, "rb") as f:
        head = f.read(1 << 16).lstrip()
        ok = head.startswith(b"[")
        f.seek(0)
        rest = b""
        while ok:
            block = f.read(chunk_bytes)
            if not block:
                ok = rest.strip(b" \t\r\n],") == b""
                break
            data = rest + block
            cut = data.rfind(b"}") + 1
            rest = data[cut:]
            parsed = _parse_flat_chunk(data[:cut])
            if parsed is None:
                ok = False
                break
            parts.append(parsed)
    if ok:
        return Detections(
            image_id=np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64),
            category_id=np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64),
            bbox=np.concatenate([p[2] for p in parts]) if parts else np.zeros((0, 4)),
            score=np.concatenate([p[3] for p in parts]) if parts else np.zeros(0),
        )
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise UserInputError(f"results file {path} is not valid json: {err}") from None
    return detections_from_list(data, source=str(path))


def detections_from_list(results: Sequence[Mapping[str, Any]], source: str = "results") -> Detections:
    """COCO-style result dicts -> Detections (checks each has image_id, category_id, bbox, score)."""
    if not isinstance(results, Sequence) or isinstance(results, (str, bytes)):
        raise UserInputError(f"{source}: expected a list of {{image_id, category_id, bbox, score}} objects")
    n = len(results)
    try:
        img = np.fromiter((r["image_id"] for r in results), dtype=np.int64, count=n)
        cat = np.fromiter((r["category_id"] for r in results), dtype=np.int64, count=n)
        score = np.fromiter((r["score"] for r in results), dtype=np.float64, count=n)
        box = np.array([r["bbox"] for r in results], dtype=np.float64).reshape(n, 4)
    except (KeyError, TypeError, ValueError) as err:
        bad = _first_bad_result(results)
        raise UserInputError(
            f"{source}: entry {bad} is not a detection {{image_id, category_id, bbox [x, y, w, h], score}} ({err!r})"
        ) from None
    return Detections(image_id=img, category_id=cat, bbox=box, score=score)


def _first_bad_result(results: Sequence[Any]) -> int:
    for i, r in enumerate(results):
        try:
            if len(r["bbox"]) != 4:
                return i
            int(r["image_id"]), int(r["category_id"]), float(r["score"])
        except (KeyError, TypeError, ValueError):
            return i
    return -1


def as_detections(results: Any) -> Detections:
    """Accept a results json path, a list of COCO-style dicts, a Detections, or a mapping of arrays."""
    if isinstance(results, Detections):
        return results
    if isinstance(results, (str, Path)):
        return read_detections_json(results)
    if isinstance(results, Mapping):
        try:
            img = np.asarray(results["image_id"], dtype=np.int64).reshape(-1)
            det = Detections(
                image_id=img,
                category_id=np.asarray(results["category_id"], dtype=np.int64).reshape(-1),
                bbox=np.asarray(results["bbox"], dtype=np.float64).reshape(-1, 4),
                score=np.asarray(results["score"], dtype=np.float64).reshape(-1),
            )
        except KeyError as err:
            raise UserInputError(
                f"detection arrays need image_id, category_id, bbox and score; missing {err}"
            ) from None
        n = len(det.image_id)
        if not (len(det.category_id) == n and len(det.bbox) == n and len(det.score) == n):
            raise UserInputError("detection arrays image_id, category_id, bbox [D,4] and score must have one length")
        return det
    return detections_from_list(results)


# ------------------------------------------------------------------------------------------ evaluation
@dataclass
class LVISEvalArrays:
    """Output of `evaluate_lvis_arrays`; `precision`/`recall` have the official layout and -1 convention."""

    # precision: float64 [T, R, C, A]; -1 where the category has no ground truth in that area range
    precision: np.ndarray
    recall: np.ndarray  # float64 [T, C, A]
    metrics: dict[str, float]
    num_detections_evaluated: int


def _small_ints(x: np.ndarray) -> np.ndarray:
    """Indices as uint16 when they fit (numpy sorts those stably with a fast radix sort)."""
    return x.astype(np.uint16) if x.size and int(x.max()) < 2**16 else x


def _stable_order(key: np.ndarray) -> np.ndarray:
    return np.argsort(_small_ints(key), kind="stable")


def _rank_in_group(sorted_key: np.ndarray) -> np.ndarray:
    """Position of each element within its run of equal keys (sorted_key grouped)."""
    d = len(sorted_key)
    starts = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]])
    return np.arange(d) - np.repeat(starts, np.diff(np.r_[starts, d]))


def _top_k_mask(group: np.ndarray, k: int) -> np.ndarray:
    """For elements already in decreasing-score order: True for the first k of each group (stable)."""
    order = _stable_order(group)
    keep = np.zeros(len(group), dtype=bool)
    keep[order[_rank_in_group(group[order]) < k]] = True
    return keep


def _match_groups(
    *,
    dt_boxes: np.ndarray,
    dt_group_start: np.ndarray,
    dt_group_count: np.ndarray,
    gt_boxes: np.ndarray,
    gt_ignore: np.ndarray,
    gt_nonzero_id: np.ndarray,
    gt_group_start: np.ndarray,
    gt_group_count: np.ndarray,
    iou_thresholds: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy matching of all groups that have both detections and ground truth.

    dt_boxes [D, 4] (grouped, each group by decreasing score); gt_boxes [M, 4] (grouped);
    gt_ignore bool [A, M]; gt_nonzero_id bool [M]; per group G: start and count in both arrays.
    Returns matched bool [A, T, D] (dt_m != 0 in the official code) and matched_ignored bool [A, T, D].
    """
    num_a = gt_ignore.shape[0]
    num_t = len(iou_thresholds)
    d = dt_boxes.shape[0]
    matched = np.zeros((num_a, num_t, d), dtype=bool)
    matched_ign = np.zeros((num_a, num_t, d), dtype=bool)
    if len(dt_group_start) == 0:
        return matched, matched_ign
    thr = np.minimum(iou_thresholds, 1 - 1e-10)  # [T]
    # Buckets of groups by ground-truth count (powers of two) so padding stays small.
    bucket = np.ceil(np.log2(np.maximum(gt_group_count, 1))).astype(np.int64)
    for b in np.unique(bucket):
        sel = np.flatnonzero(bucket == b)
        sel = sel[np.argsort(-dt_group_count[sel], kind="stable")]  # most detections first: active = prefix
        mb = int(gt_group_count[sel].max())
        # Column j holds ground truth mb-1-j of each group (padding first): scanning columns in order and
        # keeping the first strict maximum picks the last best box in file order, as the official loop does.
        cols = np.arange(mb)[::-1]
        present = cols[:, None] < gt_group_count[sel][None, :]  # [mb, g]
        gidx = np.where(present, gt_group_start[sel][None, :] + cols[:, None], 0)  # [mb, g]
        gx, gy, gw, gh = (gt_boxes[gidx, c] for c in range(4))  # [mb, g] each
        gx2, gy2, garea = gx + gw, gy + gh, gw * gh
        gign = np.moveaxis(gt_ignore[:, gidx], 0, 1) & present[:, None, :]  # [mb, A, g]
        greg = ~np.moveaxis(gt_ignore[:, gidx], 0, 1) & present[:, None, :]  # [mb, A, g]
        any_ign = bool(gign.any())
        gnz = gt_nonzero_id[gidx]  # [mb, g]
        taken = np.zeros((mb, num_a, num_t, len(sel)), dtype=bool)  # [mb, A, T, g]
        counts = dt_group_count[sel]
        starts = dt_group_start[sel]
        active_n = np.searchsorted(-counts, -np.arange(int(counts[0])), side="left")  # groups with count > r
        for r, k in enumerate(active_n.tolist()):
            di = starts[:k] + r  # [k] detection of rank r in each active group
            dx, dy, dw, dh = (dt_boxes[di, c] for c in range(4))  # [k] each
            best_reg = np.full((num_a, num_t, k), -1.0)
            m_reg = np.zeros((num_a, num_t, k), dtype=np.int64)
            best_ign = np.full((num_a, num_t, k), -1.0)
            m_ign = np.zeros((num_a, num_t, k), dtype=np.int64)
            for j in range(mb):
                # pycocotools' bbox IoU, same arithmetic order
                iw = np.minimum(dx + dw, gx2[j, :k]) - np.maximum(dx, gx[j, :k])
                ih = np.minimum(dy + dh, gy2[j, :k]) - np.maximum(dy, gy[j, :k])
                inter = iw * ih
                with np.errstate(divide="ignore", invalid="ignore"):
                    iou = np.where((iw > 0) & (ih > 0), inter / (dw * dh + garea[j, :k] - inter), 0.0)  # [k]
                ok = (iou[None, :] >= thr[:, None])[None] & ~taken[j, :, :, :k]  # [A, T, k]
                cand = np.where(ok & greg[j, :, None, :k], iou, -1.0)
                upd = cand > best_reg
                best_reg = np.where(upd, cand, best_reg)
                m_reg[upd] = j
                if any_ign:
                    cand = np.where(ok & gign[j, :, None, :k], iou, -1.0)
                    upd = cand > best_ign
                    best_ign = np.where(upd, cand, best_ign)
                    m_ign[upd] = j
            has_reg = best_reg >= 0
            has_ign = ~has_reg & (best_ign >= 0)
            m = np.where(has_reg, m_reg, m_ign)  # [A, T, k]
            hit = has_reg | has_ign
            for j in range(mb):
                taken[j, :, :, :k] |= hit & (m == j)
            matched[:, :, di] = hit & gnz[m, np.arange(k)]
            matched_ign[:, :, di] = has_ign
    return matched, matched_ign


def evaluate_lvis_arrays(
    gt: LVISGroundTruth,
    det: Detections,
    *,
    max_dets: int = 300,
    max_dets_per_class: int | None = None,
) -> LVISEvalArrays:
    """Evaluate detections against LVIS ground truth (bbox), bit-for-bit the official protocol.

    max_dets: per-image cap (official 300; <= 0 for none). max_dets_per_class: per-category cap over the
    dataset ("fixed AP", Dave et al. 2021 use 10,000 with no per-image cap). Values are fractions in [0, 1];
    -1 marks a metric with no ground truth (as the official API).
    """
    num_c = gt.num_categories
    num_n = len(gt.image_ids)
    num_a = len(AREA_RANGES)
    num_t = len(IOU_THRESHOLDS)
    num_r = len(RECALL_THRESHOLDS)

    # --- map ids to indices; detections on unknown images / categories are user errors
    d_img = d_cat = np.zeros(0, dtype=np.int64)
    d_box, d_score = np.zeros((0, 4)), np.zeros(0)
    if len(det):
        ipos = np.minimum(np.searchsorted(gt.image_ids, det.image_id), max(num_n - 1, 0))
        bad = gt.image_ids[ipos] != det.image_id if num_n else np.ones(len(det), bool)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise UserInputError(
                f"results entry {i} has image_id {int(det.image_id[i])}, which is not an image of {gt.path}; "
                "evaluate results against the annotation file they were predicted for"
            )
        cpos = np.minimum(np.searchsorted(gt.category_ids, det.category_id), num_c - 1)
        bad = gt.category_ids[cpos] != det.category_id
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise UserInputError(
                f"results entry {i} has category_id {int(det.category_id[i])}, which is not a category of "
                f"{gt.path}; results must use the dataset's original category ids"
            )
        if not np.isfinite(det.score).all():
            i = int(np.flatnonzero(~np.isfinite(det.score))[0])
            raise UserInputError(f"results entry {i} has a non-finite score {det.score[i]}")
        keep = np.ones(len(det), dtype=bool)
        # --- 1a. fixed AP: top `max_dets_per_class` per category, ties in results order
        if max_dets_per_class is not None and max_dets_per_class > 0:
            by_score = np.argsort(-det.score, kind="stable")
            keep[by_score] = _top_k_mask(cpos[by_score], max_dets_per_class)
        # Base order used from here on: score desc, then image order, then results order (the order in which
        # the official accumulate() breaks ties). Every later order is a stable sort of it on small ints.
        base = _stable_order(ipos)
        base = base[np.argsort(-det.score[base], kind="stable")]
        base = base[keep[base]]
        d_img, d_cat, d_score = ipos[base], cpos[base], det.score[base]
        d_box = det.bbox[base]
        # --- 1b. official: top `max_dets` per image (within an image, base order is score desc, results order)
        if max_dets is not None and max_dets > 0:
            top = _top_k_mask(d_img, max_dets)
            d_img, d_cat, d_score, d_box = d_img[top], d_cat[top], d_score[top], d_box[top]
    d_area = d_box[:, 2] * d_box[:, 3]

    # --- 2. area > 0 filter (ground truth: the `area` field; detections: w * h)
    g_ok = (gt.ann_area > 0) & (gt.ann_area < np.inf)
    g_img, g_cat = gt.ann_image_index[g_ok], gt.ann_category_index[g_ok]
    g_box, g_area, g_ign0 = gt.ann_boxes[g_ok], gt.ann_area[g_ok], gt.ann_ignore[g_ok]
    g_nz = gt.ann_ids[g_ok] != 0
    # --- 3. federated filter
    g_key = _pair_keys(g_img, g_cat, num_c)
    pos_keys = np.unique(g_key)
    d_key = _pair_keys(d_img, d_cat, num_c)
    d_ok = (d_area > 0) & (d_area < np.inf)
    d_ok &= np.isin(d_key, pos_keys) | np.isin(d_key, gt.neg_keys)
    d_img, d_cat, d_box, d_score, d_area, d_key = (
        d_img[d_ok],
        d_cat[d_ok],
        d_box[d_ok],
        d_score[d_ok],
        d_area[d_ok],
        d_key[d_ok],
    )
    # --- group: detections by (category, image, score desc, results order); gt by (category, image, file)
    d_perm = _stable_order(d_img)
    d_perm = d_perm[_stable_order(d_cat[d_perm])]
    # accumulation order (category, score desc, image, results), as positions in the matching order
    acc_perm = np.empty_like(d_perm)
    acc_perm[d_perm] = np.arange(len(d_perm))
    acc_perm = acc_perm[_stable_order(d_cat)]
    d_img, d_cat, d_box, d_score, d_area, d_key = (
        d_img[d_perm],
        d_cat[d_perm],
        d_box[d_perm],
        d_score[d_perm],
        d_area[d_perm],
        d_key[d_perm],
    )
    g_perm = np.lexsort((np.arange(len(g_key)), g_img, g_cat))
    g_img, g_cat, g_box, g_area, g_ign0, g_nz, g_key = (
        g_img[g_perm],
        g_cat[g_perm],
        g_box[g_perm],
        g_area[g_perm],
        g_ign0[g_perm],
        g_nz[g_perm],
        g_key[g_perm],
    )
    # gt ignore per area range [A, M]
    g_ign = g_ign0[None, :] | (g_area[None, :] < AREA_RANGES[:, :1]) | (g_area[None, :] > AREA_RANGES[:, 1:])

    d_groups, d_gstart, d_gcount = np.unique(d_key, return_index=True, return_counts=True)
    g_groups, g_gstart, g_gcount = np.unique(g_key, return_index=True, return_counts=True)
    both = np.isin(d_groups, g_groups)
    gpos = np.searchsorted(g_groups, d_groups[both])
    matched, matched_ign = _match_groups(
        dt_boxes=d_box,
        dt_group_start=d_gstart[both],
        dt_group_count=d_gcount[both],
        gt_boxes=g_box,
        gt_ignore=g_ign,
        gt_nonzero_id=g_nz,
        gt_group_start=g_gstart[gpos],
        gt_group_count=g_gcount[gpos],
        iou_thresholds=IOU_THRESHOLDS,
    )
    # --- 5. ignore flags of detections [A, T, D]
    d_out = (d_area[None, :] < AREA_RANGES[:, :1]) | (d_area[None, :] > AREA_RANGES[:, 1:])  # [A, D]
    d_out |= np.isin(d_key, gt.not_exhaustive_keys)[None, :]
    # code: 1 true positive, 0 false positive, 2 ignored (built in place: these arrays are [A, T, D])
    code = matched.view(np.int8)
    for a in range(num_a):
        ignored = matched_ign[a] | (~matched[a] & d_out[a][None, :])  # [T, D]
        code[a][ignored] = 2
    del matched, matched_ign

    # --- 6. accumulate per category: order by score desc, then image, then results order
    code = code[:, :, acc_perm]
    cat_sorted = d_cat[acc_perm]
    c_start = np.searchsorted(cat_sorted, np.arange(num_c), side="left")
    c_end = np.searchsorted(cat_sorted, np.arange(num_c), side="right")
    num_gt = np.zeros((num_a, num_c), dtype=np.int64)
    for a in range(num_a):
        num_gt[a] = np.bincount(g_cat[~g_ign[a]], minlength=num_c)
    has_any = (np.bincount(g_cat, minlength=num_c) > 0) | (c_end > c_start)

    precision = -np.ones((num_t, num_r, num_c, num_a))
    recall = -np.ones((num_t, num_c, num_a))
    eps = np.spacing(1)
    for k in range(num_c):
        if not has_any[k]:
            continue
        seg = code[:, :, c_start[k] : c_end[k]]  # [A, T, n]
        n = seg.shape[-1]
        tp_sum = np.cumsum(seg == 1, axis=-1, dtype=np.float64)
        fp_sum = np.cumsum(seg == 0, axis=-1, dtype=np.float64)
        for a in range(num_a):
            ngt = int(num_gt[a, k])
            if ngt == 0:
                continue
            if n == 0:
                recall[:, k, a] = 0
                precision[:, :, k, a] = 0
                continue
            tp = tp_sum[a]  # [T, n], integer-valued
            pr = tp / (fp_sum[a] + tp + eps)
            pr = np.maximum.accumulate(pr[:, ::-1], axis=-1)[:, ::-1]
            recall[:, k, a] = tp[:, -1] / ngt
            # searchsorted(tp / ngt, RECALL_THRESHOLDS, "left") of every row at once, exactly: recall
            # values are j / ngt, so "rc < q" is "tp < j_min(q)" with j_min(q) the first j whose j / ngt >= q.
            j_min = np.searchsorted(np.arange(ngt + 1) / ngt, RECALL_THRESHOLDS, side="left")  # [R]
            row = np.arange(num_t)[:, None]
            key = (tp + row * (ngt + 1)).ravel()  # nondecreasing over the flattened [T, n]
            idx = np.searchsorted(key, (j_min[None, :] + row * (ngt + 1)).ravel(), side="left")
            idx = idx.reshape(num_t, num_r) - row * n  # [T, R]
            inside = idx < n
            precision[:, :, k, a] = np.where(inside, np.take_along_axis(pr, np.minimum(idx, n - 1), axis=1), 0.0)
    metrics = summarize_lvis(precision, recall, gt.frequency, max_dets=max_dets if max_dets and max_dets > 0 else -1)
    return LVISEvalArrays(precision=precision, recall=recall, metrics=metrics, num_detections_evaluated=len(d_score))


def _mean_valid(s: np.ndarray) -> float:
    v = s[s > -1]
    return float(np.mean(v)) if v.size else -1.0


def summarize_lvis(
    precision: np.ndarray, recall: np.ndarray, frequency: np.ndarray, max_dets: int = 300
) -> dict[str, float]:
    """The official summary: AP, AP50, AP75, APs/m/l, APr/c/f (means over entries > -1), and AR@<max_dets>
    variants (named as the official API names them: AR@300, ARs@300, ...; AR@-1 without a per-image cap)."""
    t50 = int(np.flatnonzero(IOU_THRESHOLDS == 0.5)[0])
    t75 = int(np.flatnonzero(IOU_THRESHOLDS == 0.75)[0])
    out = {
        "AP": _mean_valid(precision[:, :, :, 0]),
        "AP50": _mean_valid(precision[t50, :, :, 0]),
        "AP75": _mean_valid(precision[t75, :, :, 0]),
        "APs": _mean_valid(precision[:, :, :, 1]),
        "APm": _mean_valid(precision[:, :, :, 2]),
        "APl": _mean_valid(precision[:, :, :, 3]),
    }
    for f, name in enumerate(("APr", "APc", "APf")):
        out[name] = _mean_valid(precision[:, :, frequency == f, 0])
    out[f"AR@{max_dets}"] = _mean_valid(recall[:, :, 0])
    for a, name in enumerate(("s", "m", "l"), start=1):
        out[f"AR{name}@{max_dets}"] = _mean_valid(recall[:, :, a])
    return out


def per_category_ap(precision: np.ndarray) -> np.ndarray:
    """AP per category (IoU 0.5:0.95, area all) from precision [T, R, C, A]: float64 [C], NaN without gt."""
    p = precision[:, :, :, 0]
    valid = p > -1
    cnt = valid.sum(axis=(0, 1))
    tot = np.where(valid, p, 0.0).sum(axis=(0, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, tot / np.maximum(cnt, 1), math.nan)
