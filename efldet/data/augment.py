"""YOLOX's strong augmentation on tv_tensors: Mosaic, random affine, MixUp, HSV jitter, flip, multi-scale.

Shape letters: `M` boxes, `H`/`W` height/width of an input image or canvas, `S` side of the square output
(pixels). Boxes are `tv_tensors.BoundingBoxes` xyxy in pixels, so torchvision's own kernels (`resize`, `affine`,
`crop`, `pad`, `horizontal_flip`) move them with the pixels.

What one training sample is (YOLOX, `MosaicDetection` + `TrainTransform`; Ge et al., 2021):
1. Mosaic (probability `mosaic_prob`): the requested image and 3 others drawn uniformly, each resized to fit
   S x S (aspect kept), placed around a centre (xc, yc) ~ U(0.5 S, 1.5 S)^2 on a 2S x 2S canvas filled with
   grey 114 (requested image top-left of the centre, then top-right, bottom-left, bottom-right); boxes are
   clipped to the canvas.
2. Random affine to S x S: rotation U(-10, 10) degrees, scale U(mosaic_scale), shear U(-2, 2) degrees on each
   axis, about the canvas centre, which lands at the output centre shifted by U(-0.1, 0.1) S on each axis.
   Boxes become the enclosing box of their 4 warped corners, clipped to the output, and are kept if they pass
   `box_candidates` (YOLOX's rule, from YOLOv5: both sides > 2 px, area > 0.2 x area before x scale^2 (YOLOv5:
   0.1), aspect ratio < 20).
3. MixUp (probability `mixup_prob`, only after a Mosaic that kept a box): another image with boxes, resized to
   fit S x S at the top-left of a grey S x S canvas, scaled by U(mixup_scale), flipped with probability 0.5,
   padded to at least S x S, cropped at a random S x S offset, averaged 50/50 with the mosaic (integer
   floor); its boxes are clipped to the crop and kept by `box_candidates` with a 5 px side minimum (YOLOX's
   mixup); the blend happens only if one of them is kept. YOLOX pads the part of the blend partner outside
   its scaled canvas with black; here it is grey like every other empty area.
4. HSV jitter (`adjust_hsv`), then horizontal flip with probability `flip_prob`; boxes with a side <= 1 px
   are dropped (YOLOX `TrainTransform`).
Without Mosaic (probability 1 - mosaic_prob, or `enabled=False`, YOLOX's last 15 epochs) a sample is the image
resized to fit S x S (aspect kept, not padded: the collate pads), HSV-jittered and flipped, as in YOLOX.

Randomness: every draw of a sample comes from `numpy.random.default_rng([seed, epoch, index, draw])`, so a
sample depends only on those numbers (not on the worker that makes it, nor on global RNG state). Multi-scale
training and the switch-off of the last epochs reach persistent DataLoader workers through the index itself:
`AugmentBatchSampler` (in the main process) turns each dataset index into a `SampleKey(index, epoch, draw,
size, strong)`, the same idea as YOLOX's batch sampler that yields (flag, index) pairs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from efldet.errors import UserInputError

FILL = 114  # grey of every empty area (YOLOX's border value)
HSV_GAINS = (5, 30, 30)  # YOLOX: hue +-5 (OpenCV units, 2 degrees each), saturation and value +-30 (of 255)
MULTISCALE_STEP = 32  # multi-scale sides are multiples of the largest stride
_EPS = 1e-12
_HSV_CHUNK = 1 << 16  # pixels per chunk in adjust_hsv


# ---------------------------------------------------------------------------------------------------- HSV
def _step(x: torch.Tensor) -> torch.Tensor:
    """1.0 where x >= 0 else 0.0, as float arithmetic (a bool mask + where is several times slower on CPU)."""
    return torch.sign(x).add_(1.0).clamp_(0.0, 1.0)


def _rgb_to_hsv(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float [3, P] RGB -> (hue in sextants [0, 6), saturation [0, 1], value in the input's units), each [P];
    grey pixels get hue 0 (as OpenCV)."""
    r, g, b = rgb.unbind(dim=0)
    value = torch.maximum(torch.maximum(r, g), b)
    delta = value - torch.minimum(torch.minimum(r, g), b)
    saturation = delta / value.clamp(min=_EPS)  # 0 where value = 0 (then delta = 0)
    inv = delta.clamp(min=_EPS).reciprocal_()  # grey: the differences are 0, so hue 0
    # Hexcone hue: the largest channel picks the formula (ties give the same hue from either one).
    red_max = _step(r - g).mul_(_step(r - b))
    green_max = (1.0 - red_max).mul_(_step(g - b))
    hue_red = (g - b).mul_(inv)  # [-1, 1]; + 6 below 0
    hue_red += 6.0 - 6.0 * _step(hue_red)
    hue = red_max * hue_red + green_max * ((b - r).mul_(inv).add_(2.0))
    hue += (1.0 - red_max - green_max) * ((r - g).mul_(inv).add_(4.0))
    return hue, saturation, value


