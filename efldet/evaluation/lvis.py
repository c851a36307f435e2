"""LVIS box evaluation: AP, AP50, AP75, APs, APm, APl, APr, APc, APf (and AR@300) with three backends.

- "fast" (default): efldet's array-based evaluator (`lvis_fast.py`), equal to the official API (tests).
- "lvis": the official `lvis` API 0.5.3 (the reference; slow, and memory-hungry at LVIS-val size).
- "faster": `faster_coco_eval.COCOeval_faster` with `lvis_style=True`.

All values are fractions in [0, 1] (the official API's convention; reports print percent). A metric with no
ground truth at all (e.g. APr on a dataset without rare categories) is -1, as in the official API.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from efldet.errors import UserInputError
from efldet.evaluation.lvis_fast import (
    FREQUENCY_LABELS,
    Detections,
    LVISGroundTruth,
    as_detections,
    evaluate_lvis_arrays,
    load_lvis_ground_truth,
    per_category_ap,
)

BACKENDS = ("fast", "lvis", "faster")
FIXED_AP_MAX_DETS_PER_CLASS = 10_000


@dataclass
class LVISEvalResult:
    """Metrics plus per-category AP (IoU 0.5:0.95, all areas; NaN for categories without ground truth)."""

    metrics: dict[str, float]
    category_ids: np.ndarray  # int64 [C]
    category_names: list[str]
    frequency: list[str]  # 'r' / 'c' / 'f' / '' per category
    image_count: np.ndarray  # int64 [C], -1 when the annotation file does not say
    category_ap: np.ndarray  # float64 [C]
    backend: str
    fixed_ap: bool

    def per_category_rows(self) -> list[dict[str, Any]]:
        """One dict per category: category_id, name, frequency, image_count, ap (None when undefined)."""
        rows = []
        for k, cid in enumerate(self.category_ids):
            ap = float(self.category_ap[k])
            rows.append(
                {
                    "category_id": int(cid),
                    "name": self.category_names[k],
                    "frequency": self.frequency[k],
                    "image_count": int(self.image_count[k]),
                    "ap": None if math.isnan(ap) else ap,
                }
            )
        return rows


def results_as_list(results: Any) -> list[dict[str, Any]]:
    """Fresh result dicts {image_id, category_id, bbox, score} from a results json path, a list of dicts or arrays
    (fresh copies, since the official APIs write into them); the entries are checked on the way."""
    if isinstance(results, (str, Path)):
        path = Path(results)
        if not path.is_file():
            raise UserInputError(f"results file {path} does not exist")
        with open(path, "rb") as f:
            data = json.load(f)
        if not isinstance(data, list):
            raise UserInputError(f"results file {path} must hold a json list of detections")
        results = data
    det = as_detections(results)
    return [
        {"image_id": int(i), "category_id": int(c), "bbox": [float(v) for v in b], "score": float(s)}
        for i, c, b, s in zip(det.image_id, det.category_id, det.bbox, det.score, strict=True)
    ]


def _cap_per_class(results: list[dict[str, Any]], cap: int) -> list[dict[str, Any]]:
    by_cat: dict[int, list[dict[str, Any]]] = {}
    for r in results:
        by_cat.setdefault(r["category_id"], []).append(r)
    out: list[dict[str, Any]] = []
    for anns in by_cat.values():
        out.extend(sorted(anns, key=lambda r: r["score"], reverse=True)[:cap])
    return out


def _official(gt_path: str, results: Any, max_dets: int, per_class: int | None) -> tuple[dict, np.ndarray]:
    # lvis 0.5.3 still uses np.float (removed in numpy 1.24); restore the alias it expects.
    if "float" not in np.__dict__:
        np.float = float  # type: ignore[attr-defined]
    from lvis import LVIS, LVISEval, LVISResults

    dts = results_as_list(results)
    if not dts:
        raise UserInputError(
            "the official lvis backend cannot evaluate an empty results list; use backend='fast'"
        )
    if per_class:
        dts = _cap_per_class(dts, per_class)
    gt = LVIS(gt_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # lvis calls logger.warn
        logging.getLogger("lvis").setLevel(logging.ERROR)
        dt = LVISResults(gt, dts, max_dets=max_dets if max_dets > 0 else -1)
    ev = LVISEval(gt, dt, iou_type="bbox")
    ev.params.max_dets = max_dets if max_dets > 0 else -1
    ev.run()
    return {k: float(v) for k, v in ev.get_results().items()}, ev.eval["precision"]


def _top_per_image(results: list[dict[str, Any]], max_dets: int) -> list[dict[str, Any]]:
    by_img: dict[int, list[dict[str, Any]]] = {}
    for r in results:
        by_img.setdefault(r["image_id"], []).append(r)
    out: list[dict[str, Any]] = []
    for anns in by_img.values():
        if len(anns) > max_dets:
            anns = sorted(anns, key=lambda r: r["score"], reverse=True)[:max_dets]
        out.extend(anns)
    return out


def _faster(gt_path: str, results: Any, max_dets: int, per_class: int | None) -> tuple[dict, np.ndarray]:
    from faster_coco_eval import COCO, COCOeval_faster

    dts = results_as_list(results)
    if per_class:
        dts = _cap_per_class(dts, per_class)
    if max_dets > 0:
        dts = _top_per_image(dts, max_dets)
    gt = COCO(gt_path)
    dt = gt.loadRes(dts)
    ev = COCOeval_faster(gt, dt, "bbox", lvis_style=True, print_function=lambda *a, **k: None)
    if max_dets > 0:
        ev.params.maxDets = [max_dets]
    else:  # no per-image cap: the largest per-image count (faster-coco-eval allocates by maxDets)
        per_image: dict[int, int] = {}
        for r in dts:
            per_image[r["image_id"]] = per_image.get(r["image_id"], 0) + 1
        ev.params.maxDets = [max(per_image.values(), default=1)]
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    s = ev.stats_as_dict
    names = {
        "AP": "AP_all",
        "AP50": "AP_50",
        "AP75": "AP_75",
        "APs": "AP_small",
        "APm": "AP_medium",
        "APl": "AP_large",
        "APr": "APr",
        "APc": "APc",
        "APf": "APf",
    }
    metrics = {k: float(s[v]) for k, v in names.items()}
    metrics["AR@300"] = float(s.get("AR_all", -1.0))
    precision = np.asarray(ev.eval["precision"])[..., -1]  # [T, R, C, A, M] -> last maxDets
    return metrics, precision


def evaluate_lvis_detailed(
    gt_json_path: str | Path,
    results: Any,
    *,
    backend: str = "fast",
    fixed_ap: bool = False,
    max_dets: int = 300,
    max_dets_per_class: int = FIXED_AP_MAX_DETS_PER_CLASS,
    ground_truth: LVISGroundTruth | None = None,
) -> LVISEvalResult:
    """Like `evaluate_lvis`, also returning per-category AP. `ground_truth` reuses an already loaded file
    (fast backend only), e.g. when evaluating after every epoch."""
    if backend not in BACKENDS:
        raise UserInputError(
            f"unknown LVIS evaluation backend {backend!r}; choose one of {', '.join(BACKENDS)}"
        )
    gt_path = str(gt_json_path)
    if not Path(gt_path).is_file():
        raise UserInputError(f"annotation file {gt_path} does not exist")
    per_class = max_dets_per_class if fixed_ap else None
    per_image = -1 if fixed_ap else max_dets
    gt = ground_truth if ground_truth is not None else load_lvis_ground_truth(gt_path)
    if backend == "fast":
        out = evaluate_lvis_arrays(
            gt, as_detections(results), max_dets=per_image, max_dets_per_class=per_class
        )
        metrics, precision = out.metrics, out.precision
    elif backend == "lvis":
        metrics, precision = _official(gt_path, results, per_image, per_class)
    else:
        metrics, precision = _faster(gt_path, results, per_image, per_class)
    freq = [FREQUENCY_LABELS[f] if f >= 0 else "" for f in gt.frequency]
    return LVISEvalResult(
        metrics=metrics,
        category_ids=gt.category_ids,
        category_names=gt.category_names,
        frequency=freq,
        image_count=gt.image_count,
        category_ap=per_category_ap(np.asarray(precision)),
        backend=backend,
        fixed_ap=fixed_ap,
    )


def evaluate_lvis(
    gt_json_path: str | Path,
    results: str | Path | list[Mapping[str, Any]] | Detections | Mapping[str, Any],
    *,
    backend: str = "fast",
    fixed_ap: bool = False,
    max_dets: int = 300,
    max_dets_per_class: int = FIXED_AP_MAX_DETS_PER_CLASS,
) -> dict[str, float]:
    """Evaluate box detections on an LVIS-format annotation file with the official LVIS protocol.

    gt_json_path: LVIS-format json (images need `neg_category_ids` and `not_exhaustive_category_ids`,
        categories need `frequency`).
    results: a results json path, a list of COCO-style dicts {image_id, category_id (original id),
        bbox [x, y, w, h] in pixels, score}, a `Detections`, or a mapping of arrays with those four keys.
    backend: "fast" (default, array-based), "lvis" (official API) or "faster" (faster-coco-eval).
    fixed_ap: the "fixed AP" of Dave et al. 2021: no per-image cap, top `max_dets_per_class` (10,000)
        detections per category over the dataset.
    Returns {AP, AP50, AP75, APs, APm, APl, APr, APc, APf, AR@300, ...} as fractions in [0, 1]; -1 where
    undefined (no ground truth), as the official API.
    """
    return evaluate_lvis_detailed(
        gt_json_path,
        results,
        backend=backend,
        fixed_ap=fixed_ap,
        max_dets=max_dets,
        max_dets_per_class=max_dets_per_class,
    ).metrics
