"""PAA: Probabilistic Anchor Assignment (Kim & Lee, ECCV 2020, "Probabilistic Anchor Assignment with IoU
Prediction for Object Detection"), with the two-component mixture fitted for all GTs of a batch at once.

Shape letters: N images, K anchors in all levels, K_l anchors on level l, L levels, C foreground classes,
P anchors of the batch matched to some GT by the initial IoU matching, G GTs of the batch that have candidates,
T candidates of one GT (padded to the batch's largest T).

The steps, with the constants of the authors' reference code (github.com/kkhoot/PAA, `paa_core/modeling/rpn/
paa/loss.py` and `configs/paa/*.yaml`; mmdetection's `PAAHead` follows it):
    1. Initial matching (`max_iou_assign` with both thresholds at 0.1, i.e. IOU_THRESHOLD = 0.1, low-quality
       matches on): every anchor goes to the GT it overlaps most when that IoU >= 0.1 (or when it is some GT's
       best anchor). An anchor that overlaps several GTs therefore belongs to the one with the highest IoU,
       and the candidate sets of different GTs never share an anchor.
    2. Anchor score (`paa_anchor_scores`), computed on detached predictions for the P matched anchors only:
       focal loss (alpha 0.25, gamma 2) of the anchor's whole logit row against the one-hot target of its GT's
       class, summed over the C classes, plus lambda x GIoU loss of its decoded box. The reference uses
       lambda = 1 (the unweighted GIoU; its 1.3 weights the training loss only); mmdetection's PAAHead puts
       its GIoU loss weight 1.3 into the score as well.
    3. Candidates (`paa_assign`): per GT and per pyramid level, the `topk` = 9 matched anchors with the
       LOWEST score (the reference ranks by score, not by IoU, although a code comment there says IoU).
    4. Per GT, a two-component 1-D Gaussian mixture is fitted to its candidates' scores by EM
       (`fit_two_component_gmm`), initialised as the reference initialises sklearn's GaussianMixture: means
       at the smallest and the largest score, weights 0.5 / 0.5, precisions (1 / variance) 1; sklearn's
       defaults for the rest: tol 1e-3 on the change of the mean log-likelihood, reg_covar 1e-6,
       max_iter 100 (the loop stops as soon as every GT has converged; a few tens of iterations at most in
       practice).
    5. Separation (the paper's Fig. 3 (c), as in the reference): among the candidates that the mixture puts
       in component 0 (the low-score one; ties go to 0), take the one with the highest mixture density
       (sklearn's `score_samples`); its score is the threshold and every candidate with a score <= it is
       positive. When no candidate lies in component 0, all candidates are positive ("for high recall"); a GT
       with a single candidate has it as its positive. The reference cuts the sorted candidate list after
       that anchor, which differs from "<=" only between candidates of exactly equal score (e.g. all
       scores equal: the reference keeps one, this keeps all).
    6. Positives keep their GT; every other anchor becomes background (-1). Anchors ignored (-2) by the
       initial matching stay ignored (none with the default matching).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss

from efldet.errors import UserInputError
from efldet.models.assigners.common import BACKGROUND, IGNORE

PAA_TOPK = 9  # candidates per level and GT (reference configs: TOPK 9)
PAA_INIT_IOU = 0.1  # initial matching threshold (reference configs: IOU_THRESHOLD 0.1)
PAA_SCORE_BOX_WEIGHT = 1.0  # lambda of the anchor score (reference: unweighted GIoU; mmdetection: 1.3)
GMM_TOL = 1e-3  # sklearn GaussianMixture defaults, which the reference uses
GMM_REG_COVAR = 1e-6
GMM_MAX_ITER = 100
_ROW_CHUNK = 1024  # rows of the [P, C] focal computation held at once (small blocks: no big malloc churn)


class GaussianMixtures(NamedTuple):
    """Two-component 1-D Gaussian mixtures of G GTs: every field [G, 2] (component 0, 1) or [G]."""

    means: Tensor  # [G, 2]
    variances: Tensor  # [G, 2]
    weights: Tensor  # [G, 2], each row sums to 1
    n_iter: Tensor  # [G] int64, EM iterations run (sklearn's n_iter_)
    converged: Tensor  # [G] bool


def _weighted_log_prob(x: Tensor, mix: GaussianMixtures) -> Tensor:
    """log(w_c N(x | mu_c, var_c)) of samples x [G, T] under every component -> [G, T, 2]."""
    mean, var, weight = mix.means[:, None, :], mix.variances[:, None, :], mix.weights[:, None, :]  # [G, 1, 2]
    diff = x[:, :, None] - mean  # [G, T, 2]
    return -0.5 * (math.log(2 * math.pi) + var.log() + diff * diff / var) + weight.log()


@torch.no_grad()
def fit_two_component_gmm(
    values: Tensor,
    mask: Tensor,
    *,
    max_iter: int = GMM_MAX_ITER,
    tol: float = GMM_TOL,
    reg_covar: float = GMM_REG_COVAR,
) -> GaussianMixtures:
    """Fit one two-component 1-D Gaussian mixture per row by EM, all rows at once.

    Args:
        values: [G, T] samples (padding anywhere `mask` is False; its value is never read).
        mask: [G, T] bool, which entries are samples; every row needs at least one.
    Returns:
        `GaussianMixtures`, float64. Initialisation (PAA's): means at the row's min and max, weights 0.5,
        variances 1. Each iteration is sklearn's: an E-step (responsibilities and the mean log-likelihood under
        the current parameters), an M-step (nk = sum of responsibilities + 10 eps, means, variances + reg_covar,
        weights nk / sum nk), and a row stops (keeping the parameters of that M-step) once the mean
        log-likelihood changed by less than `tol`. Equal samples give variances = reg_covar, so nothing divides
        by zero; a row with one sample converges at once to both means on it.
    """
    if values.shape != mask.shape or values.dim() != 2:
        raise UserInputError(f"fit_two_component_gmm: values and mask must both be [G, T], got "
                             f"{tuple(values.shape)} and {tuple(mask.shape)}")
    if max_iter < 1:
        raise UserInputError(f"fit_two_component_gmm: max_iter must be >= 1, got {max_iter}")
    values = values.double()
    m = mask.double()  # [G, T]
    count = m.sum(dim=1)  # [G]
    if bool((count == 0).any()):
        raise UserInputError("fit_two_component_gmm: every row needs at least one sample (a True in mask)")
    num_rows = values.shape[0]
    lo = torch.where(mask, values, math.inf).amin(dim=1)  # [G]
    hi = torch.where(mask, values, -math.inf).amax(dim=1)  # [G]
    x = torch.where(mask, values, lo[:, None])  # [G, T]: padding set to a real sample, so everything stays finite
    mix = GaussianMixtures(
        means=torch.stack([lo, hi], dim=1),  # [G, 2]
        variances=torch.ones(num_rows, 2, dtype=torch.float64, device=x.device),
        weights=torch.full((num_rows, 2), 0.5, dtype=torch.float64, device=x.device),
        n_iter=torch.zeros(num_rows, dtype=torch.int64, device=x.device),
        converged=torch.zeros(num_rows, dtype=torch.bool, device=x.device),
    )
    eps10 = 10 * torch.finfo(torch.float64).eps
    lower_bound = torch.full((num_rows,), -math.inf, dtype=torch.float64, device=x.device)  # [G]
    for _ in range(max_iter):
        active = ~mix.converged  # [G]
        # E-step under the current parameters.
        log_prob = _weighted_log_prob(x, mix)  # [G, T, 2]
        log_norm = torch.logsumexp(log_prob, dim=2)  # [G, T]
        resp = torch.exp(log_prob - log_norm[:, :, None]) * m[:, :, None]  # [G, T, 2], padding 0
        new_bound = (log_norm * m).sum(dim=1) / count  # [G], mean log-likelihood
        # M-step.
        nk = resp.sum(dim=1) + eps10  # [G, 2]
        means = (resp * x[:, :, None]).sum(dim=1) / nk  # [G, 2]
        diff = x[:, :, None] - means[:, None, :]  # [G, T, 2]
        variances = (resp * diff * diff).sum(dim=1) / nk + reg_covar  # [G, 2]
        weights = nk / nk.sum(dim=1, keepdim=True)  # [G, 2]
        keep = active[:, None]  # [G, 1]: converged rows keep their parameters
        done = active & ((new_bound - lower_bound).abs() < tol)  # [G]
        mix = GaussianMixtures(
            means=torch.where(keep, means, mix.means),
            variances=torch.where(keep, variances, mix.variances),
            weights=torch.where(keep, weights, mix.weights),
            n_iter=mix.n_iter + active.long(),
            converged=mix.converged | done,
        )
        lower_bound = torch.where(active, new_bound, lower_bound)
        if bool(mix.converged.all()):
            break
    return mix


@torch.no_grad()
def gmm_predict(values: Tensor, mix: GaussianMixtures) -> tuple[Tensor, Tensor]:
    """Component of every sample (argmax of w_c N(x), ties to 0) [G, T] int64 and the mixture log-density
    log sum_c w_c N(x) [G, T] float64 (sklearn's `predict` and `score_samples`)."""
    log_prob = _weighted_log_prob(values.double(), mix)  # [G, T, 2]
    component = (log_prob[..., 1] > log_prob[..., 0]).long()  # [G, T]
    return component, torch.logsumexp(log_prob, dim=2)


@torch.no_grad()
def paa_anchor_scores(
    cls_logits: Tensor,
    labels: Tensor,
    pred_boxes: Tensor,
    gt_boxes: Tensor,
    *,
    box_weight: float = PAA_SCORE_BOX_WEIGHT,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> Tensor:
    """PAA's anchor score (lower = better): focal loss of the row + box_weight x GIoU loss, no reduction.

    Args:
        cls_logits: [P, C] logits of the matched anchors (detached here).
        labels: [P] int64 class 0..C-1 of each anchor's GT.
        pred_boxes, gt_boxes: [P, 4] xyxy decoded predictions and their GTs.
    Returns:
        float32 [P]: sum over the C classes of sigmoid focal loss with the one-hot target of `labels`, plus
        `box_weight` x (1 - GIoU).
    """
    num_rows = cls_logits.shape[0]
    if labels.shape != (num_rows,) or pred_boxes.shape != (num_rows, 4) or gt_boxes.shape != (num_rows, 4):
        raise UserInputError(
            f"paa_anchor_scores: expected labels [{num_rows}] and boxes [{num_rows}, 4], got "
            f"{tuple(labels.shape)}, {tuple(pred_boxes.shape)}, {tuple(gt_boxes.shape)}"
        )
    neg_sum = torch.empty(num_rows, dtype=torch.float32, device=cls_logits.device)  # [P]
    for start in range(0, num_rows, _ROW_CHUNK):
        x = cls_logits[start : start + _ROW_CHUNK].detach().float()  # [R, C], not modified
        # every element as a negative: (1 - alpha) p^gamma (-log(1 - p)), with -log(1 - p) = softplus(x) and
        # log p = x - softplus(x)
        softplus = F.softplus(x)  # [R, C]
        modulator = torch.sub(x, softplus).mul_(gamma).exp_()  # p^gamma, [R, C]
        neg_sum[start : start + _ROW_CHUNK] = torch.linalg.vecdot(modulator, softplus)
    neg_sum.mul_(1 - alpha)
    # the GT class: replace its negative term by the positive one, alpha (1 - p)^gamma (-log p)
    x_pos = cls_logits.detach().float().gather(1, labels[:, None].long())[:, 0]  # [P]
    neg_term = (1 - alpha) * torch.exp(gamma * F.logsigmoid(x_pos)) * F.softplus(x_pos)
    pos_term = alpha * torch.exp(gamma * F.logsigmoid(-x_pos)) * F.softplus(-x_pos)
    cls_score = neg_sum - neg_term + pos_term  # [P]
    if num_rows == 0:
        return cls_score
    box_score = generalized_box_iou_loss(pred_boxes.detach().float(), gt_boxes.float(), reduction="none")  # [P]
    return cls_score + box_weight * box_score


def _rank_in_groups(group: Tensor) -> Tensor:
    """Position of every element within its run of equal values of a sorted 1-D `group` -> int64 [same]."""
    _, counts = torch.unique_consecutive(group, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts  # first position of each run
    return torch.arange(group.numel(), device=group.device) - torch.repeat_interleave(starts, counts)


def _sort_by_group_then_score(group: Tensor, score: Tensor) -> Tensor:
    """Permutation ordering by `group`, then by `score`, then by original position (two stable sorts)."""
    by_score = torch.sort(score, stable=True).indices
    return by_score[torch.sort(group[by_score], stable=True).indices]


@torch.no_grad()
def paa_assign(
    initial: Tensor,
    scores: Tensor,
    num_per_level: Sequence[int],
    *,
    topk: int = PAA_TOPK,
    max_iter: int = GMM_MAX_ITER,
    tol: float = GMM_TOL,
    reg_covar: float = GMM_REG_COVAR,
) -> Tensor:
    """Re-assign the initial matching of a batch by PAA (steps 3-6 of the module docstring).

    Args:
        initial: int64 [N, K]: GT index (within its image) per anchor from the initial IoU matching, -1
            background, -2 ignored.
        scores: [N, K] anchor scores (`paa_anchor_scores`; read only where `initial` >= 0; lower = better).
        num_per_level: K_l of every level (sum = K), in the order of the anchors.
        topk: candidates per level and GT.
    Returns:
        int64 [N, K]: GT index per anchor, -1 background, -2 where `initial` was -2.
    """
    num_images, num_anchors = initial.shape
    if scores.shape != initial.shape:
        raise UserInputError(f"paa_assign: scores {tuple(scores.shape)} must match initial {tuple(initial.shape)}")
    if sum(num_per_level) != num_anchors:
        raise UserInputError(f"paa_assign: num_per_level sums to {sum(num_per_level)}, not K = {num_anchors}")
    if topk < 1:
        raise UserInputError(f"paa_assign: topk must be >= 1, got {topk}")
    device = initial.device
    result = torch.full_like(initial, BACKGROUND)  # [N, K]
    result[initial == IGNORE] = IGNORE
    img, anchor = (initial >= 0).nonzero(as_tuple=True)  # [P] each
    if img.numel() == 0:
        return result
    gt_local = initial[img, anchor]  # [P]
    num_gt = int(gt_local.max()) + 1
    gt = img * num_gt + gt_local  # [P], a batch-wide GT id (not contiguous)
    level_ends = torch.tensor(list(num_per_level), device=device).cumsum(0)  # [L]
    level = torch.bucketize(anchor, level_ends, right=True)  # [P], level of each anchor
    score = scores[img, anchor].double()  # [P]

    # 3. per (GT, level): the topk lowest scores (ties: lower image / anchor index first).
    order = _sort_by_group_then_score(gt * len(num_per_level) + level, score)
    order = order[_rank_in_groups((gt * len(num_per_level) + level)[order]) < topk]  # candidates
    # 4. candidates of every GT, sorted by score, padded to [G, T].
    order = order[_sort_by_group_then_score(gt[order], score[order])]
    cand_gt = gt[order]  # [sum T], sorted
    column = _rank_in_groups(cand_gt)  # [sum T]
    _, row = torch.unique_consecutive(cand_gt, return_inverse=True)  # [sum T] in 0..G-1
    num_rows, width = int(row[-1]) + 1, int(column.max()) + 1
    values = torch.zeros(num_rows, width, dtype=torch.float64, device=device)  # [G, T]
    mask = torch.zeros(num_rows, width, dtype=torch.bool, device=device)  # [G, T]
    values[row, column] = score[order]
    mask[row, column] = True
    mix = fit_two_component_gmm(values, mask, max_iter=max_iter, tol=tol, reg_covar=reg_covar)
    # 5. threshold: the score of the component-0 candidate with the highest mixture density.
    component, density = gmm_predict(values, mix)  # [G, T] each
    in_fg = mask & (component == 0)  # [G, T]
    fg_density = torch.where(in_fg, density, -math.inf)  # [G, T]
    best = in_fg & (fg_density == fg_density.amax(dim=1, keepdim=True))  # [G, T]
    threshold = torch.where(best, values, math.inf).amin(dim=1)  # [G]; inf when no component-0 candidate
    positive = mask & (values <= threshold[:, None])  # [G, T]
    # 6. positives keep their GT.
    keep = positive[row, column]  # [sum T]
    pos = order[keep]  # indices into the P matched anchors
    result[img[pos], anchor[pos]] = gt_local[pos]
    return result
