"""Image decoding, torchvision v2 transforms on (image, target), padding and collation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from efldet.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    collate_detection,
    eval_transforms,
    pad_images,
    read_image,
    train_transforms,
)
from efldet.data.transforms import resize_shorter_side


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("RGB", "png"),
        ("L", "png"),
        ("RGBA", "png"),
        ("P", "png"),
        ("I;16", "png"),
        ("RGB", "jpeg"),
        ("L", "jpeg"),
    ],
)
def test_read_image_is_rgb_uint8(tmp_path, mode, fmt):
    rgb = np.zeros((9, 13, 3), np.uint8)
    rgb[:, :6] = (200, 30, 60)
    img = Image.fromarray(rgb)
    if mode == "L":
        img = img.convert("L")
    elif mode == "RGBA":
        img = img.convert("RGBA")
    elif mode == "P":
        img = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    elif mode == "I;16":
        img = Image.fromarray((np.arange(9 * 13).reshape(9, 13) * 300).astype(np.uint16))
    path = tmp_path / f"x.{fmt}"
    img.save(path, quality=100) if fmt == "jpeg" else img.save(path)
    out = read_image(str(path))
    assert isinstance(out, tv_tensors.Image) and out.shape == (3, 9, 13) and out.dtype == torch.uint8
    if mode in ("RGB", "RGBA", "P"):
        tol = 8 if fmt == "jpeg" else 0
        assert (out[:, 4, 2].int() - torch.tensor([200, 30, 60])).abs().max() <= tol
        assert out[:, 4, 10].int().max() <= tol
    if mode == "L":
        assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
    if mode == "I;16":  # scaled to 8 bits, grey
        assert abs(int(out[0, -1, -1]) - (9 * 13 - 1) * 300 * 255 / 65535) <= 1 and torch.equal(
            out[0], out[2]
        )


def _sample(h=60, w=80):
    image = tv_tensors.Image(torch.randint(0, 256, (3, h, w), dtype=torch.uint8))
    boxes = tv_tensors.BoundingBoxes(
        torch.tensor([[5.0, 6, 30, 40], [50, 10, 79, 59], [70, 0, 80.5, 0.2]]),
        format="XYXY",
        canvas_size=(h, w),
    )
    return image, {"boxes": boxes, "labels": torch.tensor([3, 1, 2]), "image_id": 11, "orig_size": (h, w)}


def test_train_transforms_resize_flip_normalise_and_drop_empty_boxes():
    torch.manual_seed(0)
    image, target = _sample()
    tf = train_transforms(min_sizes=[120], max_size=1000, flip_prob=1.0)
    out, t = tf(image, target)
    # shorter side 60 -> 120, aspect kept; flipped; the box 0.4 px high after resizing dropped with its label
    assert out.shape == (3, 120, 160) and out.dtype == torch.float32
    assert t["labels"].tolist() == [3, 1] and t["image_id"] == 11 and t["orig_size"] == (60, 80)
    expected = torch.tensor([[80 - 30, 6, 80 - 5, 40], [80 - 79, 10, 80 - 50, 59]]) * 2.0
    torch.testing.assert_close(t["boxes"].as_subclass(torch.Tensor), expected)
    assert t["boxes"].canvas_size == (120, 160)
    # ImageNet normalisation of the (flipped, resized) pixels
    ref = F.resize(F.horizontal_flip(image), [120, 160], antialias=True).float() / 255
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    torch.testing.assert_close(out.as_subclass(torch.Tensor), (ref - mean) / std, atol=1e-5, rtol=0)


def test_multiscale_choice_and_max_size():
    image, target = _sample(h=100, w=400)
    seen = set()
    tf = train_transforms(min_sizes=[64, 96], max_size=300, flip_prob=0.0)
    for seed in range(20):
        torch.manual_seed(seed)
        out, _ = tf(image, target)
        seen.add(tuple(out.shape[-2:]))
    # shorter side 64 -> 64 x 256; 96 would make the longer side 384 > 300, so 75 x 300
    assert seen == {(64, 256), (75, 300)}
    out, t = eval_transforms(min_size=50, max_size=1333)(image, target)
    assert out.shape[-2:] == (50, 200)


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(8, 90),
    w=st.integers(8, 90),
    xy=st.lists(
        st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=5
    ),
)
def test_flip_twice_is_identity(h, w, xy):
    raw = torch.tensor([[min(a, c) * w, min(b, d) * h, max(a, c) * w, max(b, d) * h] for a, b, c, d in xy])
    image = tv_tensors.Image(torch.randint(0, 256, (3, h, w), dtype=torch.uint8))
    boxes = tv_tensors.BoundingBoxes(raw, format="XYXY", canvas_size=(h, w))
    flip = v2.RandomHorizontalFlip(p=1.0)
    im2, b2 = flip(*flip(image, boxes))
    assert torch.equal(im2, image)
    torch.testing.assert_close(b2.as_subclass(torch.Tensor), raw, atol=1e-4, rtol=0)


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(16, 120),
    w=st.integers(16, 120),
    size=st.integers(16, 200),
    xy=st.lists(
        st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=5
    ),
)
def test_resize_round_trip_of_boxes(h, w, size, xy):
    raw = torch.tensor([[min(a, c) * w, min(b, d) * h, max(a, c) * w, max(b, d) * h] for a, b, c, d in xy])
    boxes = tv_tensors.BoundingBoxes(raw, format="XYXY", canvas_size=(h, w))
    image = tv_tensors.Image(torch.zeros(3, h, w, dtype=torch.uint8))
    # max_size above any longer side here (200 * 120 / 16 = 1500), so the shorter side is exactly `size`
    _, resized = resize_shorter_side([size], max_size=2000)(image, boxes)
    nh, nw = resized.canvas_size
    assert min(nh, nw) == size and abs(max(nh, nw) - size * max(h, w) / min(h, w)) < 1
    scale = torch.tensor([nw / w, nh / h, nw / w, nh / h])
    torch.testing.assert_close(resized.as_subclass(torch.Tensor), raw * scale, atol=1e-3, rtol=1e-4)
    back = F.resize(resized, [h, w])
    torch.testing.assert_close(back.as_subclass(torch.Tensor), raw, atol=1e-3, rtol=1e-4)


def test_pad_and_collate():
    a, b = torch.ones(3, 33, 40), torch.full((3, 20, 70), 2.0)
    batch, sizes = pad_images([a, b])
    assert batch.shape == (2, 3, 64, 96) and sizes == [(33, 40), (20, 70)]
    assert (
        batch[0, :, :33, :40].eq(1).all() and batch[0, :, 33:].eq(0).all() and batch[0, :, :, 40:].eq(0).all()
    )
    assert batch[1, :, :20, :70].eq(2).all() and batch[1, :, 20:].eq(0).all()
    _, t1 = _sample()
    images, targets = collate_detection([(tv_tensors.Image(a), t1), (tv_tensors.Image(b), dict(t1))], 16)
    assert images.shape == (2, 3, 48, 80) and type(images) is torch.Tensor
    assert targets[0]["image_size"] == (33, 40) and targets[1]["image_size"] == (20, 70)
    assert type(targets[0]["boxes"]) is torch.Tensor and targets[0]["labels"].tolist() == [3, 1, 2]
