"""The loss family of the paper as a drop-in library.

Classification losses take logits [K, C], labels int64 [K] (0..C-1 foreground, C background, -1 ignored) and
return sum / normalizer (default max(#foreground, 1)). Modules share `forward(logits, labels, scores=None,
normalizer=None)` and a class attribute `needs_scores` (True for the quality variants).
"""

from efldet.losses.efl import EqualizedFocalLoss, EqualizedQualityFocalLoss
from efldet.losses.eqlv2 import EQLv2FocalLoss
from efldet.losses.focal import FocalLoss, SigmoidBCELoss, sigmoid_bce_loss, sigmoid_focal_loss
from efldet.losses.grad_stats import GradientStatistics
from efldet.losses.iou import giou_loss
from efldet.losses.quality_focal import QualityFocalLoss, quality_focal_loss

__all__ = [
    "EQLv2FocalLoss",
    "EqualizedFocalLoss",
    "EqualizedQualityFocalLoss",
    "FocalLoss",
    "GradientStatistics",
    "QualityFocalLoss",
    "SigmoidBCELoss",
    "giou_loss",
    "quality_focal_loss",
    "sigmoid_bce_loss",
    "sigmoid_focal_loss",
]
