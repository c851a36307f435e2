"""SimOTA assignment of YOLOX (Ge et al., 2021, "YOLOX: Exceeding YOLO Series in 2021"), as in its first
releases (the version the EFL paper's Table 8 "Sigmoid" rows were trained with).

Shape letters: K points in all levels, C foreground classes, M ground-truth boxes, Q candidate points
(inside some GT box or some GT's centre region), T = min(candidate_topk, Q).

Unlike ATSS / FCOS, SimOTA looks at the predictions: the cost of giving point k to GT m is
    cost[m, k] = BCE(scores[k], one_hot(label_m)) summed over classes + 3 * (-log(IoU(pred_k, gt_m) + 1e-8))
                 + 1e5 if the point is not both inside GT m and inside GT m's centre region,
and every GT takes its `dynamic k` cheapest candidates, k = max(1, int(sum of its top-10 candidate IoUs)).
Later YOLOX releases changed the geometry (centre region of 1.5 strides only); this file keeps the original
2.5-stride "in box or in centre region" candidates and exposes the radius as an argument.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_iou

from efldet.errors import UserInputError
from efldet.losses.common import row_chunks
from efldet.models.assigners.common import BACKGROUND

_INDEX_BITS = 24  # candidate index bits in the top-k key (16.7 M candidates per image)
_LOG_CLAMP = -100.0  # log(p) is clamped here, as torch.nn.functional.binary_cross_entropy does


class YOLOXScores:
    """YOLOX's class probabilities sqrt(sigmoid(cls) x sigmoid(obj)) of one image, computed only for the rows
    that are read: `scores[rows]` -> float32 [R, C]; `shape` = (K, C). Pass it as `pred_scores` of
    `simota_assign` instead of a [K, C] tensor to skip the points that are no candidates.

    Args:
        cls_logits: [K, C]; obj_logits: [K] (detached by the caller or used under no_grad).
    """

    def __init__(self, cls_logits: Tensor, obj_logits: Tensor) -> None:
        if cls_logits.dim() != 2 or obj_logits.shape != cls_logits.shape[:1]:
            raise UserInputError(f"YOLOXScores: cls_logits must be [K, C] and obj_logits [K], got "
                                 f"{tuple(cls_logits.shape)} and {tuple(obj_logits.shape)}")
        self.cls_logits, self.obj_logits = cls_logits, obj_logits
        self.shape = cls_logits.shape

    def dim(self) -> int:
        return 2

    def __getitem__(self, rows: Tensor) -> Tensor:
        obj = torch.sigmoid(self.obj_logits[rows].float())  # [R]
        return torch.sigmoid(self.cls_logits[rows].float()).mul_(obj[:, None]).sqrt_()  # [R, C]


@torch.no_grad()
def dynamic_k_matching(cost: Tensor, ious: Tensor, candidate_topk: int = 10) -> Tensor:
    """SimOTA's dynamic-k matching on a cost matrix.

    Args:
        cost: [M, Q] float (NaN counts as +inf, negatives as 0): the cost of giving candidate q to GT m.
        ious: [M, Q] float in [0, 1]: IoU of each candidate's predicted box with each GT.
        candidate_topk: how many of the best IoUs of a GT estimate its k (10 in YOLOX).
    Returns:
        int64 [Q]: the GT each candidate goes to, or -1.

    Steps:
        1. k_m = max(1, int(sum of the T = min(candidate_topk, Q) largest IoUs of GT m)), so 1 <= k_m <= T.
        2. GT m selects its k_m cheapest candidates (equal costs: the lower candidate index first).
        3. A candidate selected by several GTs goes to the GT of lowest cost in its column, over all GTs
           as in YOLOX (the lowest GT index on equal cost); a candidate selected once goes to its selector.
    """
    num_gt, num_cand = cost.shape
    owner = torch.full((num_cand,), BACKGROUND, dtype=torch.int64, device=cost.device)
    if num_gt == 0 or num_cand == 0:
        return owner
    if num_cand >= 1 << _INDEX_BITS:
        raise UserInputError(f"dynamic_k_matching supports up to {1 << _INDEX_BITS} candidates, got {num_cand}")
    topk = min(candidate_topk, num_cand)
    # 1. dynamic k per GT.
    dynamic_k = ious.float().topk(topk, dim=1).values.sum(dim=1).to(torch.int64).clamp(min=1)  # [M]
    # 2. k_m cheapest per GT in one top-k: a non-negative float32's bits order like the float, so
    # (bits << 24) | index sorts by cost, then by candidate index.
    cost = torch.nan_to_num(cost.float(), nan=float("inf")).clamp(min=0.0)  # [M, Q]
    index = torch.arange(num_cand, device=cost.device)  # [Q]
    key = (cost.view(torch.int32).to(torch.int64) << _INDEX_BITS) | index  # [M, Q]
    cheapest = key.topk(topk, dim=1, largest=False).values.bitwise_and_((1 << _INDEX_BITS) - 1)  # [M, T], sorted
    rank = torch.arange(topk, device=cost.device)  # [T]
    selected = rank[None, :] < dynamic_k[:, None]  # [M, T]
    matching = torch.zeros((num_gt, num_cand), dtype=torch.bool, device=cost.device)
    matching.scatter_(1, cheapest, selected)  # [M, Q]
    # 3. one GT per candidate.
    times_selected = matching.sum(dim=0)  # [Q]
    owner = torch.where(times_selected > 0, matching.to(torch.uint8).argmax(dim=0), owner)  # first selector
    shared = (times_selected > 1).nonzero().squeeze(1)  # [S] candidates selected more than once
    if shared.numel() > 0:
        owner[shared] = cost[:, shared].argmin(dim=0)  # first minimum = lowest GT index on ties
    return owner


@torch.no_grad()
def simota_candidates(points: Tensor, strides: Tensor, gt_boxes: Tensor, center_radius: float = 2.5
                      ) -> tuple[Tensor, Tensor]:
    """Geometry of SimOTA: points [K, 2], strides [K], gt_boxes [M, 4] ->
    (in_box [M, K], in_center [M, K]) bool: the point lies strictly inside GT m / strictly inside the square
    of half side `center_radius` x its stride around GT m's centre."""
    x, y = points[:, 0], points[:, 1]  # [K] each
    in_box = torch.stack(
        [x - gt_boxes[:, 0:1], y - gt_boxes[:, 1:2], gt_boxes[:, 2:3] - x, gt_boxes[:, 3:4] - y], dim=0
    ).amin(dim=0) > 0  # [M, K]
    cx, cy = (gt_boxes[:, 0:1] + gt_boxes[:, 2:3]) / 2, (gt_boxes[:, 1:2] + gt_boxes[:, 3:4]) / 2  # [M, 1] each
    radius = center_radius * strides  # [K]
    in_center = ((x - cx).abs() < radius) & ((y - cy).abs() < radius)  # [M, K]
    return in_box, in_center


