"""Sigmoid focal loss (Eq. 1) and the fused, memory-light kernel shared by the whole focal family.

Shape letters: K anchors (rows), C foreground classes, R rows of one chunk, F foreground rows of a chunk.
Label convention: int64 [K]; 0..C-1 foreground class, C background, -1 ignored (the row contributes nothing).

Every element (k, j) of the [K, C] logits is a binary problem with target y = 1 if j is the anchor's class and
y = 0 otherwise. One kernel covers the family:

    loss(k, j) = w_y[j] * |y' - p|^gamma[j] * BCE(x, y')      p = sigmoid(x),  y' = y (hard) or the IoU (quality)

which is focal loss (gamma, w_1 = alpha, w_0 = 1 - alpha), EFL (per-class gamma_j and weighting factor), EQLv2&Focal
(per-class positive / negative weights), quality focal loss and EQFL (soft positive targets). The forward walks
over chunks of rows, writes the loss sum and, when a gradient is needed, the analytic dL/dx (Eq. 6 and its
counterparts) straight into one [K, C] buffer; the backward only scales that buffer by the incoming gradient.
Nothing [K, C]-sized but that buffer is kept, and the per-class |dL/dx| sums for the gradient statistics come from
the same pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from efldet.losses.common import (
    check_logits_labels,
    compute_dtype,
    resolve_normalizer,
    row_chunks,
)
from efldet.losses.grad_stats import GradientStatistics


def _negative_terms(x: torch.Tensor, gamma: torch.Tensor, log_weight: torch.Tensor,
                    grad_out: torch.Tensor | None) -> torch.Tensor:
    """Loss of every element of a chunk taken as a negative (y = 0); dloss/dx goes into `grad_out`.

    x [R, C], gamma / log_weight [C]. For y = 0, with p = sigmoid(x) and softplus(x) = -log(1 - p):
        loss     = w p^gamma softplus(x)
        dloss/dx = w p^gamma (p + gamma (1 - p) softplus(x)) = gamma (1 - p) loss + w p^gamma p   (>= 0)
    which is Eq. 6 with x_t = -x. Returns the per-element loss [R, C].
    """
    softplus = F.softplus(x)                                       # [R, C], exact for large |x|
    log_p = x - softplus                                           # log p, [R, C]
    weighted_mod = torch.addcmul(log_weight, log_p, gamma).exp_()  # w * p^gamma, [R, C]
    loss = softplus.mul_(weighted_mod)                             # reuses the softplus storage
    if grad_out is not None:
        p = log_p.exp_()                                           # reuses the log_p storage
        torch.addcmul(gamma, p, gamma, value=-1.0, out=grad_out)   # gamma (1 - p)
        grad_out.mul_(loss).addcmul_(weighted_mod, p)
    return loss


def _positive_terms(x: torch.Tensor, gamma: torch.Tensor, weight: torch.Tensor, target: torch.Tensor | None,
                    need_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Loss and dloss/dx of the positive elements (one per foreground row). All inputs and outputs are [F].

    Hard target (target None, focal / EFL / EQLv2): loss = w (1 - p)^gamma (-log p),
        dloss/dx = w (1 - p)^gamma (gamma p log p + p - 1)                       (Eq. 6 with y = 1)
    Soft target t (quality focal loss / EQFL, Eq. 5): loss = w |p - t|^gamma BCE(x, t),
        dloss/dx = w (gamma |p - t|^(gamma - 1) sign(p - t) p (1 - p) BCE + |p - t|^gamma (p - t)).
    """
    softplus_neg = F.softplus(-x)                    # -log p
    log_p = -softplus_neg
    p = torch.sigmoid(x)
    if target is None:
        log_1mp = log_p - x                          # log(1 - p) = -softplus(x)
        mod = torch.exp(gamma * log_1mp)             # (1 - p)^gamma
        loss = weight * mod * softplus_neg
        if not need_grad:
            return loss, None
        return loss, weight * mod * (gamma * p * log_p + p - 1.0)
    diff = p - target
    abs_diff = diff.abs()
    bce = softplus_neg + (1.0 - target) * x          # BCE(x, t) = softplus(x) - t x
    mod = abs_diff.pow(gamma)
    loss = weight * mod * bce
    if not need_grad:
        return loss, None
    # |d|^(gamma - 1) sign(d): at d = 0 the factor is 0 for gamma > 1 (pow handles 0 ** positive) and is taken as 0
    # (the subgradient) for gamma <= 1, where 0 ** (gamma - 1) would be inf and inf * sign(0) NaN.
    slope = torch.where(abs_diff > 0, abs_diff.pow(gamma - 1.0), torch.zeros_like(abs_diff))
    dmod = gamma * slope * torch.sign(diff) * p * (1.0 - p)
    return loss, weight * (dmod * bce + mod * diff)


