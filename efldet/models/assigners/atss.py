"""ATSS assignment (Zhang et al., CVPR 2020, "Adaptive Training Sample Selection").

Shape letters: K anchors in all levels, K_l anchors on level l, M ground-truth boxes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from efldet.models.assigners.common import BACKGROUND
from efldet.structures import paired_box_iou

_INDEX_BITS = 24  # anchor index bits in the top-k key (16.7 M anchors per level)


@torch.no_grad()
def atss_assign(
    anchors_per_level: list[Tensor], gt_boxes: Tensor, topk: int = 18, inside_eps: float = 0.01
) -> Tensor:
    """Assign each anchor to a ground-truth box or to the background.

    Args:
        anchors_per_level: L tensors [K_l, 4], xyxy, in the order of the head outputs.
        gt_boxes: [M, 4] xyxy (M may be 0).
        topk: candidates per level and per GT (9 in ATSS, 18 in the improved baseline with 2 anchors).
        inside_eps: how far (pixels) inside a GT an anchor centre must be.
    Returns:
        int64 [K]: index of the assigned GT, or -1 (`BACKGROUND`).

    Steps:
        1. Distance [M, K] between GT centres and anchor centres.
        2. On every level, the `min(topk, K_l)` anchors whose centres are closest to each GT are its
           candidates (ties at equal distance go to the lower anchor index): T = sum of those per GT.
        3. Each GT's IoU threshold is the mean + standard deviation of its T candidates' IoUs (computed for
           the candidates only; std with Bessel's correction, 0 when T = 1).
        4. A candidate is positive when its IoU >= the threshold and its centre lies inside the GT
           (more than `inside_eps` pixels from every side).
        5. An anchor that is positive for several GTs goes to the one with the highest IoU (the lowest
           GT index on equal IoU); every other anchor is background.
    """
    anchors = torch.cat(anchors_per_level, dim=0).float()  # [K, 4]
    num_anchors, num_gt = anchors.shape[0], gt_boxes.shape[0]
    assigned = torch.full((num_anchors,), BACKGROUND, dtype=torch.int64, device=anchors.device)
    if num_gt == 0 or num_anchors == 0:
        return assigned
    gt_boxes = gt_boxes.to(anchors)
    if max(a.shape[0] for a in anchors_per_level) >= 1 << _INDEX_BITS:
        raise ValueError(f"atss_assign supports up to {1 << _INDEX_BITS} anchors per level")
    # 1-2. Only the [M, K] centre distances are computed for all pairs; IoUs only for the T candidates.
    anchor_ctr = (anchors[:, :2] + anchors[:, 2:]) / 2  # [K, 2]
    gt_ctr = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2  # [M, 2]
    candidates, start = [], 0
    for level_anchors in anchors_per_level:
        count = level_anchors.shape[0]
        k = min(topk, count)
        if k > 0:
            # exact distances (no matrix-product shortcut), so that symmetric anchors tie exactly
            dist = torch.cdist(
                gt_ctr, anchor_ctr[start : start + count], compute_mode="donot_use_mm_for_euclid_dist"
            )  # [M, K_l]
            # a non-negative float32's bits order like the float: (bits << 24) | index sorts by distance,
            # then by anchor index, so ties go to the lowest index in one exact top-k
            key = (dist.view(torch.int32).to(torch.int64) << _INDEX_BITS) | torch.arange(count, device=dist.device)
            nearest = key.topk(k, dim=1, largest=False).values  # [M, k]
            candidates.append(nearest.bitwise_and_((1 << _INDEX_BITS) - 1) + start)
        start += count
    cand = torch.cat(candidates, dim=1)  # [M, T] anchor indices
    num_candidates = cand.shape[1]
    gt_rep = gt_boxes[:, None, :].expand(-1, num_candidates, -1).reshape(-1, 4)  # [M*T, 4]
    cand_ious = paired_box_iou(gt_rep, anchors[cand.reshape(-1)]).view(num_gt, num_candidates)  # [M, T]
    # 3. adaptive IoU threshold per GT.
    correction = 1 if num_candidates > 1 else 0
    threshold = cand_ious.mean(dim=1) + cand_ious.std(dim=1, correction=correction)  # [M]
    # 4. IoU above the threshold and centre inside the GT.
    cx, cy = anchor_ctr[cand, 0], anchor_ctr[cand, 1]  # [M, T] each
    inside = torch.stack(
        [cx - gt_boxes[:, 0:1], cy - gt_boxes[:, 1:2], gt_boxes[:, 2:3] - cx, gt_boxes[:, 3:4] - cy], dim=0
    ).amin(dim=0) > inside_eps  # [M, T]
    positive = (cand_ious >= threshold[:, None]) & inside  # [M, T]
    # 5. resolve anchors claimed by several GTs: highest IoU, then lowest GT index.
    gt_idx, slot = positive.nonzero(as_tuple=True)  # [P] each, P positive (GT, candidate) pairs
    anchor_idx, pos_iou = cand[gt_idx, slot], cand_ious[gt_idx, slot]  # [P] each
    best_iou = torch.full((num_anchors,), -1.0, device=anchors.device)
    best_iou.scatter_reduce_(0, anchor_idx, pos_iou, reduce="amax")  # [K]
    wins = pos_iou == best_iou[anchor_idx]  # [P]
    assigned.scatter_reduce_(0, anchor_idx[wins], gt_idx[wins], reduce="amin", include_self=False)
    return assigned
