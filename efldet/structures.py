"""Box coding and input checks for dense detectors.

Boxes are xyxy in absolute pixels, float32. IoU / GIoU matrices, format conversions and NMS are
`torchvision.ops` (`box_iou`, `generalized_box_iou`, `box_convert`, `batched_nms`); this file holds only
what torchvision lacks: anchor deltas, point distances, the element-wise IoU of paired boxes, the
centerness target, and the checks that turn bad images / targets into a `UserInputError`.

Shape letters: N images, K priors (anchors or points), M ground-truth boxes, P paired boxes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from efldet.errors import UserInputError

# exp() of a log-scale delta larger than this (a box 62.5x its anchor) is clamped, as in Detectron.
DELTA_SCALE_CLAMP = math.log(1000.0 / 16)


def encode_deltas(anchors: Tensor, boxes: Tensor, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> Tensor:
    """Deltas (dx, dy, dw, dh) that turn `anchors` [P,4] into `boxes` [P,4] -> [P,4] (R-CNN coding).

    dx = wx * (x_b - x_a) / w_a, dw = ww * log(w_b / w_a); same for y / h.
    """
    anchors, boxes = anchors.float(), boxes.float()
    wx, wy, ww, wh = weights
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + 0.5 * aw, anchors[:, 1] + 0.5 * ah
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    bx, by = boxes[:, 0] + 0.5 * bw, boxes[:, 1] + 0.5 * bh
    dx, dy = wx * (bx - ax) / aw, wy * (by - ay) / ah
    dw, dh = ww * torch.log(bw / aw), wh * torch.log(bh / ah)
    return torch.stack([dx, dy, dw, dh], dim=1)


def decode_deltas(
    anchors: Tensor, deltas: Tensor, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)
) -> Tensor:
    """Inverse of `encode_deltas`: anchors [P,4], deltas [..., P, 4] -> boxes [..., P, 4] float32.

    Log-scale deltas are clamped at log(1000/16) so that a wild prediction cannot overflow.
    """
    anchors, deltas = anchors.float(), deltas.float()
    wx, wy, ww, wh = weights
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + 0.5 * aw, anchors[:, 1] + 0.5 * ah
    dx, dy = deltas[..., 0] / wx, deltas[..., 1] / wy
    dw = (deltas[..., 2] / ww).clamp(max=DELTA_SCALE_CLAMP)
    dh = (deltas[..., 3] / wh).clamp(max=DELTA_SCALE_CLAMP)
    cx, cy = ax + dx * aw, ay + dy * ah
    half_w, half_h = 0.5 * aw * torch.exp(dw), 0.5 * ah * torch.exp(dh)
    return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1)


def encode_distances(points: Tensor, boxes: Tensor) -> Tensor:
    """Distances (left, top, right, bottom) from `points` [P,2] (x, y) to the sides of `boxes` [P,4]."""
    points, boxes = points.float(), boxes.float()
    return torch.stack(
        [points[:, 0] - boxes[:, 0], points[:, 1] - boxes[:, 1],
         boxes[:, 2] - points[:, 0], boxes[:, 3] - points[:, 1]],
        dim=1,
    )


def decode_distances(points: Tensor, distances: Tensor) -> Tensor:
    """Inverse of `encode_distances`: points [P,2], distances [..., P, 4] -> boxes [..., P, 4] float32."""
    points, distances = points.float(), distances.float()
    x, y = points[:, 0], points[:, 1]
    return torch.stack(
        [x - distances[..., 0], y - distances[..., 1], x + distances[..., 2], y + distances[..., 3]], dim=-1
    )


def paired_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """IoU of boxes1[i] with boxes2[i]: [P,4], [P,4] -> [P] (torchvision has only the [P,P] matrix)."""
    boxes1, boxes2 = boxes1.float(), boxes2.float()
    lt = torch.maximum(boxes1[:, :2], boxes2[:, :2])
    rb = torch.minimum(boxes1[:, 2:], boxes2[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    area1 = (boxes1[:, 2:] - boxes1[:, :2]).clamp(min=0).prod(dim=1)
    area2 = (boxes2[:, 2:] - boxes2[:, :2]).clamp(min=0).prod(dim=1)
    return inter / (area1 + area2 - inter).clamp(min=eps)


def centerness_target(points: Tensor, boxes: Tensor) -> Tensor:
    """FCOS centerness sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)): points [P,2], boxes [P,4] -> [P]."""
    ltrb = encode_distances(points, boxes).clamp(min=0)
    lr, tb = ltrb[:, 0::2], ltrb[:, 1::2]  # [P,2] each: (left, right), (top, bottom)
    ratio = (lr.min(dim=1).values / lr.max(dim=1).values.clamp(min=1e-6)) * (
        tb.min(dim=1).values / tb.max(dim=1).values.clamp(min=1e-6)
    )
    return ratio.sqrt()


def check_images(images: object, image_sizes: Sequence[Sequence[int]] | None) -> list[tuple[int, int]]:
    """Check a padded batch `images` [N,3,H,W] and its per-image (h, w) sizes; returns the sizes.

    `image_sizes=None` means every image fills the whole tensor.
    """
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        got = (
            f"{type(images).__name__} of shape {tuple(images.shape)} and dtype {images.dtype}"
            if isinstance(images, Tensor) else type(images).__name__
        )
        raise UserInputError(
            f"images must be a float tensor [N, 3, H, W] (a padded batch), got {got}; "
            "stack the images (padding to the largest) and pass their sizes as image_sizes"
        )
    n, _, height, width = images.shape
    if image_sizes is None:
        return [(int(height), int(width))] * n
    if len(image_sizes) != n:
        raise UserInputError(f"image_sizes has {len(image_sizes)} entries but images holds {n} images")
    sizes = []
    for i, size in enumerate(image_sizes):
        h, w = (int(v) for v in size)
        if not (0 < h <= height and 0 < w <= width):
            raise UserInputError(
                f"image_sizes[{i}] = ({h}, {w}) is not inside the padded batch of {height} x {width}; "
                "give each image's real (height, width) before padding"
            )
        sizes.append((h, w))
    return sizes


def check_targets(targets: object, num_images: int, num_classes: int) -> None:
    """Raise `UserInputError` unless `targets` is a list of `num_images` dicts with valid `boxes` float
    [M,4] xyxy (finite, x1 <= x2, y1 <= y2) and `labels` int64 [M] in 0..num_classes-1."""
    if not isinstance(targets, (list, tuple)) or len(targets) != num_images:
        n = len(targets) if isinstance(targets, (list, tuple)) else type(targets).__name__
        raise UserInputError(
            f"targets must be a list with one dict per image ({num_images}), got {n}; "
            "in train mode call model(images, targets)"
        )
    for i, target in enumerate(targets):
        where = f"targets[{i}]"
        if not isinstance(target, dict) or "boxes" not in target or "labels" not in target:
            raise UserInputError(f"{where} must be a dict with keys 'boxes' [M,4] and 'labels' [M]")
        boxes, labels = target["boxes"], target["labels"]
        if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
            shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
            raise UserInputError(f"{where}['boxes'] must be a tensor of shape [M, 4] (xyxy), got {shape}")
        if not boxes.is_floating_point():
            raise UserInputError(f"{where}['boxes'] must be float (xyxy absolute pixels), got {boxes.dtype}")
        if not isinstance(labels, Tensor) or labels.shape != boxes.shape[:1] or labels.is_floating_point():
            shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
            raise UserInputError(
                f"{where}['labels'] must be an integer tensor of shape [{boxes.shape[0]}] (one per box), "
                f"got {shape}"
            )
        if boxes.numel() == 0:
            continue
        bad = ~torch.isfinite(boxes).all(dim=1)
        if bad.any():
            j = int(bad.nonzero()[0])
            raise UserInputError(
                f"{where}['boxes'][{j}] = {boxes[j].tolist()} is not finite (NaN or inf); fix or drop that "
                "annotation"
            )
        bad = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
        if bad.any():
            j = int(bad.nonzero()[0])
            raise UserInputError(
                f"{where}['boxes'][{j}] = {boxes[j].tolist()} has x2 < x1 or y2 < y1; boxes must be xyxy "
                "(convert xywh with torchvision.ops.box_convert)"
            )
        bad = (labels < 0) | (labels >= num_classes)
        if bad.any():
            j = int(bad.nonzero()[0])
            raise UserInputError(
                f"{where}['labels'][{j}] = {int(labels[j])} is outside 0..{num_classes - 1} "
                f"(num_classes={num_classes}); labels are contiguous foreground indices"
            )
