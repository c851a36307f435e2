"""A synthetic long-tailed detection benchmark: real PNG files and LVIS-format json, made in seconds.

Objects are drawn shapes. A category is a combination of attributes, shape x colour x texture (8 x 8 x 3 =
192 possible categories), so categories share features and can be confused with each other, as in real
long-tailed data. The number of training images of each category follows the shape of the real LVIS v1
distribution (the 1,203 `train_image_count`s shipped in `lvis_v1_categories.json`), sampled at K quantiles:
counts up to 100 are kept as they are, so that the LVIS groups keep their share of categories (rare 1-10
training images, common 11-100), and the frequent range (101 .. LVIS's maximum) is mapped log-linearly onto
(101 .. `max_image_fraction` x N). The val set holds every category in at least `min_val_images` images, so
that APr can be measured. Annotations are exhaustive: each image lists every absent category in
`neg_category_ids` (LVIS's federated fields), so a false positive of any category counts.

Output of `generate(out_dir, ...)` (= `efldet data synth --out DIR`): `DIR/train.json`, `DIR/val.json` and
`DIR/images/{train,val}_NNNNNN.png`; `file_name`s are relative to DIR, so DIR is the image root.
Deterministic for a seed: the same arguments write byte-identical files.

Repeat factor sampling on N synthetic images: LVIS's t = 0.001 on its 100,170 images repeats the categories
in fewer than about 100 training images; the same effect here needs t = 100 / N (0.05 for N = 2,000).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from efldet.data.categories import frequency_groups, packaged_lvis_categories
from efldet.errors import UserInputError

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring", "hexagon", "star")
COLOURS = {
    "red": (220, 45, 45),
    "green": (45, 175, 70),
    "blue": (55, 95, 235),
    "yellow": (235, 215, 50),
    "magenta": (215, 65, 205),
    "cyan": (50, 205, 215),
    "orange": (250, 140, 35),
    "white": (240, 240, 240),
}
TEXTURES = ("solid", "striped", "dotted")
MAX_CLASSES = len(SHAPES) * len(COLOURS) * len(TEXTURES)

# Defaults sized for CPU training (DESIGN.md: small images, clear objects).
DEFAULT_CLASSES = 40
DEFAULT_TRAIN_IMAGES = 2000
DEFAULT_VAL_IMAGES = 400
DEFAULT_IMAGE_SIZE = 128


@dataclass(frozen=True)
class SynthCategory:
    id: int  # json category id (1-based)
    shape: str
    colour: str
    texture: str

    @property
    def name(self) -> str:
        return f"{self.colour}_{self.texture}_{self.shape}"


def synthetic_categories(num_classes: int) -> list[SynthCategory]:
    """The first `num_classes` attribute combinations in a fixed shuffled order (the same for every seed),
    so that any K categories spread over all shapes, colours and textures."""
    if not 1 <= num_classes <= MAX_CLASSES:
        raise UserInputError(
            f"--classes must be between 1 and {MAX_CLASSES} (shapes x colours x textures); got {num_classes}"
        )
    combos = [(s, c, t) for s in SHAPES for c in COLOURS for t in TEXTURES]
    order = np.random.default_rng(20220601).permutation(len(combos))
    return [SynthCategory(k + 1, *combos[i]) for k, i in enumerate(order[:num_classes])]


def lvis_shaped_image_counts(
    num_classes: int, num_images: int, max_image_fraction: float = 0.3
) -> np.ndarray:
    """int64 [K], descending: training images per category, the LVIS v1 curve at K quantiles (module doc)."""
    lvis = np.sort([c["train_image_count"] for c in packaged_lvis_categories()])[::-1].astype(np.float64)
    quantiles = (np.arange(num_classes) + 0.5) / num_classes
    counts = lvis[(quantiles * len(lvis)).astype(np.int64)]
    top = max_image_fraction * num_images
    frequent = counts > 100
    if top > 101:  # log-linear map of (100, LVIS max] onto (100, top]
        t = np.log(counts[frequent] / 100.0) / np.log(lvis[0] / 100.0)
        counts[frequent] = 100.0 * np.exp(t * np.log(top / 100.0))
    counts = np.clip(np.round(counts), 1, max(1, int(top)))
    return counts.astype(np.int64)


def _assign(
    counts: np.ndarray, num_images: int, rng: np.random.Generator, max_per_image: int
) -> list[list[int]]:
    """Categories of each image such that category k is in exactly counts[k] images; categories are spread
    over the least loaded images first (with random ties) so no image gets crowded."""
    if counts.sum() > num_images * max_per_image:
        raise UserInputError(
            f"{int(counts.sum())} category-image pairs do not fit in {num_images} images with at most "
            f"{max_per_image} objects each: use more --train-images / --val-images, fewer --classes or a "
            "larger --max-objects"
        )
    load = np.zeros(num_images)
    per_image: list[list[int]] = [[] for _ in range(num_images)]
    for k in np.argsort(-counts, kind="stable"):
        c = int(min(counts[k], num_images))
        key = load + rng.random(num_images) * 1.5  # prefer light images, with some spread
        chosen = np.argpartition(key, c - 1)[:c] if c < num_images else np.arange(num_images)
        load[chosen] += 1
        for i in chosen:
            per_image[i].append(int(k))
    return per_image


# ------------------------------------------------------------------------------------------------ drawing
def _shape_mask(shape: str, h: int, w: int) -> np.ndarray:
    """bool [h, w]: the shape filling an h x w box (u, v in [-1, 1])."""
    v, u = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    au, av = np.abs(u), np.abs(v)
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return (au <= 0.9) & (av <= 0.9)
    if shape == "triangle":
        return au <= (v + 1.0) / 2.0 + 0.02
    if shape == "diamond":
        return au + av <= 1.0
    if shape == "cross":
        return (au <= 0.32) | (av <= 0.32)
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.3)
    if shape == "hexagon":
        return (av <= 0.87) & (0.5 * av + 0.87 * au <= 0.87)
    if shape == "star":
        r = np.hypot(u, v)
        return r <= 0.55 + 0.45 * np.cos(5 * np.arctan2(v, u))
    raise ValueError(shape)


def _texture(texture: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """float [h, w] brightness multiplier: 1 solid, dark bands for stripes, dark dots for dotted."""
    y, x = np.mgrid[0:h, 0:w]
    if texture == "solid":
        return np.ones((h, w))
    period = int(rng.integers(5, 8))
    if texture == "striped":
        return np.where(((x + y) // (period // 2 + 1)) % 2 == 0, 1.0, 0.3)
    if texture == "dotted":
        cy, cx = (y % period) - period / 2, (x % period) - period / 2
        return np.where(cy * cy + cx * cx <= (period / 3.2) ** 2, 0.25, 1.0)
    raise ValueError(texture)


def _box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with [B, 4] boxes (numpy, for placement only)."""
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area + areas - inter)


