"""EQLv2&Focal (Table 1, Eq. 7): focal loss re-weighted by EQLv2's gradient-guided weights.

Shape letters: K anchors (rows), C foreground classes.
Label convention: int64 [K]; 0..C-1 foreground class, C background, -1 ignored.

With r_j = accumulated positive |dL/dx| / accumulated negative |dL/dx| of class j and
f(r) = 1 / (1 + exp(-gamma (r - mu))) (gamma = 12, mu = 0.8):
    negative weight  f(r_j),   positive weight  1 + alpha (1 - f(r_j))   (alpha = 4)
    loss = sum_j w_t * FL(p_t)                         (focal loss with alpha_t = 0.25, gamma = 2)
Before any statistics exist both weights are 1 (plain focal loss), as in EQLv2. The statistics are the analytic
|dL/dx| of the returned value (Eq. 7), in float32, accumulated in backward and averaged over ranks.
"""

from __future__ import annotations

import torch

from efldet.losses.common import check_logits_labels, resolve_normalizer
from efldet.losses.focal import alpha_weights, dense_sigmoid_loss, reject_scores
from efldet.losses.grad_stats import GradientStatistics


class EQLv2FocalLoss(GradientStatistics):
    """`forward(logits [K, C], labels [K], normalizer=None) -> scalar`; buffers `pos_grad`, `neg_grad` [C]."""

    needs_scores = False

    def __init__(self, num_classes: int, alpha: float = 0.25, gamma: float = 2.0, eqlv2_gamma: float = 12.0,
                 eqlv2_mu: float = 0.8, eqlv2_alpha: float = 4.0) -> None:
        super().__init__(num_classes)
        self.alpha = alpha
        self.gamma = float(gamma)
        self.eqlv2_gamma = float(eqlv2_gamma)
        self.eqlv2_mu = float(eqlv2_mu)
        self.eqlv2_alpha = float(eqlv2_alpha)

    @property
    def pos_neg_ratio(self) -> torch.Tensor:
        """r_j = pos_grad / neg_grad, float32 [C] (not clamped); 1 before any backward."""
        return self.raw_ratio()

    @torch.no_grad()
    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(positive weight [C], negative weight [C]); both 1 for classes without statistics yet."""
        neg_w = torch.sigmoid(self.eqlv2_gamma * (self.raw_ratio() - self.eqlv2_mu))
        neg_w = torch.where(self.neg_grad > 0, neg_w, torch.ones_like(neg_w))
        pos_w = 1.0 + self.eqlv2_alpha * (1.0 - neg_w)
        return pos_w, neg_w

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor | None = None,
                normalizer: float | torch.Tensor | None = None) -> torch.Tensor:
        where = type(self).__name__
        reject_scores(scores, where)
        check_logits_labels(logits, labels, self.num_classes, where=where)
        norm = resolve_normalizer(normalizer, labels, self.num_classes, where=where)
        pos_w, neg_w = self.weights()
        alpha_pos, _ = alpha_weights(self.alpha, self.num_classes, logits.device, scale=pos_w)
        _, alpha_neg = alpha_weights(self.alpha, self.num_classes, logits.device, scale=neg_w)
        gammas = torch.full((self.num_classes,), self.gamma, device=logits.device)
        return dense_sigmoid_loss(logits, labels, gamma=gammas, pos_weight=alpha_pos, neg_weight=alpha_neg,
                                  normalizer=norm, stats=self)

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", alpha={self.alpha}, gamma={self.gamma}, eqlv2_gamma={self.eqlv2_gamma}"
                f", eqlv2_mu={self.eqlv2_mu}, eqlv2_alpha={self.eqlv2_alpha}")
