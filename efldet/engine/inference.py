"""Inference over a dataset (sharded across ranks, gathered on rank 0) and evaluation of the detections.

Shape letters: N images in a batch, D detections of one image.
Detections are converted to the annotation file's conventions: boxes in original image pixels as COCO
[x, y, w, h], original category ids, json image ids.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from efldet.engine.dist import get_rank, get_world_size, is_dist, is_main_process


def autocast_context(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """torch.autocast for `amp` in {"none", "bf16", "fp16"} on `device` (fp16 only on CUDA)."""
    if amp == "none":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(device_type=device.type, dtype=dtype)


def detections_to_results(detections: list[dict[str, torch.Tensor]], targets: list[dict[str, Any]],
                          category_ids: list[int]) -> list[dict[str, Any]]:
    """COCO-style result dicts for one batch: boxes rescaled from the resized image to the original file."""
    results = []
    for det, target in zip(detections, targets, strict=True):
        height, width = target["image_size"]
        orig_h, orig_w = target["orig_size"]
        scale = torch.tensor([orig_w / width, orig_h / height, orig_w / width, orig_h / height])
        boxes = det["boxes"].float().cpu() * scale                      # [D, 4] xyxy in original pixels
        boxes[:, 2:] -= boxes[:, :2]                                      # xyxy -> xywh
        for box, score, label in zip(boxes.tolist(), det["scores"].float().cpu().tolist(),
                                     det["labels"].cpu().tolist(), strict=True):
            results.append({"image_id": int(target["image_id"]), "category_id": int(category_ids[label]),
                            "bbox": [round(v, 2) for v in box], "score": round(score, 5)})
    return results


@torch.no_grad()
def run_inference(model: nn.Module, loader: torch.utils.data.DataLoader, *, device: torch.device,
                  category_ids: list[int], amp: str = "none", progress: bool = True) -> list[dict[str, Any]]:
    """All ranks run their shard; rank 0 returns every result (other ranks return [])."""
    was_training = model.training
    model.eval()
    results: list[dict[str, Any]] = []
    batches = tqdm(loader, desc="eval", unit="batch", dynamic_ncols=True, disable=not (progress and is_main_process()))
    for images, targets in batches:
        with autocast_context(device, amp):
            detections = model(images.to(device, non_blocking=True),
                               image_sizes=[t["image_size"] for t in targets])
        results.extend(detections_to_results(detections, targets, category_ids))
    model.train(was_training)
    if is_dist() and get_world_size() > 1:
        gathered: list[list[dict[str, Any]] | None] = [None] * get_world_size()
        dist.gather_object(results, gathered if get_rank() == 0 else None, dst=0)
        results = [r for part in gathered for r in part] if get_rank() == 0 else []
    return results


def evaluate_results(results: list[dict[str, Any]], ann_file: str | Path, *, protocol: str, backend: str,
                     fixed_ap: bool, out_dir: str | Path | None = None) -> dict[str, float]:
    """Metrics of `results` on `ann_file` ("lvis": AP/APr/APc/APf..., "coco": the 12 COCO metrics).

    With `out_dir`, the results json and the metrics (json + Markdown + per-category AP) are written there.
    """
    from efldet.evaluation import evaluate_coco, evaluate_lvis_detailed, save_lvis_evaluation

    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "detections.json").write_text(json.dumps(results))
    if protocol == "coco":
        metrics = evaluate_coco(str(ann_file), results)
        if out_dir is not None:
            (Path(out_dir) / "metrics.json").write_text(json.dumps(metrics, indent=2))
        return metrics
    detailed = evaluate_lvis_detailed(str(ann_file), results, backend=backend, fixed_ap=fixed_ap)
    if out_dir is not None:
        save_lvis_evaluation(out_dir, detailed)
    return dict(detailed.metrics)


@torch.no_grad()
def collect_margins(model: nn.Module, dataset: Any, cfg: Any, device: torch.device) -> Any:
    """Fig. 4 statistics on `dataset`: every anchor labelled by the detector's own assigner (its class, background
    or ignored), scored by sigmoid(classification logit); returns an `efldet.evaluation.MarginAccumulator`."""
    from efldet.engine.trainer import build_test_loader_for
    from efldet.evaluation import MarginAccumulator

    was_training = model.training
    model.eval()
    accumulator = MarginAccumulator(model.num_classes)
    for images, targets in build_test_loader_for(cfg, dataset):
        targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets]
        feats = model.features(images.to(device))
        cls, box_reg, quality = model.predict_raw(feats)                    # [N, K, C], [N, K, 4], [N, K]
        matched = model.assign(model.priors(feats), targets, cls, box_reg, quality)
        matched = matched[0] if isinstance(matched, tuple) else matched  # YOLOX also returns the IoUs
        labels = model.anchor_labels(matched, targets)                     # [N, K]
        accumulator.update(cls.float().sigmoid().flatten(0, 1), labels.flatten())  # [N*K, C], [N*K]
    model.train(was_training)
    return accumulator
