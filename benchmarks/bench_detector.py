"""Per-iteration time of a dense detector, split into its stages, with training throughput and peak memory.

    python benchmarks/bench_detector.py [--models r50 tiny paa_r50 yolox_s yolox_s_ip] [--loss efl] [--batch 1]
                                        [--iters 3] [--threads 2]

Stages of one training iteration: backbone + neck forward, head forward, assignment (priors + ATSS / max-IoU +
PAA's GMM / SimOTA), losses (forward), backward of the summed losses; plus post-processing (decode, per-level
top-k, NMS, top 300) of the same images (eval). Models:
  "r50"        the improved baseline (ATSS-IoU, ResNet-50-FPN, 2 anchors, C = 1203) at 640 x 640, `--loss`
  "tiny"       our small CPU backbone with a 64-channel FPN and 2-conv head, C = 40, at 128 x 128 (the demo's scale)
  "paa_r50"    PAA, ResNet-50-FPN, 1 anchor, C = 1203, 640 x 640, `--loss` (assignment = max-IoU + GMM)
  "yolox_s"    the original YOLOX-S (SimOTA, objectness, BCE with IoU targets, IoU + L1 loss), C = 1203, 640 x 640
  "yolox_s_ip" YOLOX-IP-S (ATSS on anchors {6, 8}, IoU branch, IoU + L1 loss), C = 1203, 640 x 640, `--loss` (s = 4)
Every model runs in its own process (peak RSS is per model: resident memory after the run, in GiB). Times are
medians over `--iters` iterations after one warm-up; images/s = batch / training iteration. The overhead target
is assignment + losses + post-processing < 15 % of an R-50 training iteration. Not a test: numbers depend on the
machine and its load.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

from efldet.models import (
    BackboneConfig,
    DetectorConfig,
    HeadConfig,
    LossConfig,
    NeckConfig,
    YOLOXDetector,
    build_detector,
)

STAGES = ["backbone+neck", "head", "assignment", "losses", "backward", "post-processing"]
TRAIN_STAGES = STAGES[:5]


def model_setup(kind: str, loss: str) -> tuple[DetectorConfig, int]:
    """(config, input side) of a benchmark model."""
    if kind == "r50":
        return DetectorConfig(name="atss_iou", num_classes=1203, loss=LossConfig(name=loss)), 640
    if kind == "paa_r50":
        return DetectorConfig(name="paa", num_classes=1203, loss=LossConfig(name=loss, box_weight=1.3)), 640
    if kind == "yolox_s":
        return DetectorConfig(name="yolox", num_classes=1203, backbone=BackboneConfig(name="cspdarknet", size="s"),
                              head=HeadConfig(prior_prob=0.01), loss=LossConfig(name="bce_iou")), 640
    if kind == "yolox_s_ip":
        return DetectorConfig(name="yolox_ip", num_classes=1203, backbone=BackboneConfig(name="cspdarknet", size="s"),
                              loss=LossConfig(name=loss, scale_factor=4.0, box_weight=5.0)), 640
    cfg = DetectorConfig(
        name="atss_iou", num_classes=40, backbone=BackboneConfig(name="tiny"), neck=NeckConfig(channels=64),
        head=HeadConfig(num_convs=2), loss=LossConfig(name=loss),
    )
    return cfg, 128


def random_targets(side: int, num_classes: int, count: int, generator: torch.Generator) -> dict:
    """One image's `count` random boxes of side 5-60 % of the image (LVIS has ~12 per image on average)."""
    wh = (torch.rand(count, 2, generator=generator) * 0.55 + 0.05) * side
    xy = torch.rand(count, 2, generator=generator) * (side - wh)
    boxes = torch.cat([xy, xy + wh], dim=1)
    labels = torch.randint(0, num_classes, (count,), generator=generator)
    return {"boxes": boxes, "labels": labels}