@torch.no_grad()
def simota_assign(
    points: Tensor,
    strides: Tensor,
    pred_boxes: Tensor,
    pred_scores: Tensor | YOLOXScores,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    *,
    center_radius: float = 2.5,
    candidate_topk: int = 10,
    iou_weight: float = 3.0,
    outside_cost: float = 1e5,
) -> tuple[Tensor, Tensor]:
    """Assign the points of one image to ground-truth boxes with SimOTA.

    Args:
        points: [K, 2] (x, y) pixel centres of the grid cells ((grid + 0.5) x stride in YOLOX).
        strides: [K] stride of each point's level.
        pred_boxes: [K, 4] predicted boxes, xyxy pixels.
        pred_scores: [K, C] predicted class probabilities (YOLOX: sqrt(sigmoid(cls) * sigmoid(obj)), which
            `YOLOXScores` computes for the candidate rows only); only the candidates' rows are read.
        gt_boxes: [M, 4] xyxy pixels (M may be 0); gt_labels: int64 [M] in 0..C-1.
        center_radius: half side of the centre region, in strides.
        candidate_topk: IoUs summed for a GT's dynamic k (and the largest k).
        iou_weight: weight of -log(IoU + 1e-8) in the cost; outside_cost: added unless in box and in centre.
    Returns:
        (int64 [K] index of the assigned GT or -1 (`BACKGROUND`),
         float32 [K] IoU of each positive's predicted box with its GT, 0 for the background).

    Steps:
        1. Candidates: points inside some GT box or some GT's centre region (the union over GTs, Q points).
        2. Cost [M, Q] (module docstring): the classification BCE of all C classes as
           sum_c -log(1 - p_c) + log(1 - p_y) - log(p_y), so that only [Q, C] + [Q, M] values are computed.
        3. `dynamic_k_matching` (at most min(10, Q) points per GT before conflicts are resolved).
    Steps 1-2 are `simota_cost`.
    """
    num_points, num_gt = points.shape[0], gt_boxes.shape[0]
    _check_shapes(points, strides, pred_boxes, pred_scores, gt_boxes, gt_labels)
    assigned = torch.full((num_points,), BACKGROUND, dtype=torch.int64, device=points.device)
    assigned_iou = torch.zeros(num_points, dtype=torch.float32, device=points.device)
    if num_gt == 0 or num_points == 0:
        return assigned, assigned_iou
    cand, cost, ious = simota_cost(points, strides, pred_boxes, pred_scores, gt_boxes, gt_labels,
                                   center_radius=center_radius, iou_weight=iou_weight, outside_cost=outside_cost)
    owner = dynamic_k_matching(cost, ious, candidate_topk)  # [Q]
    matched = (owner >= 0).nonzero().squeeze(1)  # [P] candidate slots with a GT
    assigned[cand[matched]] = owner[matched]
    assigned_iou[cand[matched]] = ious[owner[matched], matched]
    return assigned, assigned_iou


