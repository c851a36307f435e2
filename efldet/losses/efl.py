"""Equalized Focal Loss (Eq. 2-4) and Equalized Quality Focal Loss (Eq. 5).

Shape letters: K anchors (rows), C foreground classes.
Label convention: int64 [K]; 0..C-1 foreground class, C background, -1 ignored.

For class j, with g_j = clamp(accumulated positive |dL/dx| / accumulated negative |dL/dx|, 0, 1) (g_j = 1 before
any statistics exist, so EFL equals focal loss at the first step):
    focusing factor  gamma_j = gamma_b + s (1 - g_j)                         (Eq. 3)
    weighting factor w_j     = gamma_j / gamma_b                             (Eq. 4)
    EFL  = -sum_j alpha_t w_j (1 - p_t)^gamma_j log(p_t)                     (Eq. 4)
    EQFL = -sum_j w_j |y' - p|^gamma_j (y' log p + (1 - y') log(1 - p))      (Eq. 5, y' = IoU target)
Both factors are detached (constants for the gradient). The statistics are the analytic |dL/dx| of the value the
module returns (Eq. 6), accumulated in float32 during backward and averaged over ranks (see grad_stats.py).
The ablation switches of Table 3 keep one factor at its focal-loss value: focusing_factor=False uses gamma_b for
every class, weighting_factor=False uses w_j = 1.
"""

from __future__ import annotations

import torch

from efldet.losses.common import check_logits_labels, check_scores, resolve_normalizer
from efldet.losses.focal import alpha_weights, dense_sigmoid_loss, reject_scores
from efldet.losses.grad_stats import GradientStatistics


class _EqualizedFactors(GradientStatistics):
    """Holds gamma_b, s, the ablation switches and the statistics; computes the per-class factors."""

    def __init__(self, num_classes: int, gamma_b: float, scale_factor: float, focusing_factor: bool,
                 weighting_factor: bool) -> None:
        super().__init__(num_classes)
        if not gamma_b > 0:
            raise ValueError(f"gamma_b must be > 0 (the weighting factor divides by it), got {gamma_b}")
        if scale_factor < 0:
            raise ValueError(f"scale_factor s must be >= 0, got {scale_factor}")
        self.gamma_b = float(gamma_b)
        self.scale_factor = float(scale_factor)
        self.focusing_factor = bool(focusing_factor)
        self.weighting_factor = bool(weighting_factor)

    @property
    def pos_neg_ratio(self) -> torch.Tensor:
        """g_j = clamp(pos_grad / neg_grad, 0, 1), float32 [C]; 1 before any backward."""
        return self.raw_ratio().clamp_(0.0, 1.0)

    @torch.no_grad()
    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(focusing exponent [C], weighting factor [C]) after the ablation switches."""
        gamma_j = self.gamma_b + self.scale_factor * (1.0 - self.pos_neg_ratio)   # Eq. 3
        exponent = gamma_j if self.focusing_factor else torch.full_like(gamma_j, self.gamma_b)
        weight = gamma_j / self.gamma_b if self.weighting_factor else torch.ones_like(gamma_j)
        return exponent, weight

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, gamma_b={self.gamma_b}, scale_factor={self.scale_factor}, "
                f"focusing_factor={self.focusing_factor}, weighting_factor={self.weighting_factor}")


class EqualizedFocalLoss(_EqualizedFactors):
    """EFL. `forward(logits [K, C], labels [K], normalizer=None) -> scalar`; buffers `pos_grad`, `neg_grad` [C]."""

    needs_scores = False

    def __init__(self, num_classes: int, gamma_b: float = 2.0, scale_factor: float = 8.0, alpha: float = 0.25,
                 focusing_factor: bool = True, weighting_factor: bool = True) -> None:
        super().__init__(num_classes, gamma_b, scale_factor, focusing_factor, weighting_factor)
        self.alpha = alpha

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor | None = None,
                normalizer: float | torch.Tensor | None = None) -> torch.Tensor:
        where = type(self).__name__
        reject_scores(scores, where)
        check_logits_labels(logits, labels, self.num_classes, where=where)
        norm = resolve_normalizer(normalizer, labels, self.num_classes, where=where)
        exponent, weight = self.factors()
        pos_w, neg_w = alpha_weights(self.alpha, self.num_classes, logits.device, scale=weight)
        return dense_sigmoid_loss(logits, labels, gamma=exponent, pos_weight=pos_w, neg_weight=neg_w,
                                  normalizer=norm, stats=self)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", alpha={self.alpha}"


class EqualizedQualityFocalLoss(_EqualizedFactors):
    """EQFL (Appendix A, Eq. 5). `forward(logits [K, C], labels [K], scores [K], normalizer=None) -> scalar`."""

    needs_scores = True

    def __init__(self, num_classes: int, gamma_b: float = 2.0, scale_factor: float = 8.0,
                 focusing_factor: bool = True, weighting_factor: bool = True) -> None:
        super().__init__(num_classes, gamma_b, scale_factor, focusing_factor, weighting_factor)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor | None = None,
                normalizer: float | torch.Tensor | None = None) -> torch.Tensor:
        where = type(self).__name__
        check_logits_labels(logits, labels, self.num_classes, where=where)
        check_scores(scores, logits.shape[0], where=where)
        norm = resolve_normalizer(normalizer, labels, self.num_classes, where=where)
        exponent, weight = self.factors()
        return dense_sigmoid_loss(logits, labels, scores=scores.detach(), gamma=exponent, pos_weight=weight,
                                  neg_weight=weight, normalizer=norm, stats=self)
