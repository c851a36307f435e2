"""Time of the SimOTA assignment per image at YOLOX's LVIS scale.

    python benchmarks/bench_simota.py [--gts 15] [--classes 1203] [--side 640] [--iters 20] [--threads 1] [--direct]

One 640 x 640 image, strides 8 / 16 / 32 (K = 80^2 + 40^2 + 20^2 = 8,400 points), C = 1,203 classes, ~15 random
GT boxes of side 5-60 % of the image (LVIS has ~12 per image on average); predictions are random (logits
around the 0.01 prior, boxes around each point). Rows:
- scores: sqrt(sigmoid(cls) x sigmoid(obj)) of every point [K, C], what `YOLOXDetector.assign` feeds SimOTA;
- simota_assign: candidates, cost and dynamic-k matching (`efldet.models.assigners.simota`), from given
  probabilities, or from the logits through `YOLOXScores` (what the detector does: the probabilities of the
  candidates only, so the "scores" row is not spent);
- direct cost (--direct): the cost written as YOLOX does, a BCE over [M, Q, C], for comparison only.
Medians over `--iters` runs after one warm-up. Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from efldet.models.assigners.simota import YOLOXScores, simota_assign, simota_candidates


def scene(side: int, num_classes: int, num_gt: int, seed: int = 0):
    """Points, strides, raw logits (cls [K, C], obj [K]), predicted boxes [K, 4], GT boxes and labels."""
    gen = torch.Generator().manual_seed(seed)
    points, strides = [], []
    for stride in (8, 16, 32):
        n = side // stride
        centers = (torch.arange(n, dtype=torch.float32) + 0.5) * stride
        yy, xx = torch.meshgrid(centers, centers, indexing="ij")  # [n, n] each
        points.append(torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1))  # [n*n, 2]
        strides.append(torch.full((n * n,), float(stride)))
    points, strides = torch.cat(points), torch.cat(strides)  # [K, 2], [K]
    k = points.shape[0]
    cls = torch.randn(k, num_classes, generator=gen) - 4.6  # around the 0.01 prior
    obj = torch.randn(k, generator=gen) - 2.0
    half = 2.0 * strides[:, None] * torch.exp(torch.randn(k, 2, generator=gen) * 0.5)  # [K, 2]
    pred = torch.cat([points - half, points + half], dim=1)  # [K, 4]
    wh = (torch.rand(num_gt, 2, generator=gen) * 0.55 + 0.05) * side
    xy = torch.rand(num_gt, 2, generator=gen) * (side - wh)
    gts = torch.cat([xy, xy + wh], dim=1)  # [M, 4]
    labels = torch.randint(0, num_classes, (num_gt,), generator=gen)
    return points, strides, cls, obj, pred, gts, labels


def direct_cost(points, strides, pred, probs, gts, labels):
    """The cost as YOLOX writes it: BCE over the expanded [M, Q, C] probabilities and one-hot targets."""
    in_box, in_center = simota_candidates(points, strides, gts)  # [M, K] each
    cand = (in_box | in_center).any(0).nonzero().squeeze(1)  # [Q]
    m, q = gts.shape[0], cand.numel()
    ious = box_iou(gts, pred[cand])  # [M, Q]
    one_hot = F.one_hot(labels, probs.shape[1]).float()[:, None, :].expand(m, q, -1)  # [M, Q, C]
    bce = F.binary_cross_entropy(probs[cand][None].expand(m, -1, -1), one_hot, reduction="none").sum(-1)  # [M, Q]
    both = in_box[:, cand] & in_center[:, cand]
    return bce + 3.0 * -torch.log(ious + 1e-8) + 1e5 * (~both).float()


def median_time(fn, iters: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gts", type=int, default=15)
    parser.add_argument("--classes", type=int, default=1203)
    parser.add_argument("--side", type=int, default=640)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--direct", action="store_true", help="also time the [M, Q, C] cost of YOLOX's code")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    points, strides, cls, obj, pred, gts, labels = scene(args.side, args.classes, args.gts)
    probs = (torch.sigmoid(cls) * torch.sigmoid(obj)[:, None]).sqrt_()  # [K, C]
    assigned, _ = simota_assign(points, strides, pred, probs, gts, labels)
    in_box, in_center = simota_candidates(points, strides, gts)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} thread(s); "
          f"K = {points.shape[0]} points, C = {args.classes}, M = {args.gts} GTs, "
          f"Q = {int((in_box | in_center).any(0).sum())} candidates, {int((assigned >= 0).sum())} positives")
    rows = [
        ("scores sqrt(sig(cls) sig(obj)) [K, C]",
         median_time(lambda: (torch.sigmoid(cls) * torch.sigmoid(obj)[:, None]).sqrt_(), args.iters)),
        ("simota_assign (probabilities given)",
         median_time(lambda: simota_assign(points, strides, pred, probs, gts, labels), args.iters)),
        ("simota_assign (YOLOXScores from logits)",
         median_time(lambda: simota_assign(points, strides, pred, YOLOXScores(cls, obj), gts, labels), args.iters)),
    ]
    if args.direct:
        rows.append(("direct [M, Q, C] cost (YOLOX-style)",
                     median_time(lambda: direct_cost(points, strides, pred, probs, gts, labels), args.iters)))
    print(f"| {'stage':40s} | ms per image (median of {args.iters}) |")
    print(f"| {'-' * 40} | {'-' * 31} |")
    for name, seconds in rows:
        print(f"| {name:40s} | {seconds * 1e3:31.2f} |")


if __name__ == "__main__":
    main()
