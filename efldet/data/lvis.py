"""LVIS v1 and COCO detection json: an array index that scales to LVIS, and the torch Dataset on top of it.

Shape letters: `N` images, `A` annotations (all images), `C` categories.

`LVISIndex` holds one numpy array per field, annotations grouped by image (CSR: the annotations of image `i`
are rows `ann_offsets[i]:ann_offsets[i + 1]`), so LVIS v1 train (100,170 images, 1,270,141 annotations,
1.1 GB of json) is indexed without a Python object per annotation; segmentations are never kept.
Category ids map to contiguous labels `0..C-1` in sorted id order (`cat_ids[label]` is the json id).
"""

from __future__ import annotations

import os
import warnings
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2 import functional as F

from efldet.data.categories import FREQUENCY_GROUPS, frequency_groups
from efldet.data.json_stream import read_json_object
from efldet.errors import UserInputError


class ImageReadError(UserInputError):
    """An image file listed in the annotation file is missing, unreadable, or not what the file says."""


def _duplicates(ids: np.ndarray) -> np.ndarray:
    """Ids that occur more than once."""
    uniq, counts = np.unique(ids, return_counts=True)
    return uniq[counts > 1]


def _csr(values: array, lengths: array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets [len(lengths) + 1], values) from flat values and per-row lengths."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(np.asarray(lengths), out=offsets[1:])
    return offsets, np.array(values, dtype=np.int64)


def _image_file_name(img: dict[str, Any]) -> str:
    """Path of an image relative to the image root: `file_name`, or for LVIS v1 (which has only `coco_url`)
    `<train2017|val2017>/<file>` as in the official layout."""
    name = img.get("file_name")
    if name is not None:
        return str(name)
    url = str(img["coco_url"]).split("?", 1)[0]  # KeyError is reported by the caller as a missing key
    return "/".join(url.rstrip("/").rsplit("/", 2)[-2:])


