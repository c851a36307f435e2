"""The original YOLOX supervision (Ge et al., 2021): anchor-free points, SimOTA, objectness, BCE - the
"Sigmoid" rows of the paper's Table 8 (Appendix A).

Shape letters: N images, H x W padded batch size, K points in all levels, K_l points on level l,
C foreground classes, M ground-truth boxes of one image, P positive points in the batch, L levels.

Same contract as `efldet.models.detector.DenseDetector`:
- train mode: `model(images, targets, image_sizes)` -> {"loss_cls", "loss_obj", "loss_iou", "loss_l1"} scalars
  (`loss_l1` is an exact 0 while `use_l1` is off, so the keys never change during training);
- eval mode: `model(images, image_sizes=...)` -> N dicts {"boxes" [D, 4], "scores" [D], "labels" [D]}.

Decoding (YOLOX): the head's raw box output (dx, dy, dw, dh) of the cell (gx, gy) on a level of stride s is the
box of centre ((gx + dx) s, (gy + dy) s) and size (exp(dw) s, exp(dh) s). Priors are the grid corners
(gx s, gy s) (`PointGenerator(offset=0)`); SimOTA measures geometry at the cell centres (gx + 0.5, gy + 0.5) s.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from efldet.engine.dist import reduce_mean
from efldet.errors import UserInputError
from efldet.losses.common import check_logits_labels, resolve_normalizer
from efldet.models.anchors import PointGenerator
from efldet.models.assigners.simota import YOLOXScores, simota_assign
from efldet.models.heads.dense_head import concat_levels
from efldet.models.postprocess import postprocess_detections
from efldet.structures import check_images, check_targets, paired_box_iou

# exp() of a predicted log-size is clamped here only to keep it finite (a box of e^20 strides).
LOG_SIZE_CLAMP = 20.0
L1_EPS = 1e-8  # log(w / stride + eps) of the L1 target, as YOLOX


class SoftTargetBCELoss(nn.Module):
    """YOLOX's classification loss: sigmoid BCE with the target one_hot(label) x score, summed / normalizer.

    `forward(logits [K, C], labels int64 [K], scores float [K], normalizer=None) -> scalar`, the calling
    convention of `efldet.losses` (labels 0..C-1 foreground, C background (all-zero target), -1 ignored;
    normalizer default max(#foreground, 1)). It equals `QualityFocalLoss(beta=0)`, without that kernel's
    0 * inf in the gradient when a probability equals its target exactly.
    """

    needs_scores = True

    def forward(self, logits: Tensor, labels: Tensor, scores: Tensor | None = None,
                normalizer: float | Tensor | None = None) -> Tensor:
        where = type(self).__name__
        check_logits_labels(logits, labels, where=where)
        if scores is None or scores.shape != labels.shape:
            raise ValueError(f"{where}: scores (the IoU target of each foreground row, float [K] = "
                             f"[{labels.shape[0]}]) are required")
        num_classes = logits.shape[1]
        norm = resolve_normalizer(normalizer, labels, num_classes, where=where)
        foreground = (labels >= 0) & (labels < num_classes)  # [K]
        target = torch.zeros_like(logits, dtype=torch.float32)  # [K, C]
        rows = foreground.nonzero().squeeze(1)  # [F]
        target[rows, labels[rows]] = scores[rows].detach().float()
        loss = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")  # [K, C]
        return loss[labels >= 0].sum() / norm


class YOLOXDetector(nn.Module):
    """backbone -> neck -> head (cls, box, objectness), SimOTA targets, YOLOX losses and post-processing.

    Args:
        backbone: image [N,3,H,W] -> feature maps (e.g. CSPDarknet's [C3, C4, C5]).
        neck: those maps -> L maps at `strides` (e.g. PAFPN).
        head: any module whose forward(feats) returns per level (cls [N, C, H_l, W_l], box [N, 4, H_l, W_l] raw
            (dx, dy, dw, dh), quality [N, 1, H_l, W_l] = objectness logits), with attributes `num_classes`,
            `num_anchors` (1) and `quality` (anything but "none"; "obj" for YOLOX's head).
        num_classes: C.
        strides: stride of every neck level (8, 16, 32 in YOLOX).
        cls_loss: a classification loss with the `efldet.losses` convention (`forward(logits, labels,
            scores=None, normalizer=None)`, `needs_scores`), exposed as `model.cls_loss` for the statistics.
            Default `SoftTargetBCELoss()`: YOLOX's BCE with target one_hot x IoU. A loss with `needs_scores`
            (QFL, EQFL) gets the IoU of each positive as its soft target; one without (FL, EFL, BCE) hard
            one-hot targets.
        cls_positives_only: True (YOLOX): the classification loss sees the positive points only and the
            objectness handles the background. False: it sees every point, the background with label C (the
            usual setting of the focal-loss family, whose gradient statistics then count real negatives).
        use_l1: add the L1 loss of the raw box outputs (YOLOX switches it on for the last 15 epochs: the
            trainer sets `model.use_l1 = True`).
        iou_loss_weight: weight of the IoU loss (5 in YOLOX).
        center_radius, candidate_topk, iou_cost_weight: SimOTA settings (see `simota_assign`).
        test_*: post-processing settings (see `postprocess_detections`); YOLOX uses a 0.65 NMS threshold.

    Losses, each normalised by the number of positives averaged over ranks (>= 1):
        loss_obj = sum over all points of BCE(objectness, 1 if positive else 0);
        loss_cls = `cls_loss` (see `cls_positives_only`);
        loss_iou = iou_loss_weight x sum over positives of (1 - IoU(decoded box, GT)^2);
        loss_l1 = sum over positives of |raw box output - encoded GT| (gx + dx = cx / s, dw = log(w / s)).
    Inference score = sigmoid(cls) x sigmoid(objectness).
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        neck: nn.Module,
        head: nn.Module,
        num_classes: int,
        strides: Sequence[int] = (8, 16, 32),
        cls_loss: nn.Module | None = None,
        cls_positives_only: bool = True,
        use_l1: bool = False,
        iou_loss_weight: float = 5.0,
        center_radius: float = 2.5,
        candidate_topk: int = 10,
        iou_cost_weight: float = 3.0,
        test_pre_nms_topk: int = 1000,
        test_score_thresh: float = 0.01,
        test_nms_iou: float = 0.65,
        test_max_per_image: int = 300,
    ) -> None:
        super().__init__()
        if getattr(head, "num_anchors", 1) != 1:
            raise UserInputError(f"YOLOXDetector needs a head with one prior per location (num_anchors=1), got "
                                 f"{head.num_anchors}")
        if getattr(head, "num_classes", num_classes) != num_classes:
            raise UserInputError(f"head has {head.num_classes} classes, detector {num_classes}")
        if getattr(head, "quality", "obj") == "none":
            raise UserInputError("YOLOXDetector needs an objectness map: build the head with a quality branch "
                                 "(quality='obj')")
        self.backbone = backbone
        self.neck = neck
        self.head = head
        self.num_classes = num_classes
        self.prior_generator = PointGenerator(strides=strides, offset=0.0)  # grid corners (gx s, gy s)
        self.cls_loss = cls_loss if cls_loss is not None else SoftTargetBCELoss()
        self.cls_positives_only = bool(cls_positives_only)
        self.use_l1 = bool(use_l1)
        self.iou_loss_weight = float(iou_loss_weight)
        self.center_radius = float(center_radius)
        self.candidate_topk = int(candidate_topk)
        self.iou_cost_weight = float(iou_cost_weight)
        self.test_pre_nms_topk = test_pre_nms_topk
        self.test_score_thresh = test_score_thresh
        self.test_nms_iou = test_nms_iou
        self.test_max_per_image = test_max_per_image

    @property
    def strides(self) -> tuple[int, ...]:
        return self.prior_generator.strides

    # ------------------------------------------------------------------------------------------ pieces
    def features(self, images: Tensor) -> list[Tensor]:
        """Backbone + neck: [N,3,H,W] -> L maps [N, channels, H_l, W_l]."""
        feats = list(self.neck(self.backbone(images)))
        if len(feats) != len(self.strides):
            raise UserInputError(f"the neck returned {len(feats)} feature maps but the detector has strides "
                                 f"{list(self.strides)}: give one stride per neck level")
        return feats

    def predict_raw(self, feats: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Head on the pyramid, flattened over levels: cls [N,K,C], raw box [N,K,4], objectness [N,K] logits."""
        cls_maps, box_maps, obj_maps = self.head(feats)
        if obj_maps is None:
            raise UserInputError("the head returned no objectness maps; YOLOXDetector needs quality='obj'")
        cls = concat_levels(cls_maps, self.num_classes)  # [N, K, C]
        box = concat_levels(box_maps, 4)  # [N, K, 4]
        obj = concat_levels(obj_maps, 1)[..., 0]  # [N, K, 1] -> [N, K]
        return cls, box, obj

    def priors(self, feats: list[Tensor]) -> list[Tensor]:
        """Grid corners (gx s, gy s) [K_l, 2] of every level, in the order of `predict_raw`."""
        return self.prior_generator([tuple(f.shape[-2:]) for f in feats], feats[0].device)

    def _prior_strides(self, priors: list[Tensor]) -> Tensor:
        return torch.cat([p.new_full((p.shape[0],), float(s)) for p, s in zip(priors, self.strides, strict=False)])

    def decode(self, priors: Tensor, box_reg: Tensor, strides: Tensor) -> Tensor:
        """Grid corners [P, 2], raw box [..., P, 4], strides [P] -> boxes [..., P, 4] xyxy float32 (YOLOX coding)."""
        box_reg = box_reg.float()
        centers = priors + box_reg[..., :2] * strides[:, None]  # [..., P, 2]
        half = 0.5 * torch.exp(box_reg[..., 2:].clamp(max=LOG_SIZE_CLAMP)) * strides[:, None]  # [..., P, 2]
        return torch.cat([centers - half, centers + half], dim=-1)

    def assign(
        self,
        priors: list[Tensor],
        targets: list[dict[str, Tensor]],
        cls: Tensor | None = None,
        box_reg: Tensor | None = None,
        quality: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """SimOTA for every image from the predictions of `predict_raw` (cls [N,K,C], box_reg [N,K,4],
        objectness [N,K]) -> (GT index per point int64 [N, K] (-1 background), IoU of each positive [N, K])."""
        if cls is None or box_reg is None or quality is None:
            raise UserInputError("SimOTA assigns from the predictions: call model.assign(priors, targets, cls, "
                                 "box_reg, objectness) with the outputs of model.predict_raw(feats)")
        with torch.no_grad():
            corners = torch.cat(priors)  # [K, 2]
            strides = self._prior_strides(priors)  # [K]
            centers = corners + 0.5 * strides[:, None]  # [K, 2]: cell centres
            boxes = self.decode(corners, box_reg.detach(), strides)  # [N, K, 4]
            matched, ious = [], []
            for i, target in enumerate(targets):
                scores = YOLOXScores(cls[i].detach(), quality[i].detach())  # [K, C], computed for candidates only
                gt_idx, iou = simota_assign(
                    centers, strides, boxes[i], scores, target["boxes"].to(corners), target["labels"],
                    center_radius=self.center_radius, candidate_topk=self.candidate_topk,
                    iou_weight=self.iou_cost_weight,
                )
                matched.append(gt_idx)
                ious.append(iou)
        return torch.stack(matched), torch.stack(ious)

    def anchor_labels(self, matched: Tensor, targets: list[dict[str, Tensor]]) -> Tensor:
        """Class label of every point from the assignment [N, K] -> int64 [N, K]: the GT's class or C."""
        labels = torch.full_like(matched, self.num_classes)  # background everywhere
        for i, target in enumerate(targets):
            positive = matched[i] >= 0
            labels[i, positive] = target["labels"].to(matched.device).long()[matched[i, positive]]
        return labels

    def compute_losses(
        self,
        cls: Tensor,
        box_reg: Tensor,
        obj: Tensor,
        priors: list[Tensor],
        matched: Tensor,
        matched_iou: Tensor,
        targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        """Losses from the flattened head outputs (see `predict_raw`) and the assignment (see `assign`)."""
        n, k, c = cls.shape
        device = cls.device
        corners = torch.cat(priors)  # [K, 2]
        strides = self._prior_strides(priors)  # [K]
        # GT boxes of the whole batch in one tensor; matched indices shifted per image.
        gt_boxes = torch.cat([t["boxes"].to(device).float() for t in targets])  # [sum M, 4]
        counts = torch.tensor([t["boxes"].shape[0] for t in targets], device=device)
        offsets = torch.cumsum(counts, 0) - counts  # [N]
        positive = matched >= 0  # [N, K]
        img_idx, prior_idx = positive.nonzero(as_tuple=True)  # [P] each
        gt_idx = matched[img_idx, prior_idx] + offsets[img_idx]  # [P], index into the batch's GTs
        num_pos = reduce_mean(float(img_idx.numel())).clamp(min=1.0).item()

        labels = self.anchor_labels(matched, targets)  # [N, K]
        iou_target = matched_iou[img_idx, prior_idx]  # [P], SimOTA's IoU (predictions before this step)
        needs_scores = getattr(self.cls_loss, "needs_scores", False)
        if self.cls_positives_only:
            loss_cls = self.cls_loss(cls[img_idx, prior_idx], labels[img_idx, prior_idx],
                                     scores=iou_target if needs_scores else None, normalizer=num_pos)
        else:
            loss_cls = self.cls_loss(cls.reshape(n * k, c), labels.reshape(-1),
                                     scores=matched_iou.reshape(-1) if needs_scores else None,
                                     normalizer=num_pos)  # [N, K, C] -> [N*K, C]
        loss_obj = F.binary_cross_entropy_with_logits(obj.float(), positive.float(), reduction="sum") / num_pos

        pos_corners, pos_strides = corners[prior_idx], strides[prior_idx]  # [P, 2], [P]
        pos_reg = box_reg[img_idx, prior_idx].float()  # [P, 4]
        pred_boxes = self.decode(pos_corners, pos_reg, pos_strides)  # [P, 4]
        target_boxes = gt_boxes[gt_idx]  # [P, 4]
        iou = paired_box_iou(pred_boxes, target_boxes)  # [P], differentiable
        loss_iou = (1.0 - iou.pow(2)).sum() / num_pos
        if self.use_l1:
            target_ctr = (target_boxes[:, :2] + target_boxes[:, 2:]) / 2  # [P, 2]
            target_size = target_boxes[:, 2:] - target_boxes[:, :2]  # [P, 2]
            l1_target = torch.cat([
                (target_ctr - pos_corners) / pos_strides[:, None],
                torch.log(target_size / pos_strides[:, None] + L1_EPS),
            ], dim=1)  # [P, 4]
            loss_l1 = F.l1_loss(pos_reg, l1_target, reduction="sum") / num_pos
        else:
            loss_l1 = pos_reg.sum() * 0.0  # an exact 0 on the graph: same keys in every step
        return {"loss_cls": loss_cls, "loss_obj": loss_obj, "loss_iou": loss_iou * self.iou_loss_weight,
                "loss_l1": loss_l1}

    def postprocess(
        self,
        cls: Tensor,
        box_reg: Tensor,
        obj: Tensor,
        priors: list[Tensor],
        image_sizes: Sequence[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """Decode every point's box and run `postprocess_detections` (score = sigmoid(cls) x sigmoid(obj))."""
        boxes = self.decode(torch.cat(priors), box_reg, self._prior_strides(priors))  # [N, K, 4]
        return postprocess_detections(
            cls, boxes, obj, [p.shape[0] for p in priors], image_sizes,
            pre_nms_topk=self.test_pre_nms_topk, score_thresh=self.test_score_thresh,
            nms_iou=self.test_nms_iou, max_per_image=self.test_max_per_image,
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
        cls, box_reg, obj = self.predict_raw(feats)
        priors = self.priors(feats)
        if self.training:
            matched, matched_iou = self.assign(priors, targets, cls, box_reg, obj)
            return self.compute_losses(cls, box_reg, obj, priors, matched, matched_iou, targets)
        return self.postprocess(cls, box_reg, obj, priors, sizes)
