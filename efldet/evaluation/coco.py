"""COCO box evaluation: the 12 standard metrics through faster-coco-eval (default) or pycocotools.

Values are fractions in [0, 1]; -1 where undefined (no ground truth), as pycocotools prints them.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from efldet.errors import UserInputError
from efldet.evaluation.lvis import results_as_list

COCO_METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
COCO_BACKENDS = ("faster", "pycocotools")


def evaluate_coco(
    gt_json_path: str | Path,
    results: str | Path | list[Mapping[str, Any]] | Mapping[str, Any],
    *,
    backend: str = "faster",
) -> dict[str, float]:
    """COCO bbox metrics {AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl}, 100 per image.

    gt_json_path: COCO-format annotation file. results: results json path, list of COCO-style dicts
    {image_id, category_id (original id), bbox [x, y, w, h], score}, or a mapping of arrays.
    backend: "faster" (faster-coco-eval, default) or "pycocotools".
    """
    if backend not in COCO_BACKENDS:
        raise UserInputError(
            f"unknown COCO evaluation backend {backend!r}; choose one of {', '.join(COCO_BACKENDS)}"
        )
    gt_path = str(gt_json_path)
    if not Path(gt_path).is_file():
        raise UserInputError(f"annotation file {gt_path} does not exist")
    dts = results_as_list(results)
    silent = contextlib.redirect_stdout(io.StringIO())
    if backend == "faster":
        from faster_coco_eval import COCO, COCOeval_faster

        with silent:
            gt = COCO(gt_path)
            _check_ids(dts, set(gt.getImgIds()), set(gt.getCatIds()), gt_path)
            dt = gt.loadRes(dts)
            ev = COCOeval_faster(gt, dt, "bbox", print_function=lambda *a, **k: None)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        stats = np.asarray(ev.stats[:12], dtype=np.float64)
    else:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        with silent:
            gt = COCO(gt_path)
            _check_ids(dts, set(gt.getImgIds()), set(gt.getCatIds()), gt_path)
            if not dts:
                return {k: (0.0 if gt.getAnnIds() else -1.0) for k in COCO_METRIC_KEYS}
            dt = gt.loadRes(dts)
            ev = COCOeval(gt, dt, "bbox")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        stats = np.asarray(ev.stats[:12], dtype=np.float64)
    return {k: float(v) for k, v in zip(COCO_METRIC_KEYS, stats, strict=True)}


def _check_ids(dts: list[dict[str, Any]], img_ids: set[int], cat_ids: set[int], where: str) -> None:
    for i, d in enumerate(dts):
        if d["image_id"] not in img_ids:
            raise UserInputError(
                f"results entry {i} has image_id {d['image_id']}, which is not an image of {where}"
            )
        if d["category_id"] not in cat_ids:
            raise UserInputError(
                f"results entry {i} has category_id {d['category_id']}, which is not a category of {where}; "
                "results must use the dataset's original category ids"
            )