def render_image(
    objects: list[SynthCategory], size: int, rng: np.random.Generator, max_iou: float = 0.15
) -> tuple[np.ndarray, list[tuple[int, list[float], int]]]:
    """Draw `objects` on a size x size background; returns uint8 [size, size, 3] and one
    (category id, [x, y, w, h], area) per drawn object, the box tight around the drawn pixels."""
    base = rng.integers(30, 110) + rng.integers(-15, 16, size=3)
    canvas = np.empty((size, size, 3), dtype=np.float32)
    canvas[:] = base
    canvas += rng.normal(0.0, 6.0, size=(size, size, 3))
    placed: list[np.ndarray] = []
    out = []
    for cat in objects:
        best = None
        for _ in range(40):  # a place with little overlap; the least overlapping try otherwise
            h = int(np.clip(round(size * rng.uniform(0.13, 0.34)), 6, size))
            w = int(np.clip(round(h * rng.uniform(0.75, 1.33)), 6, size))
            y0, x0 = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
            box = np.array([x0, y0, x0 + w, y0 + h], dtype=np.float64)
            iou = _box_iou(box, np.stack(placed)).max() if placed else 0.0
            if best is None or iou < best[0]:
                best = (iou, y0, x0, h, w)
            if iou <= max_iou:
                break
        _, y0, x0, h, w = best
        mask = _shape_mask(cat.shape, h, w)
        colour = np.clip(np.array(COLOURS[cat.colour]) + rng.integers(-18, 19, size=3), 0, 255)
        shade = _texture(cat.texture, h, w, rng)[..., None] * colour  # [h, w, 3]
        region = canvas[y0 : y0 + h, x0 : x0 + w]
        region[mask] = shade[mask]
        ys, xs = np.nonzero(mask)
        bx0, by0, bx1, by1 = x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1
        placed.append(np.array([bx0, by0, bx1, by1], dtype=np.float64))
        out.append((cat.id, [float(bx0), float(by0), float(bx1 - bx0), float(by1 - by0)], int(mask.sum())))
    return np.clip(canvas, 0, 255).astype(np.uint8), out


