"""Per-category accumulated gradient statistics for the gradient-guided losses (EFL, EQFL, EQLv2&Focal).

Shape letters: C foreground classes.

The statistics are the accumulated |dL/dx| of the loss value a module returned (before any outer multiplier such
as a loss weight or an AMP loss scale), split into positive elements (the anchor's own class) and negative
elements (every other class of a foreground or background anchor). They are computed analytically in float32 by
the losses' own autograd functions (Eq. 6 and its counterparts), so they do not depend on the AMP dtype, on a
loss scale applied to the backward, on the head's channel layout or on the number of FPN levels.

Across ranks, each backward adds the mean over ranks of the per-rank statistics. DDP averages parameter
gradients over ranks, so this is |dL/dx| of the global (rank-averaged) loss, and it equals what one process that
sees the whole global batch would accumulate when the normalizer is averaged over ranks.
"""

from __future__ import annotations

import torch
from torch import nn

from efldet.engine.dist import all_reduce_sum_, get_world_size


class GradientStatistics(nn.Module):
    """Holds `pos_grad` and `neg_grad` (float32 [C] buffers, saved in `state_dict`)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        if int(num_classes) != num_classes or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.register_buffer("pos_grad", torch.zeros(self.num_classes, dtype=torch.float32))
        self.register_buffer("neg_grad", torch.zeros(self.num_classes, dtype=torch.float32))

    @torch.no_grad()
    def accumulate_(self, pos_grad: torch.Tensor, neg_grad: torch.Tensor) -> None:
        """Add one backward's |dL/dx| sums ([C] each), averaged over ranks when torch.distributed is up.

        Called from the losses' backward. Every rank runs the same backward, so the collective is matched; it is
        issued before any parameter gradient exists (the loss is the first node of the backward graph).
        """
        both = torch.stack([pos_grad, neg_grad]).to(device=self.pos_grad.device, dtype=torch.float32)  # [2, C]
        world_size = get_world_size()
        if world_size > 1:
            all_reduce_sum_(both)
            both /= world_size
        self.pos_grad += both[0]
        self.neg_grad += both[1]

    @torch.no_grad()
    def raw_ratio(self) -> torch.Tensor:
        """pos_grad / neg_grad per class (float32 [C]); 1 where nothing has been accumulated yet."""
        has_stats = self.neg_grad > 0
        ratio = torch.ones_like(self.pos_grad)
        ratio[has_stats] = self.pos_grad[has_stats] / self.neg_grad[has_stats]
        return ratio

    def reset_statistics(self) -> None:
        """Forget the accumulated statistics (e.g. when fine-tuning on a new dataset)."""
        self.pos_grad.zero_()
        self.neg_grad.zero_()

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}"
