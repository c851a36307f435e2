"""Each integration's own loss against its efldet variant, same budget, on the synthetic long-tailed benchmark.

    python benchmarks/bench_integrations.py [--rows ...] [--seeds 0 1] [--out runs/bench_integrations]

Data: `efldet data synth` defaults (40 categories: 11 rare, 16 common, 13 frequent; 2,000 train / 400 val images
of 128 px), generated into OUT/data unless --data names one, and exported with `efldet data export-yolo`.
Both hosts sample training images by repeat factor sampling with t = --rfs-threshold (default 0.05 = 100 / 2,000
images, the synthetic configs' setting; the paper trains every detector with RFS): 2,855 images per epoch.
Rows (`--rows`, see ROWS below):

    Ultralytics YOLOv8n built from yolov8n.yaml, from scratch, 128 px, batch 16, SGD lr0 0.01, --yolo-epochs
        epochs (warm-up 1 epoch; Ultralytics' other defaults, i.e. its augmentation, TAL, box/DFL losses, EMA),
        with the host's BCE or an efldet loss through `efldet.integrations.ultralytics` (YoloLossConfig). RFS: the
        export's train_rfs.txt (`export-yolo --rfs-threshold`).
    torchvision RetinaNet on efldet's TinyBackbone + torchvision FPN (64 channels, P3-P7) and a GN head, from
        scratch, 128 px, batch 8, SGD lr --tv-lr, warm-up 100 iterations, cosine to 0.05 lr, clipping 35, flips,
        --tv-iters iterations (the defaults are configs/synthetic/demo.yaml's schedule), with torchvision's focal
        loss or an efldet loss through `use_efldet_loss`.

Evaluation: the final weights on the val set, class-aware NMS, top 300 per image, LVIS protocol (efldet's
evaluator), AP/APr/APc/APf in percent; mean and half-range ("±") over seeds. Every run is a subprocess writing
OUT/<row>_seed<S>/result.json; finished runs are reused, so an interrupted benchmark continues. Torch uses
--threads threads (Ultralytics would set 1 on a 2-core CPU). Writes OUT/results.json and prints the Markdown
table. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
KEYS = ("AP", "APr", "APc", "APf")

# row -> (host, loss description, loss settings). Ultralytics settings are YoloLossConfig fields (None = the host's
# BCE); torchvision settings are EqualizedFocalLoss arguments (None = torchvision's focal loss).
ROWS: dict[str, tuple[str, str, dict[str, Any] | None]] = {
    "yolo_bce": ("Ultralytics YOLOv8n", "BCE on TAL scores (host default)", None),
    "yolo_efl": ("Ultralytics YOLOv8n", "EFL s=4, no alpha, TAL positives as hard labels, / #fg",
                 {"loss": "efl", "scale_factor": 4.0, "alpha": None, "normalizer": "foreground"}),
    "yolo_focal": ("Ultralytics YOLOv8n", "focal (EFL s=0), no alpha, hard labels, / #fg",
                   {"loss": "focal", "alpha": None, "normalizer": "foreground"}),
    "yolo_efl_alpha": ("Ultralytics YOLOv8n", "EFL s=4, alpha 0.25, hard labels, / #fg",
                       {"loss": "efl", "scale_factor": 4.0, "alpha": 0.25, "normalizer": "foreground"}),
    "yolo_efl_warm": ("Ultralytics YOLOv8n", "EFL s=4, no alpha, hard labels, / #fg, s warm-up 1 epoch",
                      {"loss": "efl", "scale_factor": 4.0, "alpha": None, "normalizer": "foreground",
                       "warmup_iters": 125}),
    "yolo_eqfl": ("Ultralytics YOLOv8n", "EQFL s=4 on TAL scores, / sum of scores (the issue's setting)",
                  {"loss": "eqfl", "scale_factor": 4.0, "normalizer": "target_scores_sum"}),
    "yolo_eqfl_fg": ("Ultralytics YOLOv8n", "EQFL s=4 on TAL scores, / #fg",
                     {"loss": "eqfl", "scale_factor": 4.0, "normalizer": "foreground"}),
    "yolo_eqfl_b05": ("Ultralytics YOLOv8n", "EQFL s=4, gamma_b=0.5 on TAL scores, / sum of scores",
                      {"loss": "eqfl", "scale_factor": 4.0, "gamma_b": 0.5, "normalizer": "target_scores_sum"}),
    "yolo_qfl_b05": ("Ultralytics YOLOv8n", "QFL beta=0.5 (EQFL s=0) on TAL scores, / sum of scores",
                     {"loss": "qfl", "gamma_b": 0.5, "normalizer": "target_scores_sum"}),
    "tv_focal": ("torchvision RetinaNet", "focal (host default)", None),
    "tv_efl": ("torchvision RetinaNet", "EFL s=8", {"scale_factor": 8.0}),
    "tv_efl_s4": ("torchvision RetinaNet", "EFL s=4", {"scale_factor": 4.0}),
}
DEFAULT_ROWS = ("yolo_bce", "yolo_efl", "yolo_eqfl_b05", "tv_focal", "tv_efl")


# ------------------------------------------------------------------------------------------------- data
def prepare_data(out: Path, data: Path | None, rfs_threshold: float) -> tuple[Path, Path]:
    """(synthetic dataset dir, YOLO export dir with train_rfs.txt), generating / exporting what is missing."""
    from efldet.data.yolo_export import export_yolo

    data_dir = data if data is not None else out / "data"
    if not (data_dir / "val.json").is_file():
        from efldet.data.synthetic import generate

        generate(str(data_dir))
    yolo_dir = out / "yolo_data"
    marker = yolo_dir / "rfs_threshold.txt"  # the export is reused only for the same threshold
    if not (yolo_dir / "dataset.yaml").is_file() or not marker.is_file() or marker.read_text() != repr(rfs_threshold):
        export_yolo(data_dir, yolo_dir, overwrite=True, rfs_threshold=rfs_threshold)
        marker.write_text(repr(rfs_threshold))
    return data_dir, yolo_dir


def group_ratio(ratio: list[float], frequency: list[str]) -> dict[str, float]:
    """Mean g_j per LVIS group."""
    return {f"g_mean_{g}": statistics.fmean([r for r, f in zip(ratio, frequency, strict=True) if f == g])
            for g in "rcf" if g in frequency}


# ------------------------------------------------------------------------------------------------- ultralytics
def run_yolo(row: str, seed: int, data_dir: Path, yolo_dir: Path, run_dir: Path, epochs: int, threads: int
             ) -> dict[str, Any]:
    """Train YOLOv8n with the row's loss, predict on val, evaluate with the LVIS protocol."""
    os.environ["YOLO_OFFLINE"] = "1"  # before ultralytics is imported: no analytics or update checks
    os.environ.setdefault("YOLO_CONFIG_DIR", str(run_dir / "ultralytics_config"))
    import torch
    from ultralytics import YOLO
    from ultralytics.models.yolo.detect import DetectionTrainer

    from efldet.data.lvis import LVISIndex
    from efldet.evaluation import evaluate_lvis
    from efldet.integrations.ultralytics import YoloLossConfig, efldet_trainer

    settings = ROWS[row][2]
    trainer_cls = DetectionTrainer if settings is None else efldet_trainer(YoloLossConfig(**settings))
    overrides = dict(model="yolov8n.yaml", data=str(yolo_dir / "dataset.yaml"), epochs=epochs, imgsz=128, batch=16,
                     optimizer="SGD", lr0=0.01, warmup_epochs=1, seed=seed, deterministic=True, workers=0,
                     device="cpu", amp=False, plots=False, val=False, project=str(run_dir), name="train",
                     exist_ok=True, verbose=False)
    trainer = trainer_cls(overrides=overrides)
    trainer.add_callback("on_train_start", lambda _: torch.set_num_threads(threads))
    started = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - started

    val = LVISIndex.from_json(data_dir / "val.json")
    image_ids = {os.path.basename(name): int(i) for name, i in zip(val.file_names, val.image_ids, strict=True)}
    files = sorted(str(p) for p in (yolo_dir / "images" / "val").iterdir())
    model = YOLO(str(trainer.last))
    results = []
    for res in model.predict(files, imgsz=128, conf=0.001, iou=0.7, max_det=300, device="cpu", verbose=False,
                             stream=True, batch=16):
        image_id = image_ids[os.path.basename(res.path)]
        for (x0, y0, x1, y1), score, cls in zip(res.boxes.xyxy.tolist(), res.boxes.conf.tolist(),
                                                res.boxes.cls.tolist(), strict=True):
            results.append({"image_id": image_id, "category_id": int(val.cat_ids[int(cls)]),
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score})
    metrics = evaluate_lvis(data_dir / "val.json", results)
    out = {k: 100.0 * metrics[k] for k in KEYS}
    out.update(train_s=train_s, epochs=epochs, iterations=int(trainer.epochs * len(trainer.train_loader)))
    if settings is not None:
        cls_loss = trainer.model.cls_loss.loss
        if hasattr(cls_loss, "pos_neg_ratio"):
            train = LVISIndex.from_json(data_dir / "train.json")
            out.update(group_ratio(cls_loss.pos_neg_ratio.tolist(), train.frequency.tolist()))
    return out


