"""Post-processing of dense predictions: per-level top-k, class-aware NMS, top detections per image
(and PAA's score voting after NMS).

Shape letters: N images, K priors in all levels, K_l priors on level l, C foreground classes,
D kept candidates of one image, Q pre-NMS candidates of one image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image

PAA_VOTING_SIGMA = 0.025  # PAA's score voting: sigma of the IoU weighting (reference inference.py)
PAA_VOTING_MIN_IOU = 0.01  # PAA's score voting: candidates must overlap the detection by more than this


@torch.no_grad()
def postprocess_detections(
    cls_logits: Tensor,
    boxes: Tensor,
    quality_logits: Tensor | None,
    num_per_level: Sequence[int],
    image_sizes: Sequence[tuple[int, int]],
    *,
    pre_nms_topk: int = 1000,
    score_thresh: float = 0.0,
    nms_iou: float = 0.5,
    max_per_image: int = 300,
    voting_sigma: float | None = None,
) -> list[dict[str, Tensor]]:
    """Turn head outputs into detections.

    Args:
        cls_logits: [N, K, C] classification logits.
        boxes: [N, K, 4] decoded boxes, xyxy pixels of the padded batch.
        quality_logits: [N, K] IoU-branch / centerness logits, or None.
        num_per_level: K_l for each level (sum = K).
        image_sizes: (h, w) of every image, to clip its boxes.
    Returns:
        N dicts with `boxes` float32 [D, 4] (inside the image), `scores` float32 [D] (descending) and
        `labels` int64 [D] in 0..C-1, D <= max_per_image.

    Score = sigmoid(cls) * sigmoid(quality) (sigmoid(cls) alone without a quality branch). On every level
    the `pre_nms_topk` best (prior, class) pairs with score > `score_thresh` are kept (the paper uses no
    threshold: 0), then class-aware NMS (`torchvision.ops.batched_nms`) and the `max_per_image` best. With
    `voting_sigma` (PAA: 0.025) every kept box is then replaced by PAA's `score_voting` over the candidates.
    """
    results = []
    for i, size in enumerate(image_sizes):
        cand_boxes, cand_scores, cand_labels = dense_candidates(
            cls_logits[i], boxes[i], quality_logits[i] if quality_logits is not None else None, num_per_level,
            size, pre_nms_topk=pre_nms_topk, score_thresh=score_thresh,
        )  # [Q, 4], [Q], [Q]
        kept = batched_nms(cand_boxes, cand_scores, cand_labels, nms_iou)[:max_per_image]  # sorted by score
        det_boxes, det_labels = cand_boxes[kept], cand_labels[kept]  # [D, 4], [D]
        if voting_sigma is not None:
            det_boxes = score_voting(det_boxes, det_labels, cand_boxes, cand_scores, cand_labels, sigma=voting_sigma)
            det_boxes = clip_boxes_to_image(det_boxes, size)  # a mean of clipped boxes, up to rounding
        results.append({"boxes": det_boxes, "scores": cand_scores[kept], "labels": det_labels})
    return results


# ---------------------------------------------------------------------------------------- score voting (PAA)
@torch.no_grad()
def dense_candidates(
    cls_logits: Tensor,
    boxes: Tensor,
    quality_logits: Tensor | None,
    num_per_level: Sequence[int],
    image_size: tuple[int, int],
    *,
    pre_nms_topk: int = 1000,
    score_thresh: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """The pre-NMS candidates of ONE image (what `postprocess_detections` runs NMS on).

    Args:
        cls_logits: [K, C]; boxes: [K, 4] decoded xyxy; quality_logits: [K] or None; image_size: (h, w).
    Returns:
        boxes float32 [Q, 4] clipped to the image, scores [Q], labels int64 [Q] (Q <= L x pre_nms_topk).
    """
    num_classes = cls_logits.shape[-1]
    all_boxes, all_scores, all_labels = [], [], []
    start = 0
    for count in num_per_level:
        logits = cls_logits[start : start + count].float()  # [K_l, C]
        level_boxes = boxes[start : start + count]  # [K_l, 4]
        quality = (
            torch.sigmoid(quality_logits[start : start + count].float()) if quality_logits is not None else None
        )  # [K_l]
        start += count
        # The best (prior, class) pairs all lie among the priors with the best max-over-classes score:
        # rank priors first (one max over C) so that the full sigmoid runs on at most topk rows.
        prior_score = torch.sigmoid(logits.max(dim=1).values)  # [K_l]
        if quality is not None:
            prior_score = prior_score * quality
        k = min(pre_nms_topk, count)
        top_priors = prior_score.topk(k).indices  # [k]
        scores = torch.sigmoid(logits[top_priors])  # [k, C]
        if quality is not None:
            scores = scores * quality[top_priors, None]
        scores = scores.reshape(-1)  # [k*C], (prior, class) pairs
        keep = min(pre_nms_topk, scores.numel())
        top_scores, flat = scores.topk(keep)
        if score_thresh > 0:
            above = top_scores > score_thresh
            top_scores, flat = top_scores[above], flat[above]
        all_scores.append(top_scores)
        all_labels.append(flat % num_classes)
        all_boxes.append(level_boxes[top_priors[flat // num_classes]])
    cand_boxes = clip_boxes_to_image(torch.cat(all_boxes).float(), image_size)  # [Q, 4]
    return cand_boxes, torch.cat(all_scores), torch.cat(all_labels)


@torch.no_grad()
def score_voting(
    det_boxes: Tensor,
    det_labels: Tensor,
    cand_boxes: Tensor,
    cand_scores: Tensor,
    cand_labels: Tensor,
    *,
    sigma: float = PAA_VOTING_SIGMA,
    min_iou: float = PAA_VOTING_MIN_IOU,
) -> Tensor:
    """PAA's score voting: replace every kept detection's box by a weighted mean of the candidate boxes.

    Args:
        det_boxes: [D, 4] boxes kept by NMS; det_labels: [D].
        cand_boxes: [Q, 4] the pre-NMS candidates (the kept ones among them); cand_scores: [Q]; cand_labels: [Q].
    Returns:
        float32 [D, 4] voted boxes (scores and labels do not change).

    Each candidate of the detection's class whose IoU with it exceeds `min_iou` gets the weight
    p = exp(-(1 - IoU)^2 / sigma) * score; the box is sum p * box / sum p (PAA, Kim & Lee 2020, Sec. 3.4;
    sigma = 0.025 and IoU > 0.01 as in the reference code). A detection with no such candidate keeps its box.
    """
    if det_boxes.shape[0] == 0 or cand_boxes.shape[0] == 0:
        return det_boxes.float().clone()
    # float64: the weights magnify float32 rounding of the IoUs ((1 - IoU) / sigma up to 80x), and the mean runs
    # over up to thousands of candidates
    det64, cand64 = det_boxes.double(), cand_boxes.double()  # [D, 4], [Q, 4]
    iou = box_iou(det64, cand64)  # [D, Q]
    same = det_labels[:, None] == cand_labels[None, :]  # [D, Q]
    weight = torch.exp(-((1.0 - iou) ** 2) / sigma) * cand_scores.double()[None, :]  # [D, Q]
    weight = torch.where(same & (iou > min_iou), weight, 0.0)  # [D, Q]
    total = weight.sum(dim=1, keepdim=True)  # [D, 1]
    voted = (weight @ cand64) / total.clamp(min=torch.finfo(torch.float64).tiny)  # [D, 4]
    return torch.where(total > 0, voted, det64).float()
