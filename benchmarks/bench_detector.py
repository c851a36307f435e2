"""Per-iteration time of a dense detector, split into its stages.

    python benchmarks/bench_detector.py [--models r50 tiny] [--loss efl] [--iters 3] [--threads 2]

Stages of one training iteration (batch of 1 image, as the paper's 1 image per GPU): backbone + neck forward,
head forward, assignment (priors + ATSS), losses (classification + GIoU + IoU branch, forward), backward of
the summed losses; plus post-processing (decode, per-level top-k, NMS, top 300) of the same image (eval).
Models: "r50" = the improved baseline (ATSS-IoU, ResNet-50-FPN, 2 anchors, C = 1203) at 640 x 640; "tiny" =
our small CPU backbone with a 64-channel FPN and 2-conv head, C = 40, at 128 x 128 (the demo's scale).
Times are medians over `--iters` iterations after one warm-up; the overhead target is assignment + losses +
post-processing < 15 % of an R-50 training iteration (forward + assignment + losses + backward).
Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from efldet.models import BackboneConfig, DetectorConfig, HeadConfig, LossConfig, NeckConfig, build_detector

STAGES = ["backbone+neck", "head", "assignment", "losses", "backward", "post-processing"]
TRAIN_STAGES = STAGES[:5]


def model_setup(kind: str, loss: str) -> tuple[DetectorConfig, int]:
    """(config, input side) of a benchmark model."""
    if kind == "r50":
        return DetectorConfig(name="atss_iou", num_classes=1203, loss=LossConfig(name=loss)), 640
    cfg = DetectorConfig(
        name="atss_iou", num_classes=40, backbone=BackboneConfig(name="tiny"), neck=NeckConfig(channels=64),
        head=HeadConfig(num_convs=2), loss=LossConfig(name=loss),
    )
    return cfg, 128


def random_targets(side: int, num_classes: int, count: int, generator: torch.Generator) -> list[dict]:
    """One image's `count` random boxes of side 5-60 % of the image (LVIS has ~12 per image on average)."""
    wh = (torch.rand(count, 2, generator=generator) * 0.55 + 0.05) * side
    xy = torch.rand(count, 2, generator=generator) * (side - wh)
    boxes = torch.cat([xy, xy + wh], dim=1)
    labels = torch.randint(0, num_classes, (count,), generator=generator)
    return [{"boxes": boxes, "labels": labels}]


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
    matched = model.assign(priors, targets)
    times["assignment"] = time.perf_counter() - start
    start = time.perf_counter()
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
        dets = model.postprocess(cls, box_reg, quality, priors, [tuple(images.shape[-2:])])
        times["post-processing"] = time.perf_counter() - start
    assert dets[0]["boxes"].shape[0] <= 300
    return times


def run(kind: str, loss: str, iters: int) -> dict[str, float]:
    torch.manual_seed(0)
    cfg, side = model_setup(kind, loss)
    model = build_detector(cfg)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(1, 3, side, side, generator=generator)
    targets = random_targets(side, cfg.num_classes, 12, generator)
    runs = [time_iteration(model, images, targets) for _ in range(iters + 1)][1:]
    return {stage: statistics.median(r[stage] for r in runs) for stage in STAGES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["r50", "tiny"], choices=["r50", "tiny"])
    parser.add_argument("--loss", default="efl", help="classification loss name (default efl)")
    parser.add_argument("--iters", type=int, default=3, help="measured iterations after one warm-up")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {kind: run(kind, args.loss, args.iters) for kind in args.models}

    labels = {"r50": "R-50-FPN 640x640, C=1203", "tiny": "tiny 128x128, C=40"}
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} threads, "
          f"loss {args.loss}, batch 1, 12 GT boxes, median of {args.iters} iterations")
    header = "| stage | " + " | ".join(f"{labels[k]} ms | % of train iter" for k in results) + " |"
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


if __name__ == "__main__":
    main()
