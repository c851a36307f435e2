"""Per-iteration cost of the target assignment at LVIS scale (PAA; other assigners can be added as rows).

    OMP_NUM_THREADS=1 python benchmarks/bench_assign.py [--images 2] [--side 640] [--gts 15] [--classes 1203]
        [--repeats 5] [--threads 1] [--detector]

Setting: a batch of `--images` images of `--side` px, the R-50-FPN anchor set of PAA (one anchor of scale 8,
ratio 1 per location at strides 8-128: 8,525 anchors per 640 x 640 image), `--gts` random GT boxes per image
(log-uniform sides 16-400 px, aspect 1/2-2), C = `--classes`. Predictions are random but shaped like a young model's
(logits about the 0.01 prior, box deltas N(0, 0.5)), so that the mixture fits see spread-out scores.

Rows (median ms over `--repeats` after one warm-up, the whole batch each time):
- PAA initial matching: `max_iou_assign` at IoU 0.1 per image;
- PAA anchor scores: focal loss of the P matched anchors' [P, C] logit rows + GIoU;
- PAA candidates + batched EM + separation: `paa_assign` (all GTs of the batch in one EM);
- PAA total: `PAADetector.paa_reassign` + the initial matching, i.e. what a training step adds;
- the same candidates fitted one GT at a time with sklearn's GaussianMixture (the reference code's way), for
  comparison (needs scikit-learn);
- ATSS (top-k 9, one anchor) per image, and the EFL forward + backward on the batch's [N x K, C] logits, as scale.
`--detector` also times one forward + backward of an R-50-FPN PAA detector (random init, frozen BN, 256-channel
FPN and 4-conv GN head, C = `--classes`, EFL) on the batch, once after one warm-up: the rest of the training step.
Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
import warnings
from collections.abc import Callable

import torch

from efldet.losses import EqualizedFocalLoss
from efldet.models import AnchorGenerator, DenseHead, ResNet, atss_assign, max_iou_assign
from efldet.models.assigners.paa import PAA_INIT_IOU, paa_assign
from efldet.models.necks import FPN
from efldet.models.paa import PAA_BOX_LOSS_WEIGHT, PAADetector

STRIDES = (8, 16, 32, 64, 128)


def random_targets(num_images: int, side: int, count: int, num_classes: int, gen: torch.Generator) -> list[dict]:
    """`count` boxes per image: log-uniform side 16-400 px, aspect 1/2-2, inside the image."""
    targets = []
    for _ in range(num_images):
        size = torch.exp(torch.empty(count).uniform_(math.log(16), math.log(400), generator=gen))  # [M]
        aspect = torch.exp(torch.empty(count).uniform_(-math.log(2), math.log(2), generator=gen))  # [M]
        wh = torch.stack([size * aspect.sqrt(), size / aspect.sqrt()], dim=1).clamp(max=side - 1)  # [M, 2]
        xy = torch.rand(count, 2, generator=gen) * (side - wh)  # [M, 2]
        targets.append({"boxes": torch.cat([xy, xy + wh], dim=1),
                        "labels": torch.randint(0, num_classes, (count,), generator=gen)})
    return targets


def build_paa(num_classes: int, resnet: bool) -> PAADetector:
    """PAA with the R-50-FPN layout (resnet=True) or, for the assignment rows only, a 1-conv stand-in."""
    if resnet:
        backbone = ResNet(50)
        neck = FPN(in_channels=[512, 1024, 2048], out_channels=256)
        head = DenseHead(in_channels=256, num_classes=num_classes, num_anchors=1, num_convs=4, quality="iou")
    else:  # the assignment never runs the network: any modules of the right shapes do
        backbone = torch.nn.Identity()
        neck = torch.nn.Identity()
        head = DenseHead(in_channels=8, num_classes=num_classes, num_anchors=1, num_convs=0, quality="iou")
    return PAADetector(backbone=backbone, neck=neck, head=head,
                       prior_generator=AnchorGenerator(strides=STRIDES, scales=(8.0,), ratios=(1.0,)),
                       cls_loss=EqualizedFocalLoss(num_classes=num_classes), num_classes=num_classes,
                       box_loss_weight=PAA_BOX_LOSS_WEIGHT)


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def sklearn_per_gt(initial: torch.Tensor, scores: torch.Tensor, num_per_level: list[int], topk: int) -> int:
    """The reference's way: per image and GT, top-k per level, then one sklearn fit -> number of fits."""
    import sklearn.mixture as skm

    bounds = [0]
    for count in num_per_level:
        bounds.append(bounds[-1] + count)
    fits = 0
    for i in range(initial.shape[0]):
        if not (initial[i] >= 0).any():
            continue
        for gt in range(int(initial[i].max()) + 1):
            cand = []
            for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
                idx = torch.nonzero(initial[i, lo:hi] == gt)[:, 0] + lo
                cand.append(idx[scores[i, idx].topk(min(topk, idx.numel()), largest=False).indices])
            values = scores[i, torch.cat(cand)].double().sort().values
            if values.numel() < 2:
                continue
            x = values[:, None].numpy()
            gmm = skm.GaussianMixture(2, weights_init=[0.5, 0.5], means_init=[[x.min()], [x.max()]],
                                      precisions_init=[[[1.0]], [[1.0]]])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                gmm.fit(x)
            gmm.predict(x)
            gmm.score_samples(x)
            fits += 1
    return fits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--side", type=int, default=640)
    parser.add_argument("--gts", type=int, default=15, help="GT boxes per image")
    parser.add_argument("--classes", type=int, default=1203)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--detector", action="store_true", help="also time an R-50-FPN PAA step (slow on a CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    n, c, side = args.images, args.classes, args.side

    model = build_paa(c, resnet=False)
    sizes = [(math.ceil(side / s), math.ceil(side / s)) for s in STRIDES]
    priors = model.prior_generator(sizes)  # L x [K_l, 4]
    num_per_level = [p.shape[0] for p in priors]
    k = sum(num_per_level)
    targets = random_targets(n, side, args.gts, c, gen)
    cls = torch.randn(n, k, c, generator=gen) * 1.5 - math.log(99)  # about the 0.01 prior
    box_reg = torch.randn(n, k, 4, generator=gen) * 0.5

    def initial_matching() -> torch.Tensor:
        return torch.stack([max_iou_assign(priors, t["boxes"], fg_iou=PAA_INIT_IOU, bg_iou=PAA_INIT_IOU)
                            for t in targets])

    initial = initial_matching()
    scores = model.anchor_scores(cls, box_reg, priors, initial, targets)  # [N, K]
    assigned = paa_assign(initial, scores, num_per_level)
    num_matched, num_pos = int((initial >= 0).sum()), int((assigned >= 0).sum())
    gts_with_candidates = sum(len(set(initial[i][initial[i] >= 0].tolist())) for i in range(n))

    rows: list[tuple[str, float]] = []
    rows.append(("PAA initial matching (max IoU >= 0.1)", median_ms(initial_matching, args.repeats)))
    rows.append(("PAA anchor scores (focal row + GIoU)", median_ms(
        lambda: model.anchor_scores(cls, box_reg, priors, initial, targets), args.repeats)))
    rows.append(("PAA candidates + batched EM + separation",
                 median_ms(lambda: paa_assign(initial, scores, num_per_level), args.repeats)))
    rows.append(("PAA total (initial + reassign)", median_ms(
        lambda: model.paa_reassign(cls, box_reg, priors, initial_matching(), targets), args.repeats)))
    try:
        fits = sklearn_per_gt(initial, scores, num_per_level, 9)
        rows.append((f"  for comparison: {fits} sklearn fits, one per GT",
                     median_ms(lambda: sklearn_per_gt(initial, scores, num_per_level, 9), args.repeats)))
    except ImportError:
        pass
    rows.append(("ATSS (top-k 9), for scale", median_ms(
        lambda: [atss_assign(priors, t["boxes"], topk=9) for t in targets], args.repeats)))
    efl = EqualizedFocalLoss(num_classes=c)
    labels = model.anchor_labels(assigned, targets)  # [N, K]

    def efl_step() -> None:
        logits = cls.reshape(n * k, c).clone().requires_grad_(True)
        efl(logits, labels.reshape(-1)).backward()

    rows.append((f"EFL forward + backward [{n * k}, {c}], for scale", median_ms(efl_step, args.repeats)))

    step_ms = None
    if args.detector:
        big = build_paa(c, resnet=True).train()
        images = torch.randn(n, 3, side, side, generator=gen)

        def step() -> None:
            losses = big(images, targets)
            sum(losses.values()).backward()
            big.zero_grad(set_to_none=True)

        step_ms = median_ms(step, 1)

    print(f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, threads {args.threads}; "
          f"{n} images of {side} px, K = {k} anchors per image, {args.gts} GTs per image, C = {c}")
    print(f"# initially matched anchors P = {num_matched}, GTs with candidates {gts_with_candidates}, "
          f"PAA positives {num_pos}")
    print("| step | ms / iteration |" + (" % of the training step |" if step_ms else ""))
    print("|---|---:|" + ("---:|" if step_ms else ""))
    for name, ms in rows:
        share = f" {100 * ms / step_ms:.2f} |" if step_ms else ""
        print(f"| {name} | {ms:.1f} |{share}")
    if step_ms:
        print(f"| R-50-FPN PAA training step (forward + PAA + losses + backward, EFL) | {step_ms:.0f} | 100 |")


if __name__ == "__main__":
    main()
