"""One dense detector for ATSS (IoU branch or centerness), RetinaNet and FCOS.

Shape letters: N images, H x W padded batch size, K priors in all levels, K_l priors on level l,
C foreground classes, M ground-truth boxes of one image, P positive priors in the batch, L levels.

Contract (torchvision / detectron2 style):
- `images`: a padded float batch [N, 3, H, W] (already normalised by the data transforms) and
  `image_sizes`: the real (h, w) of every image before padding (default: the whole tensor).
- train mode: `model(images, targets, image_sizes)` -> dict of scalar losses
  {"loss_cls", "loss_box"[, "loss_quality"][, "loss_l1"]}; `targets` is one dict per image with `boxes` float32
  [M, 4] xyxy absolute pixels and `labels` int64 [M] in 0..C-1.
- eval mode: `model(images, image_sizes=...)` -> N dicts {"boxes" [D, 4], "scores" [D], "labels" [D]},
  D <= 300, boxes clipped to each image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from efldet.engine.dist import reduce_mean
from efldet.errors import UserInputError
from efldet.losses import giou_loss
from efldet.models.anchors import AnchorGenerator, PointGenerator
from efldet.models.assigners.common import IGNORE
from efldet.models.heads.dense_head import DenseHead, concat_levels
from efldet.models.heads.yolox import YOLOXHead
from efldet.models.postprocess import postprocess_detections
from efldet.structures import (
    centerness_target,
    check_images,
    check_targets,
    decode_deltas,
    decode_distances,
    encode_deltas,
    encode_distances,
    paired_box_iou,
)

Assigner = Callable[[list[Tensor], Tensor], Tensor]  # (priors per level, gt boxes [M,4]) -> int64 [K]

BOX_LOSSES = ("giou", "iou")  # 1 - GIoU (improved baseline) | 1 - IoU^2 (YOLOX's IoU loss)
HEAD_QUALITIES = ("iou", "centerness", "none")  # quality branches this detector supervises


def iou_loss(pred_boxes: Tensor, target_boxes: Tensor, weight: Tensor | None = None,
             normalizer: float | None = None) -> Tensor:
    """YOLOX's IoU loss: sum_p weight[p] * (1 - IoU(pred[p], target[p])^2) / normalizer.

    pred_boxes, target_boxes: [P, 4] xyxy (absolute pixels); weight: [P] (detached) or None for 1;
    normalizer: default max(P, 1). An empty P gives an exact 0 that still back-propagates.
    """
    if pred_boxes.dim() != 2 or pred_boxes.shape[-1] != 4 or pred_boxes.shape != target_boxes.shape:
        raise ValueError(f"iou_loss: pred_boxes and target_boxes must both have shape [P, 4], got "
                         f"{tuple(pred_boxes.shape)} and {tuple(target_boxes.shape)}")
    norm = float(max(pred_boxes.shape[0], 1)) if normalizer is None else float(normalizer)
    if pred_boxes.shape[0] == 0:
        return pred_boxes.sum() * 0.0
    losses = 1.0 - paired_box_iou(pred_boxes, target_boxes) ** 2  # [P]
    if weight is not None:
        losses = losses * weight.detach().float()
    return losses.sum() / norm


class DenseDetector(nn.Module):
    """backbone -> neck -> dense head, plus priors, an assigner, the losses and post-processing.

    Args:
        backbone: image [N,3,H,W] -> [C3, C4, C5].
        neck: [C3, C4, C5] -> L maps (FPN: P3-P7, PAFPN: P3-P5).
        head: a `DenseHead` or a `YOLOXHead`: `forward(feats)` -> per-level (cls, box, quality) maps, with
            `num_classes`, `num_anchors` and `quality` ("iou" | "centerness" | "none"), which decides the quality
            loss, the box-loss weights and the inference score.
        prior_generator: `AnchorGenerator` (boxes, delta coding) or `PointGenerator` (points, distance
            coding with distances = ReLU(regression) x stride).
        assigner: pure function (priors per level, gt boxes) -> GT index per prior, -1 background, -2 ignore.
        cls_loss: any classification loss module of `efldet.losses` (`forward(logits, labels, scores=None,
            normalizer=None)`, `needs_scores`); exposed as `model.cls_loss` so its statistics can be logged.
        box_coder_weights: (wx, wy, ww, wh) of the anchor delta coding.
        box_loss_weight: multiplier of the box loss.
        box_loss: "giou" (1 - GIoU, the improved baseline) or "iou" (1 - IoU^2, YOLOX's IoU loss; YOLOX-IP).
        l1_loss_weight: multiplier of an L1 loss between the box-regression outputs of the positives and their
            GT encoded the way `decode` inverts (anchor deltas, or distances / stride for points), weighted and
            normalised like the box loss; reported as "loss_l1". 0 (default) = off, no "loss_l1" key.
        test_*: post-processing settings (see `postprocess_detections`).

    Losses: classification normalised by the foreground count averaged over ranks (>= 1); GIoU (or IoU) on the
    decoded boxes weighted by the (detached) quality target - the IoU of the decoded box with its GT for
    the IoU branch, the centerness for centerness heads, 1 without a quality branch - and normalised by the
    sum of those weights averaged over ranks; quality BCE on positives normalised like classification.
    A classification loss with `needs_scores` gets the IoU target of each positive as `scores`.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        neck: nn.Module,
        head: DenseHead | YOLOXHead,
        prior_generator: AnchorGenerator | PointGenerator,
        assigner: Assigner,
        cls_loss: nn.Module,
        num_classes: int,
        box_coder_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
        box_loss_weight: float = 2.0,
        box_loss: str = "giou",
        l1_loss_weight: float = 0.0,
        test_pre_nms_topk: int = 1000,
        test_score_thresh: float = 0.0,
        test_nms_iou: float = 0.5,
        test_max_per_image: int = 300,
    ) -> None:
        super().__init__()
        if head.num_anchors != prior_generator.num_anchors:
            raise ValueError(
                f"head predicts {head.num_anchors} priors per location but the prior generator makes "
                f"{prior_generator.num_anchors}"
            )
        if head.num_classes != num_classes:
            raise ValueError(f"head has {head.num_classes} classes, detector {num_classes}")
        if head.quality not in HEAD_QUALITIES:
            raise ValueError(f"DenseDetector supervises a quality branch of kind {HEAD_QUALITIES}, the head has "
                             f"{head.quality!r} (objectness belongs to the YOLOX detector)")
        if box_loss not in BOX_LOSSES:
            raise UserInputError(f"box loss {box_loss!r} is not one of {BOX_LOSSES}")
        if not l1_loss_weight >= 0.0:
            raise UserInputError(f"l1_loss_weight must be >= 0, got {l1_loss_weight}")
        self.backbone = backbone
        self.neck = neck
        self.head = head
        self.prior_generator = prior_generator
        self.assigner = assigner
        self.cls_loss = cls_loss
        self.num_classes = num_classes
        self.box_coder_weights = tuple(float(w) for w in box_coder_weights)
        self.box_loss_weight = float(box_loss_weight)
        self.box_loss = box_loss
        self.l1_loss_weight = float(l1_loss_weight)
        self.test_pre_nms_topk = test_pre_nms_topk
        self.test_score_thresh = test_score_thresh
        self.test_nms_iou = test_nms_iou
        self.test_max_per_image = test_max_per_image
        self.voting_sigma: float | None = None  # score voting after NMS: PAA's (`PAADetector` sets it), else off

    # ------------------------------------------------------------------------------------------ pieces
    def features(self, images: Tensor) -> list[Tensor]:
        """Backbone + neck: [N,3,H,W] -> L maps [N, channels, H_l, W_l]."""
        return self.neck(self.backbone(images))

    def predict_raw(self, feats: list[Tensor]) -> tuple[Tensor, Tensor, Tensor | None]:
        """Head on the pyramid, flattened over levels: cls [N,K,C], box regression [N,K,4], quality [N,K]."""
        cls_maps, box_maps, quality_maps = self.head(feats)
        cls = concat_levels(cls_maps, self.num_classes)  # [N, K, C]
        box = concat_levels(box_maps, 4)  # [N, K, 4]
        quality = concat_levels(quality_maps, 1)[..., 0] if quality_maps is not None else None  # [N, K]
        return cls, box, quality

    def priors(self, feats: list[Tensor]) -> list[Tensor]:
        """Anchors [K_l, 4] or points [K_l, 2] of every level, in the order of `predict_raw`."""
        return self.prior_generator([tuple(f.shape[-2:]) for f in feats], feats[0].device)

    def _prior_strides(self, priors: list[Tensor]) -> Tensor:
        strides = self.prior_generator.strides
        return torch.cat([p.new_full((p.shape[0],), float(s)) for p, s in zip(priors, strides, strict=False)])

    def decode(self, priors: Tensor, box_reg: Tensor, strides: Tensor) -> Tensor:
        """priors [P,4] anchors or [P,2] points, box_reg [..., P, 4], strides [P] -> boxes [..., P, 4]."""
        if isinstance(self.prior_generator, PointGenerator):
            return decode_distances(priors, F.relu(box_reg.float()) * strides[:, None])
        return decode_deltas(priors, box_reg, self.box_coder_weights)

    def encode(self, priors: Tensor, boxes: Tensor, strides: Tensor) -> Tensor:
        """Regression targets that `decode` turns back into `boxes`: priors [P,4] or [P,2], boxes [P,4],
        strides [P] -> [P, 4] (anchor deltas, or distances / stride for points; the latter before the ReLU).
        Degenerate (zero-size) boxes are widened to 0.01 pixel so that the log of the delta coding stays finite."""
        boxes = boxes.float()
        if isinstance(self.prior_generator, PointGenerator):
            return encode_distances(priors, boxes) / strides[:, None]
        size = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0.01)  # [P, 2]
        centers = (boxes[:, :2] + boxes[:, 2:]) / 2  # [P, 2]
        boxes = torch.cat([centers - size / 2, centers + size / 2], dim=1)  # [P, 4]
        return encode_deltas(priors, boxes, self.box_coder_weights)

    def assign(self, priors: list[Tensor], targets: list[dict[str, Tensor]], cls: Tensor | None = None,
               box_reg: Tensor | None = None, quality: Tensor | None = None) -> Tensor:
        """GT index per prior for every image -> int64 [N, K] (-1 background, -2 ignored). The predictions of
        `predict_raw` are accepted for a uniform call with the prediction-aware detectors (SimOTA, PAA) and unused
        by the static assigners."""
        return torch.stack([self.assigner(priors, t["boxes"].to(priors[0]).float()) for t in targets])

    def anchor_labels(self, matched: Tensor, targets: list[dict[str, Tensor]]) -> Tensor:
        """Classification label of every prior from the assignment [N, K] -> int64 [N, K]: the matched GT's class
        (0..C-1), C for background, -1 for ignored (the loss convention)."""
        labels = torch.full_like(matched, self.num_classes)  # background everywhere
        labels[matched == IGNORE] = -1
        for i, target in enumerate(targets):
            positive = matched[i] >= 0
            labels[i, positive] = target["labels"].to(matched.device).long()[matched[i, positive]]
        return labels

    def compute_losses(
        self,
        cls: Tensor,
        box_reg: Tensor,
        quality: Tensor | None,
        priors: list[Tensor],
        matched: Tensor,
        targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        """Losses from the flattened head outputs (see `predict_raw`) and the assignment [N, K]."""
        n, k, c = cls.shape
        device = cls.device
        all_priors = torch.cat(priors, dim=0)  # [K, 4] or [K, 2]
        strides = self._prior_strides(priors)  # [K]
        # GT boxes of the whole batch in one tensor; matched indices shifted per image.
        gt_boxes = torch.cat([t["boxes"].to(device).float() for t in targets])  # [sum M, 4]
        counts = torch.tensor([t["boxes"].shape[0] for t in targets], device=device)
        offsets = torch.cumsum(counts, 0) - counts  # [N]
        positive = matched >= 0  # [N, K]
        img_idx, prior_idx = positive.nonzero(as_tuple=True)  # [P] each
        gt_idx = matched[img_idx, prior_idx] + offsets[img_idx]  # [P], index into the batch's GTs

        labels = self.anchor_labels(matched, targets)  # [N, K]
        num_pos = reduce_mean(float(img_idx.numel())).clamp(min=1.0).item()

        pos_priors, pos_strides = all_priors[prior_idx], strides[prior_idx]  # [P, 4|2], [P]
        pred_boxes = self.decode(pos_priors, box_reg[img_idx, prior_idx], pos_strides)  # [P, 4]
        target_boxes = gt_boxes[gt_idx]  # [P, 4]
        iou_target = paired_box_iou(pred_boxes.detach(), target_boxes)  # [P]

        scores = None
        if getattr(self.cls_loss, "needs_scores", False):
            scores = torch.zeros(n, k, device=device)  # [N, K]
            scores[img_idx, prior_idx] = iou_target
            scores = scores.reshape(-1)  # [N*K]
        loss_cls = self.cls_loss(cls.reshape(n * k, c), labels.reshape(-1), scores=scores, normalizer=num_pos)

        if self.head.quality == "iou":
            quality_target = iou_target
        elif self.head.quality == "centerness":
            centers = pos_priors if pos_priors.shape[1] == 2 else (pos_priors[:, :2] + pos_priors[:, 2:]) / 2
            quality_target = centerness_target(centers, target_boxes)  # [P]
        else:
            quality_target = torch.ones_like(iou_target)
        box_norm = reduce_mean(quality_target.sum()).clamp(min=1e-6).item()
        box_loss_fn = giou_loss if self.box_loss == "giou" else iou_loss
        loss_box = box_loss_fn(pred_boxes, target_boxes, weight=quality_target, normalizer=box_norm)
        losses = {"loss_cls": loss_cls, "loss_box": loss_box * self.box_loss_weight}
        if self.l1_loss_weight > 0:
            reg_target = self.encode(pos_priors, target_boxes, pos_strides)  # [P, 4]
            l1 = (box_reg[img_idx, prior_idx].float() - reg_target).abs().sum(dim=1)  # [P]
            losses["loss_l1"] = (l1 * quality_target.detach()).sum() / box_norm * self.l1_loss_weight
        if quality is not None:
            pos_quality = quality[img_idx, prior_idx].float()  # [P]
            losses["loss_quality"] = (
                F.binary_cross_entropy_with_logits(pos_quality, quality_target, reduction="sum") / num_pos
            )
        return losses

    def postprocess(
        self,
        cls: Tensor,
        box_reg: Tensor,
        quality: Tensor | None,
        priors: list[Tensor],
        image_sizes: Sequence[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """Decode every prior's box and run `postprocess_detections` with the test settings."""
        boxes = self.decode(torch.cat(priors), box_reg, self._prior_strides(priors))  # [N, K, 4]
        return postprocess_detections(
            cls, boxes, quality if self.head.quality != "none" else None, [p.shape[0] for p in priors],
            image_sizes, pre_nms_topk=self.test_pre_nms_topk, score_thresh=self.test_score_thresh,
            nms_iou=self.test_nms_iou, max_per_image=self.test_max_per_image, voting_sigma=self.voting_sigma,
        )

    # ------------------------------------------------------------------------------------------ forward
    def forward(
        self,
        images: Tensor,
        targets: list[dict[str, Tensor]] | None = None,
        image_sizes: Sequence[Sequence[int]] | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Train mode: losses dict; eval mode: detections per image (see the module docstring)."""
        sizes = check_images(images, image_sizes)
        if self.training:
            if targets is None:
                raise UserInputError("in train mode the detector needs targets: call model(images, targets)")
            check_targets(targets, images.shape[0], self.num_classes)
        feats = self.features(images)
        cls, box_reg, quality = self.predict_raw(feats)
        priors = self.priors(feats)
        if self.training:
            matched = self.assign(priors, targets, cls, box_reg, quality)  # predictions: for PAA's assignment
            return self.compute_losses(cls, box_reg, quality, priors, matched, targets)
        return self.postprocess(cls, box_reg, quality, priors, sizes)