def _focal_family_pass(logits: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor | None,
                       gamma: torch.Tensor, pos_weight: torch.Tensor, neg_weight: torch.Tensor, normalizer: float,
                       need_grad: bool, collect: bool):
    """One chunked pass: (loss scalar, dL/dx [K, C] or None, (pos |dL/dx| [C], neg |dL/dx| [C]) or None)."""
    num_rows, num_classes = logits.shape
    device = logits.device
    dtype = compute_dtype(logits)
    gamma, pos_weight, neg_weight = (t.to(device=device, dtype=dtype) for t in (gamma, pos_weight, neg_weight))
    log_neg_weight = neg_weight.log()                     # w = 0 gives log 0 = -inf and exp(-inf) = 0: fine
    grad = torch.empty((num_rows, num_classes), dtype=dtype, device=device) if need_grad else None
    neg_sum = torch.zeros(num_classes, dtype=dtype, device=device) if collect else None

    # Foreground rows (ascending) and their classes; chunk boundaries located once, with one host sync.
    fg_rows = torch.nonzero((labels >= 0) & (labels < num_classes)).squeeze(1)   # [F]
    fg_classes = labels[fg_rows]                                                 # [F]
    ignored = labels < 0                                                         # [K]
    chunks = row_chunks(num_rows, num_classes, device)
    starts = torch.tensor([start for start, _ in chunks] + [num_rows], device=device)
    fg_bounds = torch.searchsorted(fg_rows, starts).tolist()
    ignored_before = torch.cat([ignored.new_zeros(1, dtype=torch.long), ignored.cumsum(0)])[starts].tolist()

    total = torch.zeros((), dtype=torch.float64, device=device)
    for index, (start, stop) in enumerate(chunks):
        x = logits[start:stop].to(dtype)                      # [R, C]; a copy only if the dtype differs
        grad_chunk = grad[start:stop] if need_grad else None   # [R, C] view into the output buffer
        loss = _negative_terms(x, gamma, log_neg_weight, grad_chunk)
        if ignored_before[index + 1] > ignored_before[index]:
            chunk_ignored = ignored[start:stop]                # [R]
            loss[chunk_ignored] = 0.0
            if need_grad:
                grad_chunk[chunk_ignored] = 0.0
        total += loss.sum(dtype=torch.float64)
        if collect:
            lo, hi = fg_bounds[index], fg_bounds[index + 1]
            grad_chunk[fg_rows[lo:hi] - start, fg_classes[lo:hi]] = 0.0   # keep negatives only (all >= 0)
            neg_sum += grad_chunk.sum(dim=0)

    # Positive elements, all at once: replace their negative-form terms by the positive form.
    x_pos = logits[fg_rows, fg_classes].to(dtype)                                   # [F]
    target = None if scores is None else scores[fg_rows].to(dtype)
    neg_form = _negative_terms(x_pos.unsqueeze(1), gamma[fg_classes].unsqueeze(1),  # [F] -> [F, 1]
                               log_neg_weight[fg_classes].unsqueeze(1), None)
    pos_loss, pos_grad = _positive_terms(x_pos, gamma[fg_classes], pos_weight[fg_classes], target, need_grad)
    total += pos_loss.sum(dtype=torch.float64) - neg_form.sum(dtype=torch.float64)

    sums = None
    if need_grad:
        grad[fg_rows, fg_classes] = pos_grad
        grad.div_(normalizer)
        if collect:
            pos_sum = torch.zeros_like(neg_sum).index_add_(0, fg_classes, pos_grad.abs())
            sums = (pos_sum / normalizer, neg_sum / normalizer)
    return (total / normalizer).to(dtype), grad, sums


