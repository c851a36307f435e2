"""Models from checkpoints: evaluation of a checkpoint on a config's val set, and prediction on image files.

A checkpoint embeds the resolved config and the category names and ids, so `predict` needs nothing else.
Shape letters: D detections of one image.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from efldet.config import Config, from_dict
from efldet.engine.checkpoint import load_checkpoint, load_model_state
from efldet.engine.inference import autocast_context
from efldet.errors import UserInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def model_from_checkpoint(path: str | Path, *, device: torch.device, cfg: Config | None = None,
                          use_ema: bool = True) -> tuple[nn.Module, Config, dict[str, Any]]:
    """(detector in eval mode, its config, the checkpoint). `cfg` overrides the embedded config (for eval of a
    checkpoint under a config file); the weights are the EMA weights when the checkpoint has them."""
    from efldet.models import build_detector

    ckpt = load_checkpoint(path)
    if cfg is None:
        if "config" not in ckpt:
            raise UserInputError(f"{path} has no embedded config; pass the config file it was trained with")
        cfg = from_dict(Config, ckpt["config"], where=f"{path} (embedded config)")
    model = build_detector(cfg.model)
    state = ckpt["model"]
    if use_ema and ckpt.get("ema"):
        prefix = "module."
        state = {k[len(prefix):]: v for k, v in ckpt["ema"].items() if k.startswith(prefix)}
    load_model_state(model, state, source=str(path))
    return model.to(device).eval(), cfg, ckpt


def collect_images(inputs: Sequence[str]) -> list[Path]:
    """Image files from files and directories (directories: their image files, sorted)."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            paths.append(path)
        else:
            raise UserInputError(f"{item}: no such image file or directory")
    if not paths:
        raise UserInputError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(inputs)}")
    return paths


@torch.no_grad()
def predict_images(weights: str | Path, inputs: Sequence[str], out_dir: str | Path, *,
                   score_threshold: float = 0.3, device_name: str = "auto", max_drawn: int = 50) -> Path:
    """Run the checkpoint on every image; write `<out>/<name>.png` with boxes and category names drawn (those
    scoring >= score_threshold) and `<out>/detections.json` (COCO-style results of every detection, with
    `file_name` and a running `image_id`). Returns the json path."""
    from efldet.engine.trainer import resolve_device

    if not 0.0 <= score_threshold <= 1.0:
        raise UserInputError(f"--score-threshold must be in [0, 1], got {score_threshold}")
    device = resolve_device(device_name)
    model, cfg, ckpt = model_from_checkpoint(weights, device=device)
    names = list(ckpt.get("class_names") or [str(i) for i in range(cfg.model.num_classes)])
    category_ids = list(ckpt.get("category_ids") or range(1, cfg.model.num_classes + 1))
    amp = cfg.train.amp if cfg.train.amp != "fp16" or device.type == "cuda" else "none"

    def detect(tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        with autocast_context(device, amp):
            return model(tensor[None].to(device), image_sizes=[tuple(tensor.shape[-2:])])[0]

    return write_predictions(detect, inputs, out_dir, short_side=cfg.data.test_short_side,
                             max_size=cfg.data.max_size, names=names, category_ids=category_ids,
                             score_threshold=score_threshold, max_drawn=max_drawn)


@torch.no_grad()
def write_predictions(detect: Callable[[torch.Tensor], dict[str, torch.Tensor]], inputs: Sequence[str],
                      out_dir: str | Path, *, short_side: int, max_size: int, names: Sequence[str],
                      category_ids: Sequence[int], score_threshold: float = 0.3, max_drawn: int = 50) -> Path:
    """The prediction loop shared by the PyTorch and the onnxruntime paths: every image is read, resized and
    normalised (`eval_transforms(short_side, max_size)`), `detect(tensor [3, h, w]) -> {"boxes" [D, 4] in the
    tensor's pixels, "scores" [D], "labels" [D]}` runs, and the drawn PNG and the json entries are written (see
    `predict_images`). Returns the json path."""
    from torchvision import tv_tensors
    from torchvision.io import write_png
    from torchvision.utils import draw_bounding_boxes

    from efldet.data import eval_transforms, read_image

    if not 0.0 <= score_threshold <= 1.0:
        raise UserInputError(f"--score-threshold must be in [0, 1], got {score_threshold}")
    transform = eval_transforms(short_side, max_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for image_id, path in enumerate(tqdm(collect_images(inputs), desc="predict", unit="img"), start=1):
        image = read_image(os.fspath(path))                                  # uint8 [3, H, W]
        height, width = image.shape[-2:]
        empty = {"boxes": tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(height, width)),
                 "labels": torch.zeros(0, dtype=torch.long)}
        tensor, _ = transform(image, empty)
        det = detect(tensor)
        scale = torch.tensor([width / tensor.shape[-1], height / tensor.shape[-2]] * 2)
        boxes = det["boxes"].float().cpu() * scale                            # [D, 4] xyxy in file pixels
        scores, labels = det["scores"].float().cpu(), det["labels"].cpu()
        for box, score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist(), strict=True):
            results.append({"image_id": image_id, "file_name": str(path), "category_id": int(category_ids[label]),
                            "category_name": names[label], "score": round(score, 5),
                            "bbox": [round(box[0], 2), round(box[1], 2), round(box[2] - box[0], 2),
                                     round(box[3] - box[1], 2)]})
        keep = (scores >= score_threshold).nonzero().squeeze(1)[:max_drawn]
        drawn = image[:3]
        if keep.numel():   # nothing above the threshold: the image as it is
            drawn = draw_bounding_boxes(
                drawn, boxes[keep], labels=[f"{names[int(labels[i])]} {float(scores[i]):.2f}" for i in keep],
                colors="red", width=2)
        write_png(drawn, str(out / f"{path.stem}.png"))
    json_path = out / "detections.json"
    json_path.write_text(json.dumps(results))
    return json_path


def checkpoint_margins(weights: str | Path, out_csv: str | Path, *, data_root: str | None = None,
                       device_name: str = "auto") -> Path:
    """Fig. 4 margins of a checkpoint on its config's val set (`data_root` replaces data.root), as a CSV for
    `efldet.evaluation.plot_margins` (categories with their training frequency and image count)."""
    import dataclasses

    from efldet.engine.inference import collect_margins
    from efldet.engine.trainer import build_datasets, data_path, resolve_device
    from efldet.evaluation import category_table

    device = resolve_device(device_name)
    model, cfg, _ = model_from_checkpoint(weights, device=device)
    if data_root is not None:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=data_root))
    _, val_set = build_datasets(cfg)
    accumulator = collect_margins(model, val_set, cfg, device)
    categories = category_table(data_path(cfg.data.root, cfg.data.train_ann))
    return accumulator.write_csv(out_csv, categories)