def classification_signal(yolo_dir: Path, weights: Path | None, rows: list[str], batches: int = 4
                          ) -> dict[str, dict[str, float]]:
    """How much gradient each YOLO classification loss sends to the logits, relative to the host's BCE.

    On the same model state (`weights`, or a fresh yolov8n.yaml model) and the same TAL targets of `batches` training
    batches (augmentation of the host's trainer): sum over the batches of |dL/dx| over positive elements (an
    anchor's TAL class) and over negative elements, each divided by the BCE's. The loss as the host weighs it (x cls
    gain) is compared, so a ratio of 0.2 means a 5x weaker classification signal.
    """
    os.environ["YOLO_OFFLINE"] = "1"
    import torch
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.utils.loss import v8DetectionLoss

    from efldet.integrations.ultralytics import TALClassificationLoss, YoloLossConfig

    overrides = dict(model=str(weights) if weights else "yolov8n.yaml", data=str(yolo_dir / "dataset.yaml"),
                     epochs=1, imgsz=128, batch=16, workers=0, device="cpu", amp=False, plots=False, val=False,
                     project=str(yolo_dir.parent / "signal"), name="probe", exist_ok=True, verbose=False, seed=0)
    trainer = DetectionTrainer(overrides=overrides)
    trainer._setup_train()  # builds the model and the host's training loader (no public way to get both)
    model = trainer.model
    model.train()
    criterion = v8DetectionLoss(model)
    captured: list[tuple[torch.Tensor, torch.Tensor]] = []
    host_bce = criterion.bce

    def capture(pred_scores: torch.Tensor, target_scores: torch.Tensor) -> torch.Tensor:
        captured.append((pred_scores.detach(), target_scores.detach()))
        return host_bce(pred_scores, target_scores)

    criterion.bce = capture
    with torch.no_grad():
        for i, batch in enumerate(trainer.train_loader):
            if i == batches:
                break
            batch = trainer.preprocess_batch(batch)
            criterion(model(batch["img"]), batch)
    sums: dict[str, list[float]] = {}
    for row in ["yolo_bce", *rows]:
        settings = ROWS[row][2]
        term = None if settings is None else TALClassificationLoss(
            YoloLossConfig(**settings).build(model.model[-1].nc), normalizer=settings.get("normalizer", "foreground"))
        pos = neg = 0.0
        for logits, targets in captured:
            x = logits.detach().float().clone().requires_grad_(True)  # a fresh leaf per loss
            if term is None:
                loss = host_bce(x, targets).sum() / targets.sum().clamp(min=1)
            else:
                loss = term(x, targets)
            loss.backward()
            positive = targets > 0
            pos += float(x.grad[positive].abs().sum())
            neg += float(x.grad[~positive].abs().sum())
        sums[row] = [pos, neg]
    base_pos, base_neg = sums["yolo_bce"]
    return {row: {"pos": p / base_pos, "neg": n / base_neg, "pos_abs": p, "neg_abs": n} for row, (p, n) in sums.items()}


