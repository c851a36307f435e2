"""Quality focal loss (Generalized Focal Loss) with IoU-aware soft targets, on the fused focal-family kernel.

Shape letters: K anchors (rows), C foreground classes.
Label convention: int64 [K]; 0..C-1 foreground class, C background, -1 ignored.
`scores` float [K]: the quality target y' (IoU of the decoded box with its ground truth) of each foreground anchor;
the values of background / ignored rows are not read. Scores are targets: they receive no gradient.
"""

from __future__ import annotations

import torch
from torch import nn

from efldet.losses.common import check_logits_labels, check_scores, resolve_normalizer
from efldet.losses.focal import dense_sigmoid_loss


def quality_focal_loss(logits: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor, beta: float = 2.0,
                       normalizer: float | torch.Tensor | None = None) -> torch.Tensor:
    """QFL = -|y' - p|^beta ((1 - y') log(1 - p) + y' log p), summed and divided by `normalizer`.

    y' = scores[k] at the anchor's own class, 0 elsewhere. normalizer: default max(#foreground rows, 1).
    """
    check_logits_labels(logits, labels, where="quality_focal_loss")
    check_scores(scores, logits.shape[0], where="quality_focal_loss")
    num_classes = logits.shape[1]
    norm = resolve_normalizer(normalizer, labels, num_classes, where="quality_focal_loss")
    ones = torch.ones(num_classes, device=logits.device)
    return dense_sigmoid_loss(logits, labels, scores=scores.detach(), gamma=torch.full_like(ones, float(beta)),
                              pos_weight=ones, neg_weight=ones, normalizer=norm)


class QualityFocalLoss(nn.Module):
    """Module form of `quality_focal_loss`; `scores` are required."""

    needs_scores = True

    def __init__(self, beta: float = 2.0) -> None:
        super().__init__()
        self.beta = beta

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor | None = None,
                normalizer: float | torch.Tensor | None = None) -> torch.Tensor:
        check_scores(scores, logits.shape[0] if logits.dim() > 0 else -1, where="QualityFocalLoss")
        return quality_focal_loss(logits, labels, scores, beta=self.beta, normalizer=normalizer)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"
