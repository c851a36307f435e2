"""Per-image CPU cost of YOLOX's strong augmentation (efldet.data.augment) at a given output side.

    python benchmarks/bench_augment.py [--size 640] [--images 20] [--threads 1]

The source images are decoded once and kept in memory (LVIS-like 640 x 480 photos-to-be: smooth noise with 8
boxes each), so the numbers are the augmentation alone; a real loader also decodes 4 images per Mosaic sample
(5 with MixUp). Rows: a whole training sample (Mosaic + random affine + MixUp + HSV + flip, YOLOX's defaults),
the same without MixUp, the plain resize of the last `no_aug_epochs` epochs, and the two costliest pieces alone
(`random_affine` from the 2S x 2S mosaic canvas, `adjust_hsv` with all three shifts). Time is the median over
`--images` samples after 2 warm-up samples, with torch on `--threads` threads (a DataLoader worker uses 1).
Not a test: numbers depend on the machine and on its load.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch
from torchvision import tv_tensors

from efldet.data.augment import MosaicMixUpDataset, adjust_hsv, draw_affine, random_affine


class InMemoryImages(torch.utils.data.Dataset):
    """`n` decoded uint8 images [3, 480, 640] with 8 boxes each, as LVISDataset returns them."""

    def __init__(self, n: int = 16, height: int = 480, width: int = 640, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        rng = np.random.default_rng(seed)
        self.items = []
        for i in range(n):
            coarse = torch.randint(0, 256, (1, 3, height // 16, width // 16), generator=gen).float()
            image = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear")[0]
            xy = rng.uniform(0, [width - 80, height - 80], size=(8, 2))
            wh = rng.uniform(16, 80, size=(8, 2))
            boxes = torch.tensor(np.concatenate([xy, xy + wh], axis=1), dtype=torch.float32)
            self.items.append((image.round().to(torch.uint8), boxes, torch.arange(8) % 5, i))

    def __len__(self) -> int:
        return len(self.items)

    def image_labels(self):
        offsets = np.arange(len(self) + 1, dtype=np.int64)  # one (dummy) label per image, for the MixUp pool
        return offsets, np.zeros(len(self), dtype=np.int64)

    def __getitem__(self, i):
        image, boxes, labels, image_id = self.items[i]
        target = {"boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=tuple(image.shape[-2:])),
                  "labels": labels, "image_id": image_id, "orig_size": tuple(image.shape[-2:])}
        return tv_tensors.Image(image), target


def _median_ms(fn, count: int) -> float:
    for i in range(2):
        fn(i)
    times = []
    for i in range(count):
        start = time.perf_counter()
        fn(i + 2)
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=640, help="output side S in pixels (YOLOX: 640)")
    parser.add_argument("--images", type=int, default=20, help="timed samples per row")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = InMemoryImages()
    size = args.size
    full = MosaicMixUpDataset(base, output_size=size, seed=0)
    no_mixup = MosaicMixUpDataset(base, output_size=size, mixup_prob=0.0, seed=0)
    plain = MosaicMixUpDataset(base, output_size=size, enabled=False, seed=0)

    canvas = torch.randint(0, 256, (3, 2 * size, 2 * size), dtype=torch.uint8)
    canvas_boxes = tv_tensors.BoundingBoxes(base.items[0][1] * 2, format="XYXY", canvas_size=(2 * size, 2 * size))

    def affine(i: int) -> None:
        params = draw_affine(np.random.default_rng(i), out_size=size, scale=(0.1, 2.0))
        random_affine(canvas, canvas_boxes, base.items[0][2], params, out_size=size)

    image = full[0][0]
    rows = [
        ("Mosaic + affine + MixUp + HSV + flip", lambda i: full[i % len(base)]),
        ("Mosaic + affine + HSV + flip (no MixUp)", lambda i: no_mixup[i % len(base)]),
        ("plain resize + HSV + flip (no_aug_epochs)", lambda i: plain[i % len(base)]),
        ("random_affine alone (2S canvas -> S)", affine),
        ("adjust_hsv alone (hue, sat, value shifts)", lambda i: adjust_hsv(image, 3, 20, -20)),
    ]
    print(f"S = {size} px, {args.images} samples per row, {args.threads} thread(s), torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}")
    print(f"{'what':44s} {'ms / image':>10s}")
    for name, fn in rows:
        print(f"{name:44s} {_median_ms(fn, args.images):10.1f}")


if __name__ == "__main__":
    main()
