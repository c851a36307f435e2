"""Post-processing of dense predictions: per-level top-k, class-aware NMS, top detections per image.

Shape letters: N images, K priors in all levels, K_l priors on level l, C foreground classes,
D kept candidates of one image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms, clip_boxes_to_image


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
    threshold: 0), then class-aware NMS (`torchvision.ops.batched_nms`) and the `max_per_image` best.
    """
    num_classes = cls_logits.shape[-1]
    results = []
    for i, (height, width) in enumerate(image_sizes):
        all_boxes, all_scores, all_labels = [], [], []
        start = 0
        for count in num_per_level:
            logits = cls_logits[i, start : start + count].float()  # [K_l, C]
            level_boxes = boxes[i, start : start + count]  # [K_l, 4]
            quality = (
                torch.sigmoid(quality_logits[i, start : start + count].float())
                if quality_logits is not None else None
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
        det_boxes = clip_boxes_to_image(torch.cat(all_boxes).float(), (height, width))  # [D, 4]
        det_scores, det_labels = torch.cat(all_scores), torch.cat(all_labels)  # [D] each
        kept = batched_nms(det_boxes, det_scores, det_labels, nms_iou)[:max_per_image]  # sorted by score
        results.append({"boxes": det_boxes[kept], "scores": det_scores[kept], "labels": det_labels[kept]})
    return results
