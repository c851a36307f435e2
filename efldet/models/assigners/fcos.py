"""FCOS assignment with centre sampling (Tian et al., ICCV 2019; centre sampling as in ATSS's FCOS).

Shape letters: K points in all levels, K_l points on level l, M ground-truth boxes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from efldet.models.assigners.common import BACKGROUND

# Regression range of each level P3-P7: the largest side distance a point on that level may regress.
FCOS_SIZE_RANGES = ((0.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0), (512.0, math.inf))


@torch.no_grad()
def fcos_assign(
    points_per_level: list[Tensor],
    gt_boxes: Tensor,
    strides: Sequence[int] = (8, 16, 32, 64, 128),
    size_ranges: Sequence[tuple[float, float]] = FCOS_SIZE_RANGES,
    center_radius: float = 1.5,
) -> Tensor:
    """Assign each point to a ground-truth box or to the background.

    Args:
        points_per_level: L tensors [K_l, 2] (x, y).
        gt_boxes: [M, 4] xyxy (M may be 0).
        strides, size_ranges: per level.
        center_radius: centre sampling radius in strides (<= 0: anywhere inside the box).
    Returns:
        int64 [K]: index of the assigned GT, or -1 (`BACKGROUND`).

    Steps:
        1. Distances (l, t, r, b) [K, M, 4] from each point to the sides of each GT.
        2. Centre sampling: the point must lie strictly inside the region GT centre +- radius x stride of
           the point's level, intersected with the GT box.
        3. Scale range: the largest of (l, t, r, b) must lie in the point's level range [lo, hi].
        4. A point that qualifies for several GTs goes to the smallest GT by area (the lowest GT index
           on equal areas); every other point is background.
    """
    points = torch.cat(points_per_level, dim=0).float()  # [K, 2]
    num_points, num_gt = points.shape[0], gt_boxes.shape[0]
    assigned = torch.full((num_points,), BACKGROUND, dtype=torch.int64, device=points.device)
    if num_gt == 0 or num_points == 0:
        return assigned
    gt_boxes = gt_boxes.to(points)
    counts = [p.shape[0] for p in points_per_level]
    levels = list(zip(counts, strides, size_ranges, strict=False))
    stride = torch.cat([points.new_full((c,), float(s)) for c, s, _ in levels])  # [K]
    lo = torch.cat([points.new_full((c,), float(r[0])) for c, _, r in levels])  # [K]
    hi = torch.cat([points.new_full((c,), float(r[1])) for c, _, r in levels])  # [K]
    x, y = points[:, 0, None], points[:, 1, None]  # [K, 1] each
    # 1. distances to the box sides.
    ltrb = torch.stack(
        [x - gt_boxes[:, 0], y - gt_boxes[:, 1], gt_boxes[:, 2] - x, gt_boxes[:, 3] - y], dim=2
    )  # [K, M, 4]
    # 2. centre sampling region (or the whole box).
    if center_radius > 0:
        cx, cy = (gt_boxes[:, 0] + gt_boxes[:, 2]) / 2, (gt_boxes[:, 1] + gt_boxes[:, 3]) / 2  # [M]
        r = center_radius * stride[:, None]  # [K, 1]
        x1 = torch.maximum(cx - r, gt_boxes[:, 0])  # [K, M]
        y1 = torch.maximum(cy - r, gt_boxes[:, 1])
        x2 = torch.minimum(cx + r, gt_boxes[:, 2])
        y2 = torch.minimum(cy + r, gt_boxes[:, 3])
        inside = torch.stack([x - x1, y - y1, x2 - x, y2 - y], dim=2).amin(dim=2) > 0  # [K, M]
    else:
        inside = ltrb.amin(dim=2) > 0  # [K, M]
    # 3. level scale range.
    max_reg = ltrb.amax(dim=2)  # [K, M]
    in_range = (max_reg >= lo[:, None]) & (max_reg <= hi[:, None])  # [K, M]
    # 4. smallest GT wins.
    area = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])  # [M]
    cost = torch.where(inside & in_range, area[None, :], torch.full_like(max_reg, math.inf))  # [K, M]
    min_cost, best_gt = cost.min(dim=1)  # [K] each; first minimum = lowest GT index on ties
    valid = torch.isfinite(min_cost)
    assigned[valid] = best_gt[valid]
    return assigned