def _hsv_to_rgb(hue: torch.Tensor, saturation: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Inverse of `_rgb_to_hsv` for hue in [0, 6): [P] each -> [3, P]. Channel c = v - v s T(hue + n_c) with
    n = 5, 3, 1 for R, G, B and T(k) = clamp(min(k, 4 - k), 0, 1) taken modulo 6 (the hexcone's closed form;
    k < 11 here, so T(k) + T(k - 6))."""
    chroma = value * saturation
    out = torch.empty((3, *hue.shape), dtype=hue.dtype)
    for c, n in enumerate((5.0, 3.0, 1.0)):
        k = hue + n
        weight = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0) + torch.minimum(k - 6.0, 10.0 - k).clamp_(0.0, 1.0)
        torch.addcmul(value, chroma, weight, value=-1.0, out=out[c])
    return out


def _shift_hsv(rgb: torch.Tensor, hue: float, saturation: float, value: float, full: float) -> torch.Tensor:
    """float [3, P] RGB in [0, full] -> shifted (float [3, P], not rounded); shifts in `adjust_hsv`'s units."""
    if hue:
        h, s, v = _rgb_to_hsv(rgb)
        h += hue / 30.0  # 180 units = 6 sextants
        h -= 6.0 * torch.floor(h * (1.0 / 6.0))  # back into [0, 6)
        if saturation:
            s = (s + saturation / 255.0).clamp_(0.0, 1.0)
        if value:
            v = (v + value * full / 255.0).clamp_(0.0, full)
        return _hsv_to_rgb(h, s, v)
    # Hue kept: c' = v' - v' s' T_c with T_c = (v - c) / (v - min) unchanged, so c' = v' - (v - c) v' s' / delta.
    r, g, b = rgb.unbind(dim=0)
    v = torch.maximum(torch.maximum(r, g), b)
    delta = v - torch.minimum(torch.minimum(r, g), b)
    s = delta / v.clamp(min=_EPS)
    new_s = (s + saturation / 255.0).clamp_(0.0, 1.0) if saturation else s
    new_v = (v + value * full / 255.0).clamp_(0.0, full) if value else v
    chroma = new_v * new_s
    out = torch.addcmul(new_v, v - rgb, chroma / delta.clamp(min=_EPS), value=-1.0)  # [3, P]
    if saturation > 0:  # grey (hue 0 = red, as OpenCV) gains saturation: G and B drop to v'(1 - s')
        out[1:] -= chroma * (1.0 - torch.sign(delta))
    return out


def adjust_hsv(image: torch.Tensor, hue: float, saturation: float, value: float) -> torch.Tensor:
    """Additive HSV shift in OpenCV's 8-bit units (YOLOX `augment_hsv`): hue + `hue` in 180ths of the colour
    circle (wrapping around), saturation + `saturation` and value + `value` in 255ths of full scale (clipped).

    image: [..., 3, H, W] RGB, uint8 (0..255) or float (0..1); returns the same shape, dtype and range. All
    shifts 0 returns the input unchanged. Unlike OpenCV the hue is not rounded to 180 levels in between."""
    if hue == 0 and saturation == 0 and value == 0:
        return image
    if image.ndim < 3 or image.shape[-3] != 3:
        raise UserInputError(f"adjust_hsv needs an RGB image [..., 3, H, W]; got shape {tuple(image.shape)}")
    is_int = not image.is_floating_point()
    full = 255.0 if is_int else 1.0
    pixels = image.movedim(-3, 0).reshape(3, -1)  # [..., 3, H, W] -> [3, P], P = all pixels
    out = torch.empty(pixels.shape, dtype=image.dtype)
    for start in range(0, pixels.shape[1], _HSV_CHUNK):  # chunks: temporaries stay in cache
        rgb = pixels[:, start : start + _HSV_CHUNK].to(torch.float32)
        shifted = _shift_hsv(rgb, float(hue), float(saturation), float(value), full)
        out[:, start : start + _HSV_CHUNK] = shifted.round_().clamp_(0, 255) if is_int else shifted.clamp_(0, 1)
    return out.reshape(image.movedim(-3, 0).shape).movedim(0, -3)  # [3, P] -> [..., 3, H, W]


def draw_hsv_shifts(rng: np.random.Generator, gains: Sequence[float]) -> tuple[int, int, int]:
    """YOLOX's draw: shift_c = trunc(U(-1, 1) x gain_c) for hue, saturation, value, each kept with
    probability 1/2 (else 0)."""
    shifts = rng.uniform(-1.0, 1.0, 3) * np.asarray(gains, dtype=np.float64) * rng.integers(0, 2, 3)
    h, s, v = (int(x) for x in np.trunc(shifts))
    return h, s, v


class RandomHSV(v2.Transform):
    """torchvision v2 transform: `adjust_hsv` with shifts drawn as `draw_hsv_shifts` does (from torch's RNG,
    like the other v2 transforms). Images change; boxes and labels pass through."""

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, gains: Sequence[float] = HSV_GAINS) -> None:
        super().__init__()
        self.gains = _check_gains(gains, "RandomHSV(gains)")

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        u = torch.rand(3, dtype=torch.float64) * 2.0 - 1.0
        on = torch.randint(0, 2, (3,))
        shifts = torch.trunc(u * torch.tensor(self.gains, dtype=torch.float64) * on)
        return {"shifts": tuple(int(x) for x in shifts.tolist())}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return tv_tensors.wrap(adjust_hsv(inpt.as_subclass(torch.Tensor), *params["shifts"]), like=inpt)


