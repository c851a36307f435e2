"""PAA detector (Kim & Lee, ECCV 2020): the dense detector with probabilistic anchor assignment and score voting.

Shape letters: N images, K anchors in all levels, C foreground classes, P anchors of the batch matched to a GT by
the initial IoU matching.

What differs from `DenseDetector` (everything else - head, IoU branch, GIoU weighted by the IoU target, the
classification loss `model.cls_loss` (focal, EFL, ...) and its normaliser - is inherited unchanged):
- training: `self.assigner` is PAA's initial matching (max IoU >= 0.1, see `efldet.models.assigners.paa`);
  `assign`, given the (detached) predictions of the same forward, re-assigns it with `paa_reassign`; the usual
  losses follow, with the IoU-branch loss scaled by `quality_loss_weight` (reference: 0.5);
- inference: `voting_sigma` (0.025) is set, so `DenseDetector.postprocess` refines the kept boxes by PAA's score
  voting over the pre-NMS candidates (`postprocess_detections`); scores and labels do not change.
The reference's training GIoU weight 1.3 (REG_LOSS_WEIGHT) is the inherited `box_loss_weight`.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import Tensor

from efldet.errors import UserInputError
from efldet.models.anchors import AnchorGenerator
from efldet.models.assigners.max_iou import max_iou_assign
from efldet.models.assigners.paa import (
    GMM_MAX_ITER,
    PAA_INIT_IOU,
    PAA_SCORE_BOX_WEIGHT,
    PAA_TOPK,
    paa_anchor_scores,
    paa_assign,
)
from efldet.models.detector import Assigner, DenseDetector
from efldet.models.postprocess import PAA_VOTING_SIGMA

PAA_QUALITY_LOSS_WEIGHT = 0.5  # weight of the IoU-prediction BCE (reference configs: IOU_LOSS_WEIGHT 0.5)
PAA_BOX_LOSS_WEIGHT = 1.3  # training GIoU weight (reference configs: REG_LOSS_WEIGHT 1.3)


class PAADetector(DenseDetector):
    """`DenseDetector` with PAA's anchor assignment (training) and score voting (inference).

    Args:
        topk: candidates per pyramid level and GT (PAA: 9).
        init_iou: IoU threshold of the initial matching (PAA: 0.1); used when `assigner` is None.
        score_box_weight: lambda of the anchor score = focal loss + lambda x GIoU loss (reference: 1).
        score_alpha, score_gamma: the focal loss of the anchor score (PAA: 0.25, 2), whatever `cls_loss` is.
        gmm_max_iter: EM iterations at most (sklearn's default 100; EM stops earlier once all GTs converged).
        quality_loss_weight: multiplier of the IoU-branch loss (reference: 0.5).
        voting_sigma: score voting's sigma (0.025); None disables score voting.
        assigner: the initial matching; default `max_iou_assign` with both thresholds at `init_iou`.
        **kwargs: everything else `DenseDetector` takes (backbone, neck, head, prior_generator, cls_loss,
            num_classes, box_loss_weight, test_*, ...); the priors must be anchors.
    """

    def __init__(
        self,
        *,
        topk: int = PAA_TOPK,
        init_iou: float = PAA_INIT_IOU,
        score_box_weight: float = PAA_SCORE_BOX_WEIGHT,
        score_alpha: float = 0.25,
        score_gamma: float = 2.0,
        gmm_max_iter: int = GMM_MAX_ITER,
        quality_loss_weight: float = PAA_QUALITY_LOSS_WEIGHT,
        voting_sigma: float | None = PAA_VOTING_SIGMA,
        assigner: Assigner | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(kwargs.get("prior_generator"), AnchorGenerator):
            raise UserInputError("PAADetector assigns anchors: give it an AnchorGenerator as prior_generator "
                                 "(PAA uses one anchor of scale 8, ratio 1 per location)")
        if topk < 1:
            raise UserInputError(f"PAADetector: topk must be >= 1, got {topk}")
        if not 0.0 <= init_iou <= 1.0:
            raise UserInputError(f"PAADetector: init_iou must be in [0, 1], got {init_iou}")
        if voting_sigma is not None and not voting_sigma > 0:
            raise UserInputError(f"PAADetector: voting_sigma must be > 0 (or None to disable), got {voting_sigma}")
        if assigner is None:
            assigner = functools.partial(max_iou_assign, fg_iou=init_iou, bg_iou=init_iou, allow_low_quality=True)
        super().__init__(assigner=assigner, **kwargs)
        self.topk = int(topk)
        self.score_box_weight = float(score_box_weight)
        self.score_alpha = float(score_alpha)
        self.score_gamma = float(score_gamma)
        self.gmm_max_iter = int(gmm_max_iter)
        self.quality_loss_weight = float(quality_loss_weight)
        self.voting_sigma = voting_sigma

    @torch.no_grad()
    def anchor_scores(
        self,
        cls: Tensor,
        box_reg: Tensor,
        priors: list[Tensor],
        initial: Tensor,
        targets: list[dict[str, Tensor]],
    ) -> Tensor:
        """PAA's anchor scores [N, K] float32 (inf where `initial` < 0) from cls [N, K, C], box_reg [N, K, 4] and
        the initial matching [N, K]: focal loss of the row at the GT's class + `score_box_weight` x GIoU loss."""
        device = cls.device
        img, anchor = (initial >= 0).nonzero(as_tuple=True)  # [P] each
        all_priors = torch.cat(priors, dim=0)  # [K, 4]
        strides = self._prior_strides(priors)  # [K]
        gt_boxes = torch.cat([t["boxes"].to(device).float() for t in targets])  # [sum M, 4]
        gt_labels = torch.cat([t["labels"].to(device).long() for t in targets])  # [sum M]
        counts = torch.tensor([t["boxes"].shape[0] for t in targets], device=device)
        offsets = torch.cumsum(counts, 0) - counts  # [N]
        gt_idx = initial[img, anchor] + offsets[img]  # [P], index into the batch's GTs
        pred_boxes = self.decode(all_priors[anchor], box_reg[img, anchor].detach(), strides[anchor])  # [P, 4]
        scores = torch.full(initial.shape, math.inf, device=device)  # [N, K]
        scores[img, anchor] = paa_anchor_scores(
            cls[img, anchor].detach(), gt_labels[gt_idx], pred_boxes, gt_boxes[gt_idx],
            box_weight=self.score_box_weight, alpha=self.score_alpha, gamma=self.score_gamma,
        )
        return scores

    @torch.no_grad()
    def paa_reassign(
        self,
        cls: Tensor,
        box_reg: Tensor,
        priors: list[Tensor],
        initial: Tensor,
        targets: list[dict[str, Tensor]],
    ) -> Tensor:
        """PAA assignment from the predictions: cls [N, K, C], box_reg [N, K, 4], the initial matching [N, K]
        (GT index per anchor within its image, -1 background, -2 ignored) -> int64 [N, K], same codes."""
        scores = self.anchor_scores(cls, box_reg, priors, initial, targets)  # [N, K]
        return paa_assign(initial, scores, [p.shape[0] for p in priors], topk=self.topk, max_iter=self.gmm_max_iter)

    def assign(self, priors: list[Tensor], targets: list[dict[str, Tensor]], cls: Tensor | None = None,
               box_reg: Tensor | None = None, quality: Tensor | None = None) -> Tensor:
        """PAA's assignment [N, K] (GT index per anchor, -1 background, -2 ignored) from the predictions of
        `predict_raw` (cls [N, K, C], box_reg [N, K, 4]); without them, the initial max-IoU matching alone."""
        initial = super().assign(priors, targets)
        if cls is None or box_reg is None:
            return initial
        return self.paa_reassign(cls, box_reg, priors, initial, targets)

    def compute_losses(
        self,
        cls: Tensor,
        box_reg: Tensor,
        quality: Tensor | None,
        priors: list[Tensor],
        matched: Tensor,
        targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        """`DenseDetector.compute_losses` on PAA's assignment `matched` (see `assign`), with the IoU-branch loss
        scaled by `quality_loss_weight`."""
        losses = super().compute_losses(cls, box_reg, quality, priors, matched, targets)
        if "loss_quality" in losses:
            losses["loss_quality"] = losses["loss_quality"] * self.quality_loss_weight
        return losses
