"""Box regression losses on torchvision's box ops.

Shape letters: P positive anchors (boxes).
"""

from __future__ import annotations

import torch
from torchvision.ops import generalized_box_iou_loss


def giou_loss(pred_boxes: torch.Tensor, target_boxes: torch.Tensor, weight: torch.Tensor | None = None,
              normalizer: float | torch.Tensor | None = None) -> torch.Tensor:
    """sum_p weight[p] * (1 - GIoU(pred[p], target[p])) / normalizer.

    pred_boxes, target_boxes: float [P, 4] xyxy (absolute pixels); weight: [P] (e.g. the detached IoU target of the
    improved baseline) or None for 1; normalizer: default max(P, 1). An empty P gives an exact 0 that still
    back-propagates (zero gradients), so a batch without foreground anchors needs no special case.
    """
    if pred_boxes.dim() != 2 or pred_boxes.shape[-1] != 4 or pred_boxes.shape != target_boxes.shape:
        raise ValueError(f"giou_loss: pred_boxes and target_boxes must both have shape [P, 4], got "
                         f"{tuple(pred_boxes.shape)} and {tuple(target_boxes.shape)}")
    num_boxes = pred_boxes.shape[0]
    if weight is not None and (weight.dim() != 1 or weight.shape[0] != num_boxes):
        raise ValueError(f"giou_loss: weight must have shape [P] = [{num_boxes}], got {tuple(weight.shape)}")
    if normalizer is None:
        norm = float(max(num_boxes, 1))
    else:
        norm = float(normalizer.detach()) if isinstance(normalizer, torch.Tensor) else float(normalizer)
        if not norm > 0:
            raise ValueError(f"giou_loss: normalizer must be a positive number, got {norm}")
    if num_boxes == 0:
        return pred_boxes.sum() * 0.0
    losses = generalized_box_iou_loss(pred_boxes.float(), target_boxes.float(), reduction="none")  # [P]
    if weight is not None:
        losses = losses * weight.detach().float()
    return losses.sum() / norm