# ------------------------------------------------------------------------------------------------- boxes
def box_candidates(
    before: torch.Tensor,
    after: torch.Tensor,
    *,
    min_size: float = 2.0,
    min_area_ratio: float = 0.2,
    max_aspect: float = 20.0,
) -> torch.Tensor:
    """bool [M]: which boxes survive an augmentation (YOLOX's `box_candidates` defaults; YOLOv5 uses an area
    ratio of 0.1): both sides of `after` > `min_size` px, area(after) / area(before) > `min_area_ratio`, longer
    / shorter side < `max_aspect`. before, after: [M, 4] xyxy; `before` already scaled to the output's size."""
    w1, h1 = before[:, 2] - before[:, 0], before[:, 3] - before[:, 1]
    w2, h2 = after[:, 2] - after[:, 0], after[:, 3] - after[:, 1]
    aspect = torch.maximum(w2 / (h2 + 1e-16), h2 / (w2 + 1e-16))
    return (w2 > min_size) & (h2 > min_size) & (w2 * h2 / (w1 * h1 + 1e-16) > min_area_ratio) & (aspect < max_aspect)


def _boxes(data: torch.Tensor, canvas_size: tuple[int, int]) -> tv_tensors.BoundingBoxes:
    data = data.to(torch.float32).reshape(-1, 4)  # [M, 4] (also when M = 0 and the input was [0])
    return tv_tensors.BoundingBoxes(data, format="XYXY", canvas_size=canvas_size)


def _select(boxes: tv_tensors.BoundingBoxes, keep: torch.Tensor) -> tv_tensors.BoundingBoxes:
    return tv_tensors.wrap(boxes.as_subclass(torch.Tensor)[keep], like=boxes)


# ------------------------------------------------------------------------------------------------ affine
class AffineParams(NamedTuple):
    angle: float  # rotation, degrees (torchvision's sign convention)
    translate: tuple[float, float]  # (x, y) pixels, of the output
    scale: float  # isotropic scale factor
    shear: tuple[float, float]  # (x, y) degrees


def draw_affine(
    rng: np.random.Generator,
    *,
    out_size: int,
    degrees: float = 10.0,
    translate: float = 0.1,
    scale: tuple[float, float] = (0.1, 2.0),
    shear: float = 2.0,
) -> AffineParams:
    """YOLOX's draws: angle U(-degrees, degrees), scale U(scale), shear U(-shear, shear) per axis, translation
    U(-translate, translate) x out_size per axis."""
    angle = float(rng.uniform(-degrees, degrees))
    factor = float(rng.uniform(scale[0], scale[1]))
    shear_xy = (float(rng.uniform(-shear, shear)), float(rng.uniform(-shear, shear)))
    shift = (float(rng.uniform(-translate, translate) * out_size), float(rng.uniform(-translate, translate) * out_size))
    return AffineParams(angle, shift, factor, shear_xy)