@torch.no_grad()
def simota_cost(
    points: Tensor,
    strides: Tensor,
    pred_boxes: Tensor,
    pred_scores: Tensor | YOLOXScores,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    *,
    center_radius: float = 2.5,
    iou_weight: float = 3.0,
    outside_cost: float = 1e5,
) -> tuple[Tensor, Tensor, Tensor]:
    """Steps 1-2 of `simota_assign` (same arguments, M >= 1) -> (candidate point indices int64 [Q],
    cost [M, Q] float32, IoU [M, Q] float32 of each candidate's predicted box with each GT)."""
    device = points.device
    points, strides = points.float(), strides.to(device=device, dtype=torch.float32)
    gt_boxes = gt_boxes.to(device=device, dtype=torch.float32)
    gt_labels = gt_labels.to(device=device, dtype=torch.int64)
    # 1. candidates (union over GTs) and the strict "in box and in centre" pairs.
    in_box, in_center = simota_candidates(points, strides, gt_boxes, center_radius)  # [M, K] each
    cand = (in_box | in_center).any(dim=0).nonzero().squeeze(1)  # [Q] point indices
    in_both = in_box[:, cand] & in_center[:, cand]  # [M, Q]
    # 2. cost.
    ious = box_iou(gt_boxes, pred_boxes[cand].float()).nan_to_num_(0.0)  # [M, Q]
    # The [Q, C] probabilities are read in row chunks that stay small (CPU caches, no big allocations):
    # from each, sum_c -log(1 - p_c) [R] and the probabilities of the GTs' classes [R, M].
    num_cand, num_classes = cand.numel(), pred_scores.shape[1]
    negative_total = torch.empty(num_cand, device=device)  # [Q]: every class taken as a negative
    probs_at_label = torch.empty(num_cand, gt_labels.numel(), device=device)  # [Q, M]
    for start, stop in row_chunks(num_cand, num_classes, device):
        probs = pred_scores[cand[start:stop]].float()  # [R, C]
        probs_at_label[start:stop] = probs[:, gt_labels]
        negative_total[start:stop] = probs.neg().log1p_().clamp_(min=_LOG_CLAMP).sum(dim=1).neg_()
    probs_at_label = probs_at_label.t()  # [Q, M] -> [M, Q]
    cls_cost = (
        negative_total[None, :]
        + torch.log1p(-probs_at_label).clamp_(min=_LOG_CLAMP)
        - torch.log(probs_at_label).clamp_(min=_LOG_CLAMP)
    )  # [M, Q]: the GT's class taken as the positive
    cost = cls_cost + iou_weight * -torch.log(ious + 1e-8) + outside_cost * (~in_both).float()  # [M, Q]
    return cand, cost, ious


def _check_shapes(points: Tensor, strides: Tensor, pred_boxes: Tensor, pred_scores: Tensor | YOLOXScores,
                  gt_boxes: Tensor, gt_labels: Tensor) -> None:
    """Raise `UserInputError` naming the argument whose shape does not fit the others."""
    k = points.shape[0] if points.dim() == 2 else -1
    expected = {
        "points": (points, (k, 2)),
        "strides": (strides, (k,)),
        "pred_boxes": (pred_boxes, (k, 4)),
        "pred_scores": (pred_scores, (k, pred_scores.shape[-1] if pred_scores.dim() == 2 else -1)),
        "gt_boxes": (gt_boxes, (gt_boxes.shape[0] if gt_boxes.dim() == 2 else -1, 4)),
        "gt_labels": (gt_labels, (gt_boxes.shape[0] if gt_boxes.dim() >= 1 else -1,)),
    }
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape or -1 in shape:
            raise UserInputError(
                f"simota_assign: {name} has shape {tuple(tensor.shape)}, expected {list(shape)} (K = points, "
                "M = GT boxes, C = classes); pass one image's points [K,2], strides [K], pred_boxes [K,4], "
                "pred_scores [K,C], gt_boxes [M,4], gt_labels [M]"
            )
