"""Export a COCO/LVIS-format detection dataset to the Ultralytics YOLO layout (`efldet data export-yolo`).

Shape letters: `N` images of a split, `M` boxes of one image.

Input: a directory holding `train.json` and `val.json` whose `file_name`s are relative to that directory (the
layout `efldet data synth --out DIR` writes), or one json file (exported as the `train` split, and used as `val`
too). Output under `out_dir`:

    images/{train,val}/<file>    the image files, linked (hard link, else symbolic link, else copy), not re-encoded
    labels/{train,val}/<file>.txt one line per box: `class cx cy w h`, centre and size normalised by the image's
                                  width / height from the json, boxes clipped to the image
    dataset.yaml                  `path` (absolute out_dir), `train`, `val`, `names` ({index: name})
    train_rfs.txt                 only with `rfs_threshold`: the training images as `./images/train/<file>` lines,
                                  image i written ceil(r_i) times (repeat factor sampling, the paper's rounding),
                                  and dataset.yaml's `train` names this list instead of images/train

Ultralytics has no repeat factor sampling; a text file of image paths is one of the documented forms of `train:`,
and its dataset keeps repeated lines (tested), so every epoch sees image i ceil(r_i) times, in shuffled order, with
r_i = max(1, max over the image's classes c of (t / f_c) ^ power), f_c the fraction of training images with c.

The class index is efldet's contiguous label: categories sorted by json id, 0..C-1 (`LVISIndex.cat_ids[label]` is
the json id, so detections map back to the original ids). Crowd boxes are left out (YOLO labels have no crowd
flag); an image without boxes gets an empty label file (a background image for Ultralytics). Files are named by
their base name; when two images of a split share one, their json-relative paths with `/` replaced by `__` are used.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from efldet.errors import UserInputError

if TYPE_CHECKING:
    from efldet.data.lvis import LVISIndex

SPLITS = ("train", "val")
LINK_MODES = ("auto", "hardlink", "symlink", "copy")


@dataclass(frozen=True)
class YoloExport:
    """What `export_yolo` wrote: the dataset yaml, and per split the number of images and of box lines."""

    yaml_path: Path
    images: dict[str, int]
    boxes: dict[str, int]
    names: list[str]
    link_modes: dict[str, str]  # split -> how the images were placed (hardlink / symlink / copy)
    train_list: Path | None = None  # train_rfs.txt (with rfs_threshold), else None
    train_epoch_images: int = 0  # lines of train_rfs.txt: images per epoch after repeat factor sampling


def yolo_label_lines(boxes_xyxy: np.ndarray, labels: np.ndarray, width: float, height: float) -> list[str]:
    """One `class cx cy w h` line per box (normalised to [0, 1], 6 decimals).

    boxes_xyxy float [M, 4] absolute pixels; labels int [M]. Boxes are clipped to the width x height image;
    a box with no area left after clipping is dropped.
    """
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)  # [M, 4]
    x0, x1 = np.clip(boxes[:, 0], 0, width), np.clip(boxes[:, 2], 0, width)
    y0, y1 = np.clip(boxes[:, 1], 0, height), np.clip(boxes[:, 3], 0, height)
    keep = (x1 > x0) & (y1 > y0)
    cx, cy = (x0 + x1) / (2.0 * width), (y0 + y1) / (2.0 * height)
    w, h = (x1 - x0) / width, (y1 - y0) / height
    return [f"{int(c)} {a:.6f} {b:.6f} {d:.6f} {e:.6f}"
            for c, a, b, d, e in zip(np.asarray(labels)[keep], cx[keep], cy[keep], w[keep], h[keep], strict=True)]


def _place(src: str, dst: Path, mode: str) -> str:
    """Put `src` at `dst` by `mode`; 'auto' tries a hard link, then a symbolic link, then a copy. Returns the way
    used."""
    tries = ("hardlink", "symlink", "copy") if mode == "auto" else (mode,)
    for way in tries:
        try:
            if way == "hardlink":
                os.link(src, dst)
            elif way == "symlink":
                os.symlink(os.path.abspath(src), dst)
            else:
                shutil.copy2(src, dst)
            return way
        except OSError as err:
            if way == tries[-1]:
                raise UserInputError(f"cannot {way} image {src} to {dst}: {err}; try another --link mode or check "
                                     "the permissions of the output directory") from None
    raise AssertionError("unreachable")


def _destination_names(file_names: list[str]) -> list[str]:
    """Base names, or the relative paths with '/' -> '__' when base names collide within the split."""
    base = [os.path.basename(f) for f in file_names]
    if len(set(base)) == len(base):
        return base
    flat = [f.replace("\\", "/").lstrip("/").replace("/", "__") for f in file_names]
    if len(set(flat)) != len(flat):
        dup = next(f for f in flat if flat.count(f) > 1)
        raise UserInputError(f"two images of the split have the same file_name ({dup}); file names must be unique")
    return flat


def _write_rfs_list(index: LVISIndex, names: list[str], out_dir: Path, threshold: float, power: float
                    ) -> tuple[Path, int]:
    """Write out_dir/train_rfs.txt, each training image ceil(r_i) times; returns (path, number of lines)."""
    from efldet.data.samplers import repeat_factors, round_repeat_factors

    offsets, labels = index.image_labels()  # CSR: offsets [N + 1], unique labels of each image
    factors = repeat_factors(offsets, labels, index.num_classes, threshold, power)  # float64 [N]
    repeats = round_repeat_factors(factors, "ceil", np.random.default_rng(0))  # int64 [N]; ceil draws nothing
    path = out_dir / "train_rfs.txt"
    lines = [f"./images/train/{name}\n" for name, r in zip(names, repeats.tolist(), strict=True) for _ in range(r)]
    path.write_text("".join(lines))
    return path, len(lines)


def _export_split(ann_file: str, image_root: str, out_dir: Path, split: str, link: str
                  ) -> tuple[int, int, list[str], str, np.ndarray, LVISIndex, list[str]]:
    """Write images/<split> and labels/<split>; returns (images, box lines, names, link mode, category ids, the
    LVISIndex, the file names written)."""
    from efldet.data.lvis import LVISIndex  # torch-importing module: only when exporting

    index = LVISIndex.from_json(ann_file)
    if index.num_classes == 0:
        raise UserInputError(f"{ann_file}: 'categories' is empty; YOLO labels need at least one category")
    image_dir, label_dir = out_dir / "images" / split, out_dir / "labels" / split
    for d in (image_dir, label_dir):
        d.mkdir(parents=True, exist_ok=True)
    names = _destination_names(index.file_names)
    sources = [os.path.join(image_root, f) for f in index.file_names]
    missing = [s for s in sources if not os.path.isfile(s)]
    if missing:
        raise UserInputError(f"{ann_file}: {len(missing)} image file(s) listed in 'images' do not exist, e.g. "
                             f"{missing[0]}; check the image root ({image_root})")
    ways: set[str] = set()
    num_boxes = 0
    for i, (src, name) in enumerate(zip(sources, names, strict=True)):
        ways.add(_place(src, image_dir / name, link))
        rows = index.annotations(i)
        keep = ~index.ann_iscrowd[rows]
        lines = yolo_label_lines(index.ann_boxes[rows][keep], index.ann_labels[rows][keep],
                                 float(index.widths[i]), float(index.heights[i]))
        num_boxes += len(lines)
        (label_dir / (os.path.splitext(name)[0] + ".txt")).write_text("".join(line + "\n" for line in lines))
    way = ways.pop() if len(ways) == 1 else "mixed" if ways else "none"
    return len(index), num_boxes, list(index.cat_names), way, index.cat_ids, index, names


def _yaml_text(out_dir: Path, splits: dict[str, str], names: list[str]) -> str:
    """The Ultralytics dataset yaml (names quoted with json escaping, which YAML reads as double-quoted strings);
    splits: yaml key (train / val) -> path relative to out_dir."""
    import json

    lines = ["# written by `efldet data export-yolo`: class index = efldet label (categories sorted by json id)",
             f"path: {json.dumps(str(out_dir.resolve()))}"]
    lines += [f"{key}: {path}" for key, path in splits.items()]
    lines.append("names:")
    lines += [f"  {i}: {json.dumps(n)}" for i, n in enumerate(names)]
    return "\n".join(lines) + "\n"


def export_yolo(data: str | os.PathLike, out_dir: str | os.PathLike, *, image_root: str | os.PathLike | None = None,
                link: str = "auto", overwrite: bool = False, rfs_threshold: float | None = None,
                rfs_power: float = 0.5) -> YoloExport:
    """Export `data` (a directory with train.json + val.json, or one json file) to the YOLO layout in `out_dir`.

    image_root: where `file_name`s are relative to (default: the directory itself / the json's folder).
    link: 'auto' (hard link, else symbolic link, else copy), 'hardlink', 'symlink' or 'copy'.
    overwrite: replace the images/ and labels/ folders of an earlier export in `out_dir` (else: an error).
    rfs_threshold, rfs_power: repeat factor sampling of the train split as `train_rfs.txt` (t = 0.001 is LVIS's
        setting; on a small set use t = 100 / N, as the synthetic configs do); None: no list, train on images/train.
    """
    data, out = Path(data), Path(out_dir)
    if link not in LINK_MODES:
        raise UserInputError(f"link mode {link!r} is not one of {', '.join(LINK_MODES)}")
    if rfs_threshold is not None and not 0 < rfs_threshold <= 1:
        raise UserInputError(f"--rfs-threshold must be in (0, 1] (a fraction of the training images), got "
                             f"{rfs_threshold}")
    if not rfs_power > 0:
        raise UserInputError(f"--rfs-power must be > 0, got {rfs_power}")
    if data.is_dir():
        files = {split: data / f"{split}.json" for split in SPLITS}
        absent = [str(p) for p in files.values() if not p.is_file()]
        if absent:
            raise UserInputError(f"--data {data} is a directory, so it must hold train.json and val.json (the "
                                 f"layout of `efldet data synth`); missing: {', '.join(absent)}. Or pass one json "
                                 "file")
        root = Path(image_root) if image_root is not None else data
        yaml_splits = {"train": "images/train", "val": "images/val"}
    elif data.is_file():
        if not data.name.endswith((".json", ".json.gz")):
            raise UserInputError(f"--data {data} is not a .json / .json.gz annotation file nor a directory")
        files = {"train": data}
        root = Path(image_root) if image_root is not None else data.parent
        yaml_splits = {"train": "images/train", "val": "images/train"}
    else:
        raise UserInputError(f"--data {data} does not exist: give a dataset directory (train.json, val.json) or a "
                             "COCO/LVIS json file")
    if not root.is_dir():
        raise UserInputError(f"image root {root} is not a directory")
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out {out} exists and is not a directory")
    if out.resolve() == root.resolve():
        raise UserInputError(f"--out {out} is the image root itself; choose a new directory")
    used = [out / kind / split for kind in ("images", "labels") for split in files]
    taken = [p for p in used if p.is_dir() and any(p.iterdir())]
    if taken and not overwrite:
        raise UserInputError(f"{taken[0]} is not empty (an earlier export?); use another --out or --overwrite")
    for p in taken:
        shutil.rmtree(p)
    for split in files:  # Ultralytics' label cache of an earlier export would be stale
        cache = out / "labels" / f"{split}.cache"
        if cache.exists():
            cache.unlink()
    stale_list = out / "train_rfs.txt"
    if stale_list.exists():
        stale_list.unlink()

    images, boxes, ways, names, cat_ids = {}, {}, {}, None, None
    train_list, epoch_images = None, 0
    for split, ann in files.items():
        n_img, n_box, split_names, way, split_ids, index, files_written = _export_split(
            str(ann), str(root), out, split, link)
        if split == "train" and rfs_threshold is not None:
            train_list, epoch_images = _write_rfs_list(index, files_written, out, rfs_threshold, rfs_power)
            yaml_splits["train"] = train_list.name
        if cat_ids is not None and not np.array_equal(cat_ids, split_ids):
            raise UserInputError(f"{ann} has other categories than {files['train']}; train and val must list the "
                                 "same categories (the class index is the position in the sorted ids)")
        images[split], boxes[split], ways[split] = n_img, n_box, way
        names, cat_ids = split_names, split_ids
    yaml_path = out / "dataset.yaml"
    yaml_path.write_text(_yaml_text(out, yaml_splits, names))
    return YoloExport(yaml_path=yaml_path, images=images, boxes=boxes, names=names, link_modes=ways,
                      train_list=train_list, train_epoch_images=epoch_images)