def random_affine(
    image: torch.Tensor,
    boxes: tv_tensors.BoundingBoxes,
    labels: torch.Tensor,
    params: AffineParams,
    *,
    out_size: int,
    fill: int = FILL,
) -> tuple[torch.Tensor, tv_tensors.BoundingBoxes, torch.Tensor]:
    """Warp a uint8 image [3, H, W] and its boxes [M, 4] to S x S (S = `out_size`): the input's centre goes to
    the output's centre + params.translate, scaled / rotated / sheared about it; empty areas get `fill`. Boxes
    become the enclosing boxes of their warped corners, clipped, and are filtered by `box_candidates`; labels
    [M] follow. Returns (uint8 [3, S, S], boxes [M', 4], labels [M']).

    Every step is a box-aware torchvision kernel (crop, resize, pad, affine, crop), so boxes follow pixels:
    (1) the part of the input that can reach the output (a bound on the window's pre-image) is cropped and
    resized by params.scale (antialiased); (2) an L x L canvas around that pre-image (L ~ 1.25 S for YOLOX's
    ranges) is rotated / sheared about the input's centre by `F.affine`, with the sub-pixel part of the
    translation; (3) the S x S window is cropped where the whole-pixel part of the translation puts it. One
    affine over the whole 2S x 2S mosaic would warp about 3x the pixels (and take 4-8x the time here). Boxes
    are clipped to the part cropped in (1), which lies outside the output's pre-image."""
    height, width = image.shape[-2:]
    scale, (shift_x, shift_y) = params.scale, params.translate
    a, shear_x, shear_y = (math.radians(v) for v in (params.angle, *params.shear))
    # The output window (half-side S/2 around the centre c, shifted by t) comes from input points p with
    # p - (c - t) = A^-1 u - (A^-1 - I) t, |u|_inf <= S/2, A = rotation x shear. With the inf-norm bounds
    # |A^-1| <= (|cos a| + |sin a|)(1 + |tan sx|)(1 + |tan sy|) and |A^-1 - I| <= (1 + |cos a - 1| + |sin a|)
    # (1 + |tan sx|)(1 + |tan sy|) - 1, this half-side (output pixels, + 2 for the bilinear kernel) holds it:
    shears = (1 + abs(math.tan(shear_x))) * (1 + abs(math.tan(shear_y)))
    stretch = (abs(math.cos(a)) + abs(math.sin(a))) * shears
    drift = (1 + abs(math.cos(a) - 1) + abs(math.sin(a))) * shears - 1
    half = stretch * out_size / 2 + drift * max(abs(shift_x), abs(shift_y)) + 2.0
    side = max(2 * math.ceil(half), out_size + 2)  # L
    before = boxes.as_subclass(torch.Tensor) * scale  # YOLOX compares with the box scaled, not warped

    # (1) crop what can reach the output (around c - t / scale in input pixels), resize by `scale`
    cx, cy, reach = width / 2.0, height / 2.0, half / scale
    gx, gy = cx - shift_x / scale, cy - shift_y / scale
    left, top = max(0, math.floor(gx - reach)), max(0, math.floor(gy - reach))
    right, bottom = min(width, math.ceil(gx + reach)), min(height, math.ceil(gy + reach))
    if (left, top, right, bottom) != (0, 0, width, height):
        image = F.crop(image, top, left, bottom - top, right - left)
        boxes = F.crop(boxes, top, left, bottom - top, right - left)
    new_h, new_w = max(1, round((bottom - top) * scale)), max(1, round((right - left) * scale))
    image = F.resize(image, [new_h, new_w], antialias=True)
    boxes = F.resize(boxes, [new_h, new_w])
    px, py = (cx - left) * new_w / (right - left), (cy - top) * new_h / (bottom - top)  # c, now

    # (2) an L x L canvas around c - t, rotated / sheared about c, shifted by t's sub-pixel part. The image is
    # shifted by -fill, so the warp's zero padding is `fill` and no mask channel is needed.
    whole_x, whole_y = round(shift_x), round(shift_y)
    x0, y0 = round(px - shift_x - side / 2), round(py - shift_y - side / 2)
    padding = [max(0, -x0), max(0, -y0), max(0, x0 + side - new_w), max(0, y0 + side - new_h)]
    shifted = image.to(torch.float32) - float(fill)
    if any(padding):
        shifted, boxes = F.pad(shifted, padding), F.pad(boxes, padding)
    x0, y0 = x0 + padding[0], y0 + padding[1]
    shifted, boxes = F.crop(shifted, y0, x0, side, side), F.crop(boxes, y0, x0, side, side)
    centre = [px + padding[0] - x0, py + padding[1] - y0]
    kwargs = {"angle": params.angle, "translate": [shift_x - whole_x, shift_y - whole_y], "scale": 1.0,
              "shear": list(params.shear), "center": centre}
    shifted = F.affine(shifted, interpolation=InterpolationMode.BILINEAR, fill=None, **kwargs)
    boxes = F.affine(boxes, **kwargs)  # enclosing boxes of the warped corners, clipped to the canvas

    # (3) the S x S window: centred on c - (whole part of t), so that c lands at its centre + t
    wx, wy = round(centre[0] - whole_x - out_size / 2), round(centre[1] - whole_y - out_size / 2)
    shifted = F.crop(shifted, wy, wx, out_size, out_size)
    boxes = F.crop(boxes, wy, wx, out_size, out_size)
    out = shifted.add_(float(fill)).round_().clamp_(0, 255).to(torch.uint8)
    keep = box_candidates(before, boxes.as_subclass(torch.Tensor))
    return out, _select(boxes, keep), labels[keep]