class _Collector:
    """Callbacks for the streamed json arrays: what the index needs, in flat buffers (no dict per entry).
    At LVIS scale: 100k images, 1.27 M annotations (decoded one at a time, segmentation dropped at once)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.image_ids, self.heights, self.widths, self.names = array("q"), array("q"), array("q"), []
        self.neg, self.neg_len, self.nex, self.nex_len = array("q"), array("q"), array("q"), array("q")
        self.ann_ids, self.ann_image_ids, self.ann_cat_ids = array("q"), array("q"), array("q")
        self.boxes, self.areas, self.crowd = array("d"), array("d"), array("b")  # boxes: json xywh, flat
        self.cats: list[dict[str, Any]] = []

    def image(self, img: Any) -> None:
        n = len(self.image_ids)
        try:
            self.image_ids.append(img["id"])
            self.heights.append(img["height"])
            self.widths.append(img["width"])
            self.names.append(_image_file_name(img))
            ids = img.get("neg_category_ids", ())
            self.neg.extend(ids)
            self.neg_len.append(len(ids))
            ids = img.get("not_exhaustive_category_ids", ())
            self.nex.extend(ids)
            self.nex_len.append(len(ids))
        except KeyError as err:
            what = "'file_name' or 'coco_url'" if err.args[0] == "coco_url" else repr(err.args[0])
            raise _entry_error(self.path, "images", n, img, f"is missing the required key {what}") from None
        except (TypeError, AttributeError, OverflowError) as err:
            raise _entry_error(
                self.path, "images", n, img, f"has a value of the wrong type ({err})"
            ) from None

    def annotation(self, ann: Any) -> None:
        n = len(self.crowd)  # appended last: the position of this entry in the file
        try:
            x, y, w, h = ann["bbox"]
            self.ann_ids.append(ann["id"])
            self.ann_image_ids.append(ann["image_id"])
            self.ann_cat_ids.append(ann["category_id"])
            self.boxes.extend((x, y, w, h))
            self.areas.append(ann.get("area", w * h))
            self.crowd.append(1 if ann.get("iscrowd", 0) else 0)
        except KeyError as err:
            raise _entry_error(
                self.path, "annotations", n, ann, f"is missing the required key {err}"
            ) from None
        except (TypeError, ValueError, OverflowError, AttributeError) as err:
            raise _entry_error(
                self.path,
                "annotations",
                n,
                ann,
                f"has a bad value ({err}); 'bbox' must be [x, y, width, height] numbers and ids integers",
            ) from None

    def category(self, cat: Any) -> None:
        if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
            missing = "'id'" if not isinstance(cat, dict) or "id" not in cat else "'name'"
            raise _entry_error(
                self.path, "categories", len(self.cats), cat, f"is missing the required key {missing}"
            )
        self.cats.append({k: cat.get(k) for k in ("id", "name", "frequency", "image_count")})


@dataclass
class LVISIndex:
    """Everything in a COCO/LVIS detection json that training and evaluation need, as arrays."""

    path: str
    # images [N], in file order
    image_ids: np.ndarray  # int64 [N]: json image ids
    heights: np.ndarray  # int64 [N]
    widths: np.ndarray  # int64 [N]
    file_names: list[str]  # [N] path relative to the image root
    # annotations [A], grouped by image (CSR)
    ann_offsets: np.ndarray  # int64 [N + 1]
    ann_ids: np.ndarray  # int64 [A]
    ann_boxes: np.ndarray  # float32 [A, 4] xyxy absolute pixels (json has xywh)
    ann_labels: np.ndarray  # int64 [A] contiguous labels 0..C-1
    ann_iscrowd: np.ndarray  # bool [A]
    ann_areas: np.ndarray  # float32 [A] json `area` (box area when absent)
    # categories [C], sorted by id
    cat_ids: np.ndarray  # int64 [C]
    cat_names: list[str]  # [C]
    frequency: np.ndarray  # '<U1' [C]: 'r' | 'c' | 'f' (json field, or from training image counts)
    image_counts: np.ndarray  # int64 [C]: json `image_count` if every category has it, else counted here
    frequency_from_file: bool  # True when `frequency` came from the json's field
    # LVIS federated labels (json category ids), CSR per image; empty for COCO files
    neg_offsets: np.ndarray  # int64 [N + 1]
    neg_cat_ids: np.ndarray  # int64
    not_exhaustive_offsets: np.ndarray  # int64 [N + 1]
    not_exhaustive_cat_ids: np.ndarray  # int64
    num_skipped_boxes: int = 0  # annotations dropped for a non-positive width or height
    extra: dict[str, Any] = field(default_factory=dict)  # other top-level keys (info, licenses, ...)

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def num_annotations(self) -> int:
        return len(self.ann_ids)

    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    def annotations(self, i: int) -> slice:
        """Rows of image `i` in the `ann_*` arrays."""
        return slice(int(self.ann_offsets[i]), int(self.ann_offsets[i + 1]))

    def image_labels(self, include_crowd: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Unique labels of each image, CSR: (offsets int64 [N + 1], labels int64); used by samplers."""
        keep = np.ones(self.num_annotations, bool) if include_crowd else ~self.ann_iscrowd
        img = np.repeat(np.arange(len(self), dtype=np.int64), np.diff(self.ann_offsets))[keep]
        pairs = np.unique(img * self.num_classes + self.ann_labels[keep])  # sorted by image, then label
        offsets = np.zeros(len(self) + 1, dtype=np.int64)
        np.cumsum(np.bincount(pairs // max(self.num_classes, 1), minlength=len(self)), out=offsets[1:])
        return offsets, pairs % max(self.num_classes, 1)

    def images_per_category(self) -> np.ndarray:
        """int64 [C]: number of images in this file with at least one (non-crowd) box of each category."""
        _, labels = self.image_labels()
        return np.bincount(labels, minlength=self.num_classes).astype(np.int64)

    def categories(self) -> list[dict[str, Any]]:
        """Category metadata in label order: id, name, frequency, image_count."""
        return [
            {"id": int(i), "name": n, "frequency": str(f), "image_count": int(c)}
            for i, n, f, c in zip(
                self.cat_ids, self.cat_names, self.frequency, self.image_counts, strict=True
            )
        ]

    # ------------------------------------------------------------------------------------------ reading
    @classmethod
    def from_json(cls, path: str | os.PathLike) -> LVISIndex:
        """Index a COCO or LVIS json file (also `.json.gz`). Errors name the file and the offending entry."""
        path = os.fspath(path)
        raw = _Collector(path)
        top = read_json_object(
            path,
            {"images": raw.image, "annotations": raw.annotation, "categories": raw.category},
            drop_keys=("segmentation",),  # polygons: never needed for boxes, 90% of LVIS's text
        )
        for key in ("images", "annotations", "categories"):
            if key not in top:
                raise UserInputError(
                    f"{path}: the top-level key {key!r} is missing; a COCO/LVIS detection file has "
                    "'images', 'annotations' and 'categories' lists"
                )
            if top[key] is not None:
                raise UserInputError(f"{path}: {key!r} must be a list, got {type(top[key]).__name__}")
        extra = {k: v for k, v in top.items() if k not in ("images", "annotations", "categories")}
        return cls._build(raw, extra)

    @classmethod
    def _build(cls, raw: _Collector, extra: dict[str, Any]) -> LVISIndex:
        """Arrays from what the reader collected: checks references and ids, groups boxes by image."""
        path = raw.path
        heights, widths = np.asarray(raw.heights), np.asarray(raw.widths)
        image_ids = np.array(raw.image_ids, dtype=np.int64)
        _check_unique(path, "images", image_ids)
        bad = np.flatnonzero((heights <= 0) | (widths <= 0))
        if len(bad):
            i = int(bad[0])
            raise UserInputError(
                f"{path}: images[{i}] (id {image_ids[i]}) has height {heights[i]} and width {widths[i]}; "
                "both must be positive"
            )

        # Categories, sorted by id -> contiguous labels.
        cats = raw.cats
        cat_ids_in_file = np.array([c["id"] for c in cats], dtype=np.int64)
        _check_unique(path, "categories", cat_ids_in_file)
        order = np.argsort(cat_ids_in_file, kind="stable")
        cats = [cats[i] for i in order]
        cat_ids = cat_ids_in_file[order]

        # Annotations: ids, then image/category references, then boxes.
        ids = np.asarray(raw.ann_ids)
        _check_unique(path, "annotations", ids)
        ann_img, ann_cat = np.asarray(raw.ann_image_ids), np.asarray(raw.ann_cat_ids)
        img_order = np.argsort(image_ids, kind="stable")
        img_index = img_order[_lookup(path, "image_id", "images", image_ids[img_order], ann_img, ids)]
        labels = _lookup(path, "category_id", "categories", cat_ids, ann_cat, ids)
        xywh = np.asarray(raw.boxes).reshape(-1, 4)
        finite = np.isfinite(xywh).all(axis=1)
        if not finite.all():
            k = int(np.flatnonzero(~finite)[0])
            raise UserInputError(
                f"{path}: annotations[{k}] (id {ids[k]}) has a non-finite bbox {xywh[k].tolist()}; "
                "fix or remove that annotation"
            )
        valid = (xywh[:, 2] > 0) & (xywh[:, 3] > 0)
        num_skipped = int((~valid).sum())
        if num_skipped:
            examples = ", ".join(str(i) for i in ids[~valid][:5])
            warnings.warn(
                f"{path}: skipped {num_skipped} annotation(s) whose bbox has a non-positive width or height "
                f"(ids {examples}{', ...' if num_skipped > 5 else ''})",
                stacklevel=3,
            )
        # Group the kept annotations by image, keeping file order within an image.
        keep = np.flatnonzero(valid)
        keep = keep[np.argsort(img_index[keep], kind="stable")]
        ann_offsets = np.zeros(len(image_ids) + 1, dtype=np.int64)
        np.cumsum(np.bincount(img_index[keep], minlength=len(image_ids)), out=ann_offsets[1:])
        xyxy = xywh[keep].astype(np.float32)
        xyxy[:, 2:] += xyxy[:, :2]

        neg_offsets, neg_ids = _csr(raw.neg, raw.neg_len)
        nex_offsets, nex_ids = _csr(raw.nex, raw.nex_len)
        index = cls(
            path=path,
            image_ids=image_ids,
            heights=heights.copy(),
            widths=widths.copy(),
            file_names=raw.names,
            ann_offsets=ann_offsets,
            ann_ids=ids[keep].copy(),
            ann_boxes=xyxy,
            ann_labels=labels[keep],
            ann_iscrowd=np.asarray(raw.crowd)[keep].astype(bool),
            ann_areas=np.asarray(raw.areas)[keep].astype(np.float32),
            cat_ids=cat_ids,
            cat_names=[str(c["name"]) for c in cats],
            frequency=np.zeros(len(cats), "<U1"),
            image_counts=np.zeros(len(cats), np.int64),
            frequency_from_file=False,
            neg_offsets=neg_offsets,
            neg_cat_ids=neg_ids,
            not_exhaustive_offsets=nex_offsets,
            not_exhaustive_cat_ids=nex_ids,
            num_skipped_boxes=num_skipped,
            extra=extra,
        )
        # Frequency groups: the json's field (LVIS), else from image counts with the LVIS thresholds.
        if cats and all(c["image_count"] is not None for c in cats):
            index.image_counts = np.array([c["image_count"] for c in cats], dtype=np.int64)
        else:
            index.image_counts = index.images_per_category()
        if cats and all(c["frequency"] is not None for c in cats):
            freq = np.array([str(c["frequency"]) for c in cats])
            bad = np.flatnonzero(~np.isin(freq, FREQUENCY_GROUPS))
            if len(bad):
                c = cats[int(bad[0])]
                raise UserInputError(
                    f"{path}: category id {c['id']} has frequency {c['frequency']!r}; "
                    "expected 'r', 'c' or 'f'"
                )
            index.frequency, index.frequency_from_file = freq.astype("<U1"), True
        else:
            index.frequency = frequency_groups(index.image_counts)
        return index


def _entry_error(path: str, key: str, n: int, entry: Any, what: str) -> UserInputError:
    ident = f" (id {entry['id']})" if isinstance(entry, dict) and "id" in entry else ""
    return UserInputError(f"{path}: {key}[{n}]{ident} {what}")


def _check_unique(path: str, key: str, ids: np.ndarray) -> None:
    dup = _duplicates(ids)
    if len(dup):
        where = np.flatnonzero(ids == dup[0])[:2].tolist()
        raise UserInputError(
            f"{path}: {len(dup)} duplicate id(s) in {key!r}: id {dup[0]} is used by {key}[{where[0]}] and "
            f"{key}[{where[1]}]; ids must be unique"
        )


def _lookup(
    path: str, field_name: str, key: str, sorted_ids: np.ndarray, values: np.ndarray, ann_ids: np.ndarray
) -> np.ndarray:
    """Position of each value in `sorted_ids`; an error names the first annotation whose value is absent."""
    pos = np.searchsorted(sorted_ids, values)
    found = pos < len(sorted_ids)
    found[found] = sorted_ids[pos[found]] == values[found]
    if not found.all():
        k = int(np.flatnonzero(~found)[0])
        raise UserInputError(
            f"{path}: annotations[{k}] (id {ann_ids[k]}) has {field_name} {values[k]}, which is not in "
            f"{key!r} ({int((~found).sum())} annotation(s) like this)"
        )
    return pos.astype(np.int64)


def read_image(path: str) -> tv_tensors.Image:
    """Decode a JPEG/PNG (grayscale, RGBA, palette, 16-bit included) as RGB uint8 [3, H, W]."""
    if not os.path.isfile(path):
        raise ImageReadError(
            f"image file {path} does not exist (check the image root and the annotation file)"
        )
    try:
        with warnings.catch_warnings():  # torchvision 0.29 points to TorchCodec; the decoders still work
            warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)
            image = decode_image(read_file(path), mode=ImageReadMode.RGB)
    except (RuntimeError, OSError, ValueError) as err:
        raise ImageReadError(f"image file {path} cannot be decoded as an image: {err}") from None
    if image.dtype != torch.uint8:  # 16-bit PNG
        image = F.to_dtype(image, torch.uint8, scale=True)
    return tv_tensors.Image(image)


class LVISDataset(torch.utils.data.Dataset):
    """A COCO/LVIS detection json as a torch Dataset.

    `ds[i]` -> (image, target): image is `tv_tensors.Image` uint8 [3, H, W] (or whatever `transforms` makes
    of it), target is a dict with `boxes` (`tv_tensors.BoundingBoxes` float32 [M, 4] xyxy pixels), `labels`
    (int64 [M], contiguous 0..C-1), `image_id` (json id), `orig_size` ((H, W) of the file) and `size`
    ((h, w) of the returned image, after the transforms). Crowd boxes are left out. `transforms(image,
    target)` is called with both (without `size`), as torchvision.transforms.v2 expects.
    """

    def __init__(
        self,
        ann_file: str | os.PathLike | LVISIndex,
        image_root: str | os.PathLike,
        transforms: Callable[[Any, dict[str, Any]], tuple[Any, dict[str, Any]]] | None = None,
        *,
        filter_empty: bool = False,
    ) -> None:
        index = ann_file if isinstance(ann_file, LVISIndex) else LVISIndex.from_json(ann_file)
        self.index = index
        self.image_root = os.fspath(image_root)
        self.transforms = transforms
        keep = np.arange(len(index), dtype=np.int64)
        if filter_empty:  # only images with at least one non-crowd box
            offsets, _ = index.image_labels()
            keep = keep[np.diff(offsets) > 0]
        self.ids = keep  # dataset position -> index row

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_classes(self) -> int:
        return self.index.num_classes

    @property
    def class_names(self) -> list[str]:
        return self.index.cat_names

    @property
    def category_ids(self) -> list[int]:
        """json category id of each contiguous label (sorted ids; index = label)."""
        return self.index.cat_ids.tolist()

    @property
    def category_names(self) -> list[str]:
        """Category name of each contiguous label (same as `class_names`)."""
        return self.index.cat_names

    @property
    def frequency_groups(self) -> list[str]:
        """LVIS group 'r' / 'c' / 'f' of each contiguous label (json `frequency`, else from image counts)."""
        return self.index.frequency.tolist()

    @property
    def image_ids(self) -> np.ndarray:
        """int64 [len]: json image id of each dataset position."""
        return self.index.image_ids[self.ids]

    @property
    def image_sizes(self) -> np.ndarray:
        """int64 [len, 2]: (height, width) of each image, from the annotation file."""
        return np.stack([self.index.heights[self.ids], self.index.widths[self.ids]], axis=1)

    def image_path(self, i: int) -> str:
        return os.path.join(self.image_root, self.index.file_names[int(self.ids[i])])

    def image_labels(self) -> tuple[np.ndarray, np.ndarray]:
        """Unique labels per image of this dataset, CSR (offsets [len + 1], labels): for the samplers."""
        offsets, labels = self.index.image_labels()
        if len(self.ids) == len(self.index):
            return offsets, labels
        lengths = (offsets[1:] - offsets[:-1])[self.ids]
        rows = (
            np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in self.ids]) if len(self.ids) else []
        )
        new = np.zeros(len(self.ids) + 1, dtype=np.int64)
        np.cumsum(lengths, out=new[1:])
        return new, labels[np.asarray(rows, dtype=np.int64)]

    def aspect_ratios(self) -> np.ndarray:
        """float64 [len]: width / height of each image, from the annotation file (for batch grouping)."""
        return self.index.widths[self.ids] / self.index.heights[self.ids]

    def __getitem__(self, i: int) -> tuple[Any, dict[str, Any]]:
        row = int(self.ids[i])
        ix = self.index
        path = self.image_path(i)
        image = read_image(path)
        h, w = int(ix.heights[row]), int(ix.widths[row])
        if tuple(image.shape[-2:]) != (h, w):
            raise ImageReadError(
                f"image file {path} is {image.shape[-2]}x{image.shape[-1]} (HxW) but {ix.path} says {h}x{w} "
                f"for image id {ix.image_ids[row]}; the boxes would not match the pixels"
            )
        rows = ix.annotations(row)
        keep = ~ix.ann_iscrowd[rows]
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.from_numpy(ix.ann_boxes[rows][keep]), format="XYXY", canvas_size=(h, w)
            ),
            "labels": torch.from_numpy(ix.ann_labels[rows][keep]),
            "image_id": int(ix.image_ids[row]),
            "orig_size": (h, w),
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        target["size"] = (int(image.shape[-2]), int(image.shape[-1]))  # (h, w) after the transforms
        return image, target