def time_iteration(model, images: torch.Tensor, targets: list[dict]) -> dict[str, float]:
    """Seconds spent in every stage of one training iteration + one post-processing."""
    times = {}
    model.train()
    start = time.perf_counter()
    feats = model.features(images)
    times["backbone+neck"] = time.perf_counter() - start
    start = time.perf_counter()
    cls, box_reg, quality = model.predict_raw(feats)
    times["head"] = time.perf_counter() - start
    start = time.perf_counter()
    priors = model.priors(feats)
    matched = model.assign(priors, targets, cls, box_reg, quality)  # SimOTA and PAA use the predictions
    if isinstance(model, YOLOXDetector):
        matched, matched_iou = matched
    times["assignment"] = time.perf_counter() - start
    start = time.perf_counter()
    if isinstance(model, YOLOXDetector):
        losses = model.compute_losses(cls, box_reg, quality, priors, matched, matched_iou, targets)
    else:
        losses = model.compute_losses(cls, box_reg, quality, priors, matched, targets)
    total = sum(losses.values())
    times["losses"] = time.perf_counter() - start
    start = time.perf_counter()
    total.backward()
    times["backward"] = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        cls, box_reg = cls.detach(), box_reg.detach()
        quality = quality.detach() if quality is not None else None
        start = time.perf_counter()
        dets = model.postprocess(cls, box_reg, quality, priors, [tuple(images.shape[-2:])] * images.shape[0])
        times["post-processing"] = time.perf_counter() - start
    assert dets[0]["boxes"].shape[0] <= 300
    return times


def run(kind: str, loss: str, iters: int, batch: int) -> dict[str, float]:
    torch.manual_seed(0)
    cfg, side = model_setup(kind, loss)
    model = build_detector(cfg)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, side, side, generator=generator)
    targets = [random_targets(side, cfg.num_classes, 12, generator) for _ in range(batch)]
    runs = [time_iteration(model, images, targets) for _ in range(iters + 1)][1:]
    result = {stage: statistics.median(r[stage] for r in runs) for stage in STAGES}
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB
    result["params"] = sum(p.numel() for p in model.parameters())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["r50", "tiny"], choices=list(LABELS))
    parser.add_argument("--loss", default="efl", help="classification loss name (default efl)")
    parser.add_argument("--batch", type=int, default=1, help="images per iteration (default 1)")
    parser.add_argument("--iters", type=int, default=3, help="measured iterations after one warm-up")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one model, print json
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(run(args.one, args.loss, args.iters, args.batch)))
        return
    results = {}
    for kind in args.models:  # one process per model: clean peak memory
        cmd = [sys.executable, __file__, "--one", kind, "--loss", args.loss, "--batch", str(args.batch),
               "--iters", str(args.iters), "--threads", str(args.threads)]
        results[kind] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)

    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} threads, "
          f"loss {args.loss} (yolox_s: BCE with IoU targets), batch {args.batch}, 12 GT boxes per image, median of "
          f"{args.iters} iterations")
    header = "| stage | " + " | ".join(f"{LABELS[k]} ms | % of train iter" for k in results) + " |"
    print(header)
    print("|" + "---|" * (1 + 2 * len(results)))
    train_total = {k: sum(r[s] for s in TRAIN_STAGES) for k, r in results.items()}
    for stage in STAGES:
        cells = [f"{r[stage] * 1e3:.1f} | {100 * r[stage] / train_total[k]:.1f}" for k, r in results.items()]
        print(f"| {stage} | " + " | ".join(cells) + " |")
    cells = [f"{train_total[k] * 1e3:.1f} | 100.0" for k in results]
    print("| training iteration (first five) | " + " | ".join(cells) + " |")
    overhead = {k: sum(r[s] for s in ("assignment", "losses", "post-processing")) for k, r in results.items()}
    cells = [f"{overhead[k] * 1e3:.1f} | {100 * overhead[k] / train_total[k]:.1f}" for k in results]
    print("| assignment + losses + post-processing | " + " | ".join(cells) + " |")
    cells = [f"{args.batch / train_total[k]:.2f} | " for k in results]
    print("| training images / s | " + " | ".join(cells) + " |")
    cells = [f"{r['peak_rss_gib']:.2f} | " for r in results.values()]
    print("| peak resident memory (GiB) | " + " | ".join(cells) + " |")
    cells = [f"{r['params'] / 1e6:.2f} M | " for r in results.values()]
    print("| parameters | " + " | ".join(cells) + " |")


LABELS = {"r50": "R-50-FPN 640x640, C=1203", "tiny": "tiny 128x128, C=40", "paa_r50": "PAA R-50-FPN 640, C=1203",
          "yolox_s": "YOLOX-S 640, C=1203", "yolox_s_ip": "YOLOX-IP-S 640, C=1203"}


if __name__ == "__main__":
    main()