# ---------------------------------------------------------------------------------------------- sampling
class SampleKey(NamedTuple):
    """A dataset index with what the augmentation of this draw needs; made in the main process by
    `AugmentBatchSampler`, so it reaches persistent workers."""

    index: int  # dataset position
    epoch: int  # training epoch (seeds the draw)
    draw: int  # which draw of the epoch on which rank (seeds the draw; 0 = a plain `ds[i]`)
    size: int  # S, side of the output (pixels)
    strong: bool  # Mosaic / MixUp on (False in the last `no_aug_epochs` epochs)


def multiscale_sizes(low: int, high: int, step: int = MULTISCALE_STEP) -> tuple[int, ...]:
    """Output sides for multi-scale training: low, low + step, ... <= high (YOLOX: 448..832, step 32)."""
    if not (isinstance(low, int) and isinstance(high, int)) or low < step or high < low:
        raise UserInputError(f"multi-scale range must be two integers {step} <= low <= high (pixels); got "
                             f"({low!r}, {high!r}); e.g. data.multiscale_range=[448,832]")
    return tuple(range(low, high + 1, step))


class AugmentBatchSampler(Sampler[list[SampleKey]]):
    """Wraps a batch sampler: yields each batch as `SampleKey`s carrying the epoch (set by `set_epoch`, which
    reaches the wrapped sampler too), a per-draw number, the batch's output side and the strong-augmentation
    switch. The side is drawn from `sizes` with `numpy.random.default_rng([seed, epoch, batch // interval])`,
    the same on every rank (YOLOX draws it every 10 iterations for all GPUs); without `sizes` it is
    `input_size`. Strong augmentation is on in epochs < `strong_epochs` (None: always)."""

    def __init__(
        self,
        batches: Sampler[list[int]] | Any,
        *,
        input_size: int,
        sizes: Sequence[int] = (),
        interval: int = 10,
        strong_epochs: int | None = None,
        seed: int = 0,
        rank: int = 0,
        num_replicas: int = 1,
    ) -> None:
        if int(input_size) < 2:
            raise UserInputError(f"input_size must be at least 2 pixels; got {input_size}")
        if any(int(s) < 2 for s in sizes):
            raise UserInputError(f"multi-scale sizes must be at least 2 pixels; got {list(sizes)}")
        if int(interval) < 1:
            raise UserInputError(f"multi-scale interval must be >= 1 batch; got {interval}")
        self.batches = batches
        self.input_size, self.sizes, self.interval = int(input_size), tuple(int(s) for s in sizes), int(interval)
        self.strong_epochs = None if strong_epochs is None else int(strong_epochs)
        self.seed, self.rank, self.num_replicas = int(seed), int(rank), max(int(num_replicas), 1)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        for part in (self.batches, getattr(self.batches, "sampler", None)):
            if hasattr(part, "set_epoch"):
                part.set_epoch(epoch)
                return

    def size_of_batch(self, batch: int) -> int:
        """Output side (pixels) of batch number `batch` of the current epoch."""
        if not self.sizes:
            return self.input_size
        rng = np.random.default_rng([self.seed, self.epoch, batch // self.interval])
        return self.sizes[int(rng.integers(len(self.sizes)))]

    def __iter__(self) -> Iterator[list[SampleKey]]:
        epoch = self.epoch
        strong = self.strong_epochs is None or epoch < self.strong_epochs
        position = 0  # samples drawn so far this epoch on this rank
        for b, batch in enumerate(self.batches):
            size = self.size_of_batch(b)
            keys = []
            for i in batch:
                draw = 1 + self.rank + self.num_replicas * position  # unique over ranks and positions; 0 = ds[i]
                keys.append(SampleKey(int(i), epoch, draw, size, strong))
                position += 1
            yield keys

    def __len__(self) -> int:
        return len(self.batches)


# ------------------------------------------------------------------------------------------------ dataset
def _check_gains(gains: Sequence[float], where: str) -> tuple[float, float, float]:
    values = tuple(gains) if isinstance(gains, (list, tuple)) else ()
    if len(values) != 3 or any(not isinstance(g, (int, float)) or isinstance(g, bool) or g < 0 for g in values):
        raise UserInputError(f"{where} must be 3 non-negative numbers (hue, saturation, value gains in OpenCV "
                             f"units, YOLOX: (5, 30, 30)); got {gains!r}")
    return tuple(float(g) for g in values)  # type: ignore[return-value]


def _check_range(value: Sequence[float], name: str) -> tuple[float, float]:
    pair = tuple(value) if isinstance(value, (list, tuple)) else ()
    if len(pair) != 2 or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in pair) \
            or not 0 < pair[0] <= pair[1]:
        raise UserInputError(f"{name} must be (low, high) with 0 < low <= high; got {value!r}")
    return float(pair[0]), float(pair[1])


def _check_prob(value: float, name: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise UserInputError(f"{name} must be a probability in [0, 1]; got {value!r}")
    return float(value)


class MosaicMixUpDataset(Dataset):
    """YOLOX's strong augmentation (module doc) around a detection dataset.

    `dataset[i]` must give (uint8 `tv_tensors.Image` [3, H, W], target with `boxes` BoundingBoxes xyxy [M, 4],
    `labels` int64 [M], `image_id`, `orig_size`), as `LVISDataset` without transforms does. `ds[key]` gives the
    same format: an image [3, S, S] (or the aspect-kept resize when strong augmentation is off), target with
    boxes in its pixels, labels, the requested image's `image_id` and `orig_size`, and `size`; `transforms`
    (e.g. ToDtype + Normalize) are applied last. `key` is a `SampleKey` or a plain index (then epoch =
    `self.epoch`, set by `set_epoch`, side `output_size`, strong = `enabled`). Other attributes (`index`,
    `num_classes`, `image_labels()`, `aspect_ratios()`, ...) are those of the wrapped dataset.
    """

    def __init__(
        self,
        dataset: Any,
        *,
        output_size: int,
        mosaic_prob: float = 1.0,
        mixup_prob: float = 1.0,
        mosaic_scale: tuple[float, float] = (0.1, 2.0),
        mixup_scale: tuple[float, float] = (0.5, 1.5),
        degrees: float = 10.0,
        translate: float = 0.1,
        shear: float = 2.0,
        hsv: Sequence[float] = HSV_GAINS,
        flip_prob: float = 0.5,
        enabled: bool = True,
        seed: int = 0,
        fill: int = FILL,
        transforms: Callable[[Any, dict[str, Any]], tuple[Any, dict[str, Any]]] | None = None,
    ) -> None:
        if len(dataset) == 0:
            raise UserInputError("MosaicMixUpDataset needs a non-empty dataset (it draws other images from it)")
        if not isinstance(output_size, int) or isinstance(output_size, bool) or output_size < 2:
            raise UserInputError(f"output_size must be an integer >= 2 (pixels, e.g. 640); got {output_size!r}")
        if not isinstance(degrees, (int, float)) or not 0 <= degrees <= 180:
            raise UserInputError(f"degrees must be in [0, 180] (YOLOX: 10); got {degrees!r}")
        if not isinstance(translate, (int, float)) or not 0 <= translate <= 0.5:
            raise UserInputError(f"translate must be in [0, 0.5] (fraction of the output side, YOLOX: 0.1); "
                                 f"got {translate!r}")
        if not isinstance(shear, (int, float)) or not 0 <= shear < 45:
            raise UserInputError(f"shear must be in [0, 45) degrees (YOLOX: 2); got {shear!r}")
        if not isinstance(fill, int) or not 0 <= fill <= 255:
            raise UserInputError(f"fill must be an integer grey level in [0, 255]; got {fill!r}")
        self.dataset = dataset
        self.output_size = output_size
        self.mosaic_prob = _check_prob(mosaic_prob, "mosaic_prob")
        self.mixup_prob = _check_prob(mixup_prob, "mixup_prob")
        self.flip_prob = _check_prob(flip_prob, "flip_prob")
        self.mosaic_scale = _check_range(mosaic_scale, "mosaic_scale")
        self.mixup_scale = _check_range(mixup_scale, "mixup_scale")
        self.degrees, self.translate, self.shear = float(degrees), float(translate), float(shear)
        self.hsv = _check_gains(hsv, "hsv")
        self.enabled, self.seed, self.fill = bool(enabled), int(seed), fill
        self.transforms = transforms
        self.epoch = 0
        self._with_boxes: np.ndarray | None = None  # positions of images with a box (MixUp partners)
        if hasattr(dataset, "image_labels"):
            offsets, _ = dataset.image_labels()
            self._with_boxes = np.flatnonzero(np.diff(np.asarray(offsets)) > 0)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:
        # Metadata (index, num_classes, image_labels, aspect_ratios, ...) comes from the wrapped dataset.
        if name.startswith("_") or name == "dataset":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def set_epoch(self, epoch: int) -> None:
        """Epoch of plain-index access (`ds[i]`); keys from `AugmentBatchSampler` carry their own."""
        self.epoch = int(epoch)

    # -- pieces
    def _load(self, i: int, size: int) -> tuple[torch.Tensor, tv_tensors.BoundingBoxes, torch.Tensor, dict]:
        """Image i resized to fit size x size (aspect kept): (uint8 [3, h, w], boxes [M, 4], labels [M], target)."""
        image, target = self.dataset[i]
        if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise UserInputError(f"MosaicMixUpDataset needs uint8 RGB images [3, H, W] from the wrapped dataset; item "
                                 f"{i} is {getattr(image, 'dtype', type(image).__name__)} of shape "
                                 f"{tuple(getattr(image, 'shape', ()))}: build the wrapped dataset without transforms")
        height, width = int(image.shape[-2]), int(image.shape[-1])
        boxes = _boxes(target["boxes"].as_subclass(torch.Tensor), (height, width))
        labels = torch.as_tensor(target["labels"], dtype=torch.int64)
        ratio = min(size / height, size / width)
        new = (max(1, min(size, round(height * ratio))), max(1, min(size, round(width * ratio))))
        if new != (height, width):
            image = F.resize(image, list(new), antialias=True)
            boxes = F.resize(boxes, list(new))
        return image.as_subclass(torch.Tensor), boxes, labels, target

    def _mosaic(self, rng: np.random.Generator, index: int, size: int) -> tuple[torch.Tensor, Any, torch.Tensor, dict]:
        """4 images on a 2S x 2S canvas around a random centre: (uint8 [3, 2S, 2S], boxes [M, 4], labels, target)."""
        xc, yc = int(rng.uniform(0.5 * size, 1.5 * size)), int(rng.uniform(0.5 * size, 1.5 * size))
        others = rng.integers(0, len(self), size=3)
        canvas = torch.full((3, 2 * size, 2 * size), self.fill, dtype=torch.uint8)
        all_boxes, all_labels, first = [], [], {}
        for k, i in enumerate([index, *others.tolist()]):
            image, boxes, labels, target = self._load(int(i), size)
            first = first or target
            h, w = image.shape[-2:]
            if k in (0, 2):  # left of the centre: the image ends at xc, cut by the canvas on its left
                x1, x2 = max(xc - w, 0), xc
                sx = w - (x2 - x1)
            else:  # right of the centre: starts at xc, cut on its right
                x1, x2 = xc, min(xc + w, 2 * size)
                sx = 0
            if k in (0, 1):  # above the centre
                y1, y2 = max(yc - h, 0), yc
                sy = h - (y2 - y1)
            else:
                y1, y2 = yc, min(yc + h, 2 * size)
                sy = 0
            canvas[:, y1:y2, x1:x2] = image[:, sy : sy + (y2 - y1), sx : sx + (x2 - x1)]
            shift = torch.tensor([x1 - sx, y1 - sy, x1 - sx, y1 - sy], dtype=torch.float32)
            all_boxes.append(boxes.as_subclass(torch.Tensor) + shift)
            all_labels.append(labels)
        boxes = F.clamp_bounding_boxes(_boxes(torch.cat(all_boxes), (2 * size, 2 * size)))
        return canvas, boxes, torch.cat(all_labels), first

    def _mixup(
        self, rng: np.random.Generator, image: torch.Tensor, boxes: Any, labels: torch.Tensor, size: int
    ) -> tuple[torch.Tensor, Any, torch.Tensor]:
        """Blend an S x S sample 50/50 with another image (module doc, step 3)."""
        pool = self._with_boxes
        if pool is not None and len(pool) == 0:
            return image, boxes, labels
        partner = int(pool[rng.integers(len(pool))]) if pool is not None else int(rng.integers(len(self)))
        jitter = float(rng.uniform(*self.mixup_scale))
        flip = bool(rng.random() < 0.5)
        other, other_boxes, other_labels, _ = self._load(partner, size)
        h, w = other.shape[-2:]
        canvas = torch.full((3, size, size), self.fill, dtype=torch.uint8)
        canvas[:, :h, :w] = other  # top-left of a grey S x S canvas
        cp_boxes = _boxes(other_boxes.as_subclass(torch.Tensor), (size, size))
        side = max(1, round(size * jitter))
        canvas = F.resize(canvas, [side, side], antialias=True)
        cp_boxes = F.resize(cp_boxes, [side, side])
        if flip:
            canvas, cp_boxes = F.horizontal_flip(canvas), F.horizontal_flip(cp_boxes)
        if side < size:  # pad right / bottom to S x S
            canvas = F.pad(canvas, [0, 0, size - side, size - side], fill=self.fill)
            cp_boxes = F.pad(cp_boxes, [0, 0, size - side, size - side])
        extent = max(side, size)
        y_off = int(rng.integers(0, extent - size)) if extent > size else 0
        x_off = int(rng.integers(0, extent - size)) if extent > size else 0
        crop = F.crop(canvas, y_off, x_off, size, size)
        cropped = F.crop(cp_boxes, y_off, x_off, size, size)
        keep = box_candidates(cp_boxes.as_subclass(torch.Tensor), cropped.as_subclass(torch.Tensor), min_size=5.0)
        if not bool(keep.any()):
            return image, boxes, labels
        blended = ((image.to(torch.int16) + crop.to(torch.int16)) // 2).to(torch.uint8)  # 0.5 a + 0.5 b, floored
        merged = torch.cat([boxes.as_subclass(torch.Tensor), cropped.as_subclass(torch.Tensor)[keep]])
        return blended, _boxes(merged, (size, size)), torch.cat([labels, other_labels[keep]])

    def _rng(self, epoch: int, index: int, draw: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, index, draw])

    def __getitem__(self, key: SampleKey | int) -> tuple[Any, dict[str, Any]]:
        if isinstance(key, SampleKey):
            index, epoch, draw, size, strong = key
        else:
            index, epoch, draw, size, strong = int(key), self.epoch, 0, self.output_size, True
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images")
        rng = self._rng(epoch, index, draw)
        if strong and self.enabled and rng.random() < self.mosaic_prob:
            canvas, boxes, labels, target = self._mosaic(rng, index, size)
            affine = draw_affine(rng, out_size=size, degrees=self.degrees, translate=self.translate,
                                 scale=self.mosaic_scale, shear=self.shear)
            image, boxes, labels = random_affine(canvas, boxes, labels, affine, out_size=size, fill=self.fill)
            if len(labels) and rng.random() < self.mixup_prob:
                image, boxes, labels = self._mixup(rng, image, boxes, labels, size)
        else:
            image, boxes, labels, target = self._load(index, size)
        image = adjust_hsv(image, *draw_hsv_shifts(rng, self.hsv))
        if rng.random() < self.flip_prob:
            image, boxes = F.horizontal_flip(image), F.horizontal_flip(boxes)
        data = boxes.as_subclass(torch.Tensor)
        keep = ((data[:, 2] - data[:, 0]) > 1) & ((data[:, 3] - data[:, 1]) > 1)  # YOLOX TrainTransform
        out = {
            "boxes": _select(boxes, keep),
            "labels": labels[keep],
            "image_id": target["image_id"],
            "orig_size": target["orig_size"],
        }
        image = tv_tensors.Image(image)
        if self.transforms is not None:
            image, out = self.transforms(image, out)
        out["size"] = (int(image.shape[-2]), int(image.shape[-1]))
        return image, out
