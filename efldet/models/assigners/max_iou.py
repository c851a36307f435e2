"""Max-IoU assignment (RetinaNet): IoU >= 0.5 foreground, < 0.4 background, in between ignored.

Shape letters: K anchors in all levels, K_l anchors on level l, M ground-truth boxes.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_iou

from efldet.models.assigners.common import BACKGROUND, IGNORE


@torch.no_grad()
def max_iou_assign(
    anchors_per_level: list[Tensor],
    gt_boxes: Tensor,
    fg_iou: float = 0.5,
    bg_iou: float = 0.4,
    allow_low_quality: bool = True,
) -> Tensor:
    """Assign each anchor to the GT it overlaps most, to the background, or ignore it.

    Args:
        anchors_per_level: L tensors [K_l, 4] xyxy.
        gt_boxes: [M, 4] xyxy (M may be 0).
    Returns:
        int64 [K]: GT index, -1 (`BACKGROUND`) or -2 (`IGNORE`).

    Steps:
        1. IoU [K, M] (`torchvision.ops.box_iou`); each anchor's best GT (the lowest index on ties).
        2. best IoU >= `fg_iou`: that GT; < `bg_iou`: background; in between: ignored.
        3. With `allow_low_quality`, every anchor whose IoU with some GT equals that GT's highest IoU
           (when > 0) gets its own best GT back, so that every GT has at least one anchor.
    """
    anchors = torch.cat(anchors_per_level, dim=0).float()  # [K, 4]
    assigned = torch.full((anchors.shape[0],), BACKGROUND, dtype=torch.int64, device=anchors.device)
    if gt_boxes.shape[0] == 0 or anchors.shape[0] == 0:
        return assigned
    ious = box_iou(anchors, gt_boxes.to(anchors))  # [K, M]
    best_iou, best_gt = ious.max(dim=1)  # [K] each
    assigned = best_gt.clone()
    assigned[best_iou < fg_iou] = IGNORE
    assigned[best_iou < bg_iou] = BACKGROUND
    if allow_low_quality:
        best_per_gt = ious.max(dim=0).values  # [M]
        is_best = (ious == best_per_gt[None, :]) & (best_per_gt[None, :] > 0)  # [K, M]
        low_quality = is_best.any(dim=1)  # [K]
        assigned[low_quality] = best_gt[low_quality]
    return assigned