class _DenseSigmoidLoss(torch.autograd.Function):
    """Fused focal-family loss. The forward computes the loss and dL/dx in one chunked pass and keeps only the
    [K, C] gradient buffer; the backward hands that buffer over (scaled in place by the incoming gradient), so the
    loss costs one logits-sized buffer in all. A second backward through the same graph (retain_graph=True) is
    served by recomputing from the logits when they are a leaf tensor (as in gradcheck)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor | None,
                gamma: torch.Tensor, pos_weight: torch.Tensor, neg_weight: torch.Tensor, normalizer: float,
                stats: GradientStatistics | None) -> torch.Tensor:
        need_grad = ctx.needs_input_grad[0]
        collect = need_grad and stats is not None
        loss, grad, sums = _focal_family_pass(logits, labels, scores, gamma, pos_weight, neg_weight, normalizer,
                                              need_grad, collect)
        if need_grad:
            # A leaf is held by its owner anyway, so keeping a reference for a recomputation costs nothing.
            ctx.save_for_backward(logits if logits.is_leaf else None)
            ctx.grad, ctx.stat_sums = grad, sums
            ctx.arguments = (labels, scores, gamma, pos_weight, neg_weight, normalizer, collect)
            ctx.input_dtype = logits.dtype
            ctx.stats = stats
        return loss

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad, sums = ctx.grad, ctx.stat_sums
        ctx.grad = ctx.stat_sums = None
        if grad is None:
            (leaf,) = ctx.saved_tensors
            if leaf is None:
                raise RuntimeError("efldet's focal-family losses hand their gradient buffer over in the first "
                                   "backward; a second backward through the same loss (retain_graph=True) is "
                                   "only supported when the logits are a leaf tensor: compute the loss again")
            _, grad, sums = _focal_family_pass(leaf.detach(), *ctx.arguments[:-1], True, ctx.arguments[-1])
        if sums is not None:
            ctx.stats.accumulate_(*sums)   # |dL/dx| of the returned value, before grad_output
        if grad_output.device.type != "cpu" or float(grad_output) != 1.0:
            grad.mul_(grad_output.to(grad.dtype))
        return grad.to(ctx.input_dtype), None, None, None, None, None, None, None


def dense_sigmoid_loss(logits: torch.Tensor, labels: torch.Tensor, *, gamma: torch.Tensor,
                       pos_weight: torch.Tensor, neg_weight: torch.Tensor, normalizer: float,
                       scores: torch.Tensor | None = None, stats: GradientStatistics | None = None) -> torch.Tensor:
    """The fused kernel (inputs already checked). gamma / pos_weight / neg_weight: [C]; returns a scalar."""
    return _DenseSigmoidLoss.apply(logits, labels, scores, gamma.detach(), pos_weight.detach(),
                                   neg_weight.detach(), normalizer, stats)


def alpha_weights(alpha: float | None, num_classes: int, device: torch.device,
                  scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class (positive, negative) weights alpha_t * scale; alpha None or < 0 means no alpha balancing."""
    base = torch.ones(num_classes, dtype=torch.float32, device=device) if scale is None else scale
    if alpha is None or alpha < 0:
        return base, base
    return alpha * base, (1.0 - alpha) * base


def sigmoid_focal_loss(logits: torch.Tensor, labels: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0,
                       normalizer: float | torch.Tensor | None = None) -> torch.Tensor:
    """Sigmoid focal loss (Eq. 1) summed over elements and divided by `normalizer`.

    logits [K, C] float; labels int64 [K] (0..C-1 foreground, C background, -1 ignored);
    normalizer: default max(#foreground rows, 1). alpha < 0 (or None) disables alpha balancing.
    Equals `torchvision.ops.sigmoid_focal_loss(logits, one_hot, alpha, gamma, reduction="sum") / normalizer`.
    """
    check_logits_labels(logits, labels, where="sigmoid_focal_loss")
    num_classes = logits.shape[1]
    norm = resolve_normalizer(normalizer, labels, num_classes, where="sigmoid_focal_loss")
    pos_w, neg_w = alpha_weights(alpha, num_classes, logits.device)
    gammas = torch.full((num_classes,), float(gamma), device=logits.device)
    return dense_sigmoid_loss(logits, labels, gamma=gammas, pos_weight=pos_w, neg_weight=neg_w, normalizer=norm)


def sigmoid_bce_loss(logits: torch.Tensor, labels: torch.Tensor,
                     normalizer: float | torch.Tensor | None = None) -> torch.Tensor:
    """Plain sigmoid binary cross-entropy (the "Sigmoid" rows of Table 8), summed and divided by `normalizer`."""
    check_logits_labels(logits, labels, where="sigmoid_bce_loss")
    num_classes = logits.shape[1]
    norm = resolve_normalizer(normalizer, labels, num_classes, where="sigmoid_bce_loss")
    ones = torch.ones(num_classes, device=logits.device)
    return dense_sigmoid_loss(logits, labels, gamma=torch.zeros_like(ones), pos_weight=ones, neg_weight=ones,
                              normalizer=norm)


class FocalLoss(nn.Module):
    """Module form of `sigmoid_focal_loss` with the uniform classification-loss call signature."""

    needs_scores = False

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0) -> None:
        super().__init__()
        self.alpha = alpha
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor | None = None,
                normalizer: float | torch.Tensor | None = None) -> torch.Tensor:
        reject_scores(scores, type(self).__name__)
        return sigmoid_focal_loss(logits, labels, alpha=self.alpha, gamma=self.gamma, normalizer=normalizer)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}"


class SigmoidBCELoss(nn.Module):
    """Module form of `sigmoid_bce_loss`."""

    needs_scores = False

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor | None = None,
                normalizer: float | torch.Tensor | None = None) -> torch.Tensor:
        reject_scores(scores, type(self).__name__)
        return sigmoid_bce_loss(logits, labels, normalizer=normalizer)


def reject_scores(scores: torch.Tensor | None, name: str) -> None:
    """Hard-target losses take no quality scores; passing them is a wiring mistake, never silently ignored."""
    if scores is not None:
        raise ValueError(f"{name} uses hard targets and takes no `scores`; use QualityFocalLoss or "
                         "EqualizedQualityFocalLoss for IoU-aware soft targets")


