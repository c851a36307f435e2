"""Plain eager implementations of the paper's formulas with autograd: the readable specification, used as the
numerical reference in tests and as the baseline in `benchmarks/bench_losses.py`. Not meant for training: they
build the one-hot target and keep about a dozen [K, C] intermediates alive for autograd.

Shape letters: K anchors (rows), C foreground classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def one_hot_targets(labels: torch.Tensor, num_classes: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets [K, C] with 1 at the anchor's class, valid row mask [K, 1]) for labels in -1..C."""
    targets = F.one_hot(labels.clamp(min=0), num_classes + 1)[:, :num_classes].to(dtype)  # background column dropped
    valid = (labels >= 0).to(dtype).unsqueeze(1)                                            # [K] -> [K, 1]
    return targets, valid


def reference_focal_family(logits: torch.Tensor, labels: torch.Tensor, gamma: torch.Tensor, pos_weight: torch.Tensor,
                           neg_weight: torch.Tensor, normalizer: float,
                           scores: torch.Tensor | None = None) -> torch.Tensor:
    """sum w_y |y' - p|^gamma_j BCE(x, y') / normalizer, written as the formula reads.

    gamma / pos_weight / neg_weight: [C]; y' = 1 (or scores[k] when given) at the anchor's class, 0 elsewhere.
    For hard targets this is Eq. 1 / Eq. 4 / Eq. 7 with p_t and (1 - p_t).
    """
    num_classes = logits.shape[1]
    x = logits.to(torch.float64 if logits.dtype == torch.float64 else torch.float32)
    targets, valid = one_hot_targets(labels, num_classes, x.dtype)
    p = torch.sigmoid(x)
    if scores is None:
        soft = targets
        p_t = p * targets + (1 - p) * (1 - targets)
        modulating = (1 - p_t) ** gamma
    else:
        soft = targets * scores.to(x.dtype).unsqueeze(1)       # [K] -> [K, 1] broadcast over classes
        modulating = (soft - p).abs() ** gamma
    bce = F.binary_cross_entropy_with_logits(x, soft, reduction="none")
    weight = pos_weight * targets + neg_weight * (1 - targets)
    return (weight * modulating * bce * valid).sum() / normalizer


def reference_efl(logits: torch.Tensor, labels: torch.Tensor, pos_neg_ratio: torch.Tensor, gamma_b: float = 2.0,
                  scale_factor: float = 8.0, alpha: float = 0.25, normalizer: float | None = None) -> torch.Tensor:
    """EFL (Eq. 4) from g_j (`pos_neg_ratio`, clamped to [0, 1]) with plain autograd."""
    gamma_j = gamma_b + scale_factor * (1 - pos_neg_ratio.clamp(0, 1))
    weight = gamma_j / gamma_b
    if normalizer is None:
        normalizer = float(max(int(((labels >= 0) & (labels < logits.shape[1])).sum()), 1))
    return reference_focal_family(logits, labels, gamma_j, alpha * weight, (1 - alpha) * weight, normalizer)


def reference_gradient_sums(grad: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class sums of |grad| over positive and over negative elements ([C] each) from a [K, C] gradient."""
    num_classes = grad.shape[1]
    targets, valid = one_hot_targets(labels, num_classes, grad.dtype)
    magnitude = grad.abs() * valid
    return (magnitude * targets).sum(0), (magnitude * (1 - targets)).sum(0)