# ------------------------------------------------------------------------------------------------- torchvision
def retinanet_tiny(num_classes: int) -> Any:
    """torchvision RetinaNet (background channel 0 + num_classes) on TinyBackbone + FPN P3-P7, 64 channels."""
    from collections import OrderedDict
    from functools import partial

    from torch import nn
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.retinanet import RetinaNetHead
    from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelP6P7

    from efldet.models.backbones.tiny import TinyBackbone

    class TinyFPN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = TinyBackbone()
            self.fpn = FeaturePyramidNetwork(self.body.out_channels, 64, extra_blocks=LastLevelP6P7(64, 64))
            self.out_channels = 64

        def forward(self, x):
            return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))

    sizes = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in (16, 32, 64, 128, 256))
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    head = RetinaNetHead(64, anchors.num_anchors_per_location()[0], num_classes + 1,
                         norm_layer=partial(nn.GroupNorm, 16))
    return RetinaNet(TinyFPN(), num_classes + 1, min_size=128, max_size=128, anchor_generator=anchors, head=head,
                     score_thresh=0.001, detections_per_img=300)


def run_torchvision(row: str, seed: int, data_dir: Path, run_dir: Path, iters: int, lr: float, rfs_threshold: float,
                    threads: int) -> dict[str, Any]:
    """Train the RetinaNet with the row's loss, predict on val, evaluate with the LVIS protocol."""
    import math

    import torch
    from torchvision.transforms import v2

    from efldet.data import LVISDataset, build_test_loader, build_train_loader, set_epoch
    from efldet.evaluation import evaluate_lvis
    from efldet.integrations.torchvision import use_efldet_loss
    from efldet.losses import EqualizedFocalLoss

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    settings = ROWS[row][2]
    to_float = [v2.ToDtype(torch.float32, scale=True)]
    train_set = LVISDataset(data_dir / "train.json", data_dir, transforms=v2.Compose(
        [v2.ClampBoundingBoxes(), v2.RandomHorizontalFlip(0.5), v2.SanitizeBoundingBoxes(), *to_float]))
    val_set = LVISDataset(data_dir / "val.json", data_dir, transforms=v2.Compose(to_float))
    num_classes = train_set.num_classes
    model = retinanet_tiny(num_classes)
    if settings is not None:
        use_efldet_loss(model, EqualizedFocalLoss(num_classes=num_classes, **settings))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)

    def lr_factor(it: int) -> float:
        if it < 100:
            return 0.001 + (1 - 0.001) * it / 100
        t = (it - 100) / max(iters - 100, 1)
        return 0.05 + (1 - 0.05) * 0.5 * (1 + math.cos(math.pi * t))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    loader = build_train_loader(train_set, batch_size=8, sampler="repeat_factor", rfs_threshold=rfs_threshold,
                                seed=seed, num_workers=0, aspect_ratio_grouping=False)
    model.train()
    started, it, epoch = time.perf_counter(), 0, 0
    while it < iters:
        set_epoch(loader, epoch)
        for images, targets in loader:
            tv_targets = [{"boxes": t["boxes"].as_subclass(torch.Tensor), "labels": t["labels"] + 1}
                          for t in targets]  # efldet label l -> torchvision label l + 1 (0 = background)
            losses = model(list(images), tv_targets)
            loss = sum(losses.values())
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 35.0)
            optimizer.step()
            scheduler.step()
            it += 1
            if it >= iters:
                break
        epoch += 1
    train_s = time.perf_counter() - started

    model.eval()
    results = []
    cat_ids = val_set.category_ids
    with torch.no_grad():
        for images, targets in build_test_loader(val_set, batch_size=16, num_workers=0):
            sizes = [t["image_size"] for t in targets]
            crops = [im[:, :h, :w] for im, (h, w) in zip(images, sizes, strict=True)]  # undo the batch padding
            for det, target in zip(model(crops), targets, strict=True):
                for (x0, y0, x1, y1), score, label in zip(det["boxes"].tolist(), det["scores"].tolist(),
                                                          det["labels"].tolist(), strict=True):
                    results.append({"image_id": int(target["image_id"]), "category_id": int(cat_ids[label - 1]),
                                    "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score})
    metrics = evaluate_lvis(data_dir / "val.json", results)
    out = {k: 100.0 * metrics[k] for k in KEYS}
    out.update(train_s=train_s, iterations=iters, lr=lr)
    if settings is not None:
        ratio = model.head.classification_head.cls_loss.pos_neg_ratio.tolist()
        out.update(group_ratio(ratio, train_set.frequency_groups))
    return out


# ------------------------------------------------------------------------------------------------- driver
def run_row(row: str, seed: int, args: argparse.Namespace, data_dir: Path, yolo_dir: Path) -> dict[str, Any]:
    """One run in a subprocess (reused when OUT/<row>_seed<S>/result.json exists)."""
    run_dir = args.out / f"{row}_seed{seed}"
    result = run_dir / "result.json"
    if not result.is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, __file__, "--one", row, "--seed", str(seed), "--out", str(args.out),
               "--data", str(data_dir), "--yolo-epochs", str(args.yolo_epochs), "--tv-iters", str(args.tv_iters),
               "--tv-lr", str(args.tv_lr), "--rfs-threshold", str(args.rfs_threshold), "--threads", str(args.threads)]
        started = time.perf_counter()
        with open(run_dir / "log.txt", "w") as log:
            subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
        data = json.loads(result.read_text())
        data["wall_s"] = time.perf_counter() - started
        result.write_text(json.dumps(data, indent=2) + "\n")
    host, loss, _ = ROWS[row]
    return {"row": row, "host": host, "loss": loss, "seed": seed, **json.loads(result.read_text())}


def markdown(rows: list[dict[str, Any]], order: list[str]) -> str:
    lines = ["| host | classification loss | seeds | " + " | ".join(KEYS) + " | final mean g_j r / c / f |",
             "|---|---|---:|" + "---:|" * len(KEYS) + "---|"]
    for name in order:
        runs = [r for r in rows if r["row"] == name]
        if not runs:
            continue
        cells = []
        for key in KEYS:
            values = [r[key] for r in runs]
            half_range = (max(values) - min(values)) / 2
            cells.append(f"{statistics.fmean(values):.1f} ± {half_range:.1f}" if len(values) > 1
                         else f"{values[0]:.1f}")
        g = [statistics.fmean([r[f"g_mean_{k}"] for r in runs]) for k in "rcf" if f"g_mean_{k}" in runs[0]]
        g_cell = " / ".join(f"{v:.3f}" for v in g) if g else "-"
        lines.append(f"| {runs[0]['host']} | {runs[0]['loss']} | {len(runs)} | " + " | ".join(cells)
                     + f" | {g_cell} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="+", default=list(DEFAULT_ROWS), choices=list(ROWS),
                        help=f"rows to run (default {' '.join(DEFAULT_ROWS)})")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_integrations")
    parser.add_argument("--data", type=Path, help="synthetic dataset dir (default: generated into OUT/data)")
    parser.add_argument("--yolo-epochs", type=int, default=6,
                        help="Ultralytics epochs of 179 iterations with RFS (default 6)")
    parser.add_argument("--tv-iters", type=int, default=1400, help="torchvision iterations of 8 images (default 1400)")
    parser.add_argument("--tv-lr", type=float, default=0.02, help="torchvision SGD learning rate (default 0.02)")
    parser.add_argument("--rfs-threshold", type=float, default=0.05,
                        help="repeat factor sampling threshold of both hosts (default 0.05)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run (default 2)")
    parser.add_argument("--signal", action="store_true", help="only print each YOLO row's classification gradient "
                        "relative to the host BCE (on --weights or a fresh model), no training")
    parser.add_argument("--weights", type=Path, help="with --signal: a YOLO checkpoint (default: a fresh model)")
    parser.add_argument("--one", choices=list(ROWS), help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out = args.out.resolve()
    if args.one:  # one run, in this process (the driver's subprocess)
        run_dir = args.out / f"{args.one}_seed{args.seed}"
        data_dir, yolo_dir = args.data, args.out / "yolo_data"
        if args.one.startswith("yolo"):
            result = run_yolo(args.one, args.seed, data_dir, yolo_dir, run_dir, args.yolo_epochs, args.threads)
        else:
            result = run_torchvision(args.one, args.seed, data_dir, run_dir, args.tv_iters, args.tv_lr,
                                     args.rfs_threshold, args.threads)
        (run_dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
        return 0

    args.out.mkdir(parents=True, exist_ok=True)
    data_dir, yolo_dir = prepare_data(args.out, args.data.resolve() if args.data else None, args.rfs_threshold)
    if args.signal:
        ratios = classification_signal(yolo_dir, args.weights, [r for r in args.rows if r.startswith("yolo_")])
        print("| YOLO row | positive |dL/dx| vs BCE | negative |dL/dx| vs BCE |\n|---|---:|---:|")
        for row, r in ratios.items():
            print(f"| {ROWS[row][1]} | {r['pos']:.3f} | {r['neg']:.3f} |")
        return 0
    rows = []
    for seed in args.seeds:  # seed-major: a stopped benchmark still has every row of the first seed
        for row in args.rows:
            result = run_row(row, seed, args, data_dir, yolo_dir)
            print(f"{row} seed {seed}: " + ", ".join(f"{k} {result[k]:.1f}" for k in KEYS)
                  + f" ({result.get('wall_s', 0):.0f} s)", flush=True)
            rows.append(result)
            table = markdown(rows, args.rows)
            summary = {"machine": platform.processor() or platform.machine(), "threads": args.threads,
                       "yolo_epochs": args.yolo_epochs, "tv_iters": args.tv_iters, "tv_lr": args.tv_lr,
                       "rfs_threshold": args.rfs_threshold, "seeds": args.seeds,
                       "runs": rows, "table": table}
            (args.out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print()
    print(table, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