# ------------------------------------------------------------------------------------------------ writing
def _write_split(
    out_dir: str,
    split: str,
    cats: list[SynthCategory],
    per_image: list[list[int]],
    size: int,
    seed: int,
    max_objects: int,
    split_id: int,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    images, annotations = [], []
    all_ids = [c.id for c in cats]
    for i, cat_indices in enumerate(per_image):
        rng = np.random.default_rng([seed, split_id, i])  # per image: independent of the other images
        # One instance of each assigned category first (so image counts are exact), then extra instances
        # (1 more with p 0.3, 2 more with p 0.09, ...) while the image has room.
        objects = [cats[k] for k in cat_indices]
        for k in cat_indices:
            while len(objects) < max_objects and rng.random() < 0.3:
                objects.append(cats[k])
        order = rng.permutation(len(objects))
        pixels, drawn = render_image([objects[j] for j in order], size, rng)
        image_id = i + 1
        file_name = f"images/{split}_{i:06d}.png"
        Image.fromarray(pixels).save(os.path.join(out_dir, file_name), compress_level=1)
        present = sorted({c for c, _, _ in drawn})
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "height": size,
                "width": size,
                "neg_category_ids": [c for c in all_ids if c not in present],
                "not_exhaustive_category_ids": [],
            }
        )
        for cat_id, (x, y, w, h), area in drawn:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat_id,
                    "bbox": [x, y, w, h],
                    "area": area,
                    "iscrowd": 0,
                    "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
                }
            )
    return images, annotations


def generate(
    out_dir: str,
    *,
    num_classes: int = DEFAULT_CLASSES,
    train_images: int = DEFAULT_TRAIN_IMAGES,
    val_images: int = DEFAULT_VAL_IMAGES,
    image_size: int = DEFAULT_IMAGE_SIZE,
    seed: int = 0,
    max_objects: int = 6,
    min_val_images: int = 5,
    max_image_fraction: float = 0.3,
) -> dict[str, Any]:
    """Write the benchmark into `out_dir` (module doc); returns a summary (counts per split and group)."""
    if train_images < 1 or val_images < 1:
        raise UserInputError(
            f"--train-images and --val-images must be >= 1; got {train_images}, {val_images}"
        )
    if image_size < 32:
        raise UserInputError(f"--image-size must be >= 32 pixels; got {image_size}")
    if max_objects < 1:
        raise UserInputError(f"max_objects must be >= 1; got {max_objects}")
    start = time.perf_counter()
    cats = synthetic_categories(num_classes)
    rng = np.random.default_rng([seed, 0])
    # Which category gets which count: a seeded permutation of the LVIS-shaped curve.
    counts = lvis_shaped_image_counts(num_classes, train_images, max_image_fraction)[
        rng.permutation(num_classes)
    ]
    val_counts = np.clip(
        np.round(counts * val_images / train_images),
        min(min_val_images, val_images),
        max(min(min_val_images, val_images), int(max_image_fraction * val_images)),
    )
    train_assign = _assign(counts, train_images, rng, max_objects)
    val_assign = _assign(val_counts.astype(np.int64), val_images, rng, max_objects)

    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    train_imgs, train_anns = _write_split(
        out_dir, "train", cats, train_assign, image_size, seed, max_objects, 1
    )
    val_imgs, val_anns = _write_split(out_dir, "val", cats, val_assign, image_size, seed, max_objects, 2)

    # Category metadata as LVIS has it, from the training split (also in val.json, as in LVIS).
    image_count = np.zeros(num_classes + 1, np.int64)
    instance_count = np.zeros(num_classes + 1, np.int64)
    for assigned in train_assign:
        image_count[[cats[j].id for j in assigned]] += 1
    for ann in train_anns:
        instance_count[ann["category_id"]] += 1
    groups = frequency_groups(image_count[1:])
    categories = [
        {
            "id": c.id,
            "name": c.name,
            "synset": f"{c.name}.n.01",
            "synonyms": [c.name],
            "def": f"a {c.texture} {c.colour} {c.shape}",
            "frequency": str(groups[k]),
            "image_count": int(image_count[c.id]),
            "instance_count": int(instance_count[c.id]),
            "shape": c.shape,
            "colour": c.colour,
            "texture": c.texture,
        }
        for k, c in enumerate(cats)
    ]
    info = {
        "description": "efldet synthetic long-tailed detection benchmark",
        "generator": {
            "classes": num_classes,
            "train_images": train_images,
            "val_images": val_images,
            "image_size": image_size,
            "seed": seed,
            "max_objects": max_objects,
        },
    }
    for split, imgs, anns in (("train", train_imgs, train_anns), ("val", val_imgs, val_anns)):
        path = os.path.join(out_dir, f"{split}.json")
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump({"info": info, "images": imgs, "annotations": anns, "categories": categories}, f)
        os.replace(path + ".tmp", path)
    val_instances = np.bincount([a["category_id"] for a in val_anns], minlength=num_classes + 1)[1:]
    return {
        "out_dir": out_dir,
        "train": {"images": train_images, "annotations": len(train_anns)},
        "val": {"images": val_images, "annotations": len(val_anns)},
        "groups": {g: int((groups == g).sum()) for g in ("r", "c", "f")},
        "min_val_instances": int(val_instances.min()),
        "seconds": time.perf_counter() - start,
    }
