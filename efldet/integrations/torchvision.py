"""EFL (or any efldet classification loss) inside `torchvision.models.detection` RetinaNet and FCOS.

    model = torchvision.models.detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    use_efldet_loss(model, EqualizedFocalLoss(num_classes=90))   # 90 = num_classes - 1, see below
    model(images, targets)["classification"].backward()          # EFL; model.state_dict() holds its statistics

The only extension point used is torchvision's documented one: the head owns `compute_loss`. The RetinaNet
classification head is replaced by a subclass of `RetinaNetClassificationHead` (and FCOS's head by a subclass of
`FCOSHead`) that keeps the original layers (same state-dict keys, so torchvision weights load before or after)
and registers the loss as its submodule `cls_loss`: its buffers appear in `model.state_dict()` as
`head.classification_head.cls_loss.pos_grad` (RetinaNet) or `head.cls_loss.pos_grad` (FCOS) and travel with
checkpoints. Everything else (matching, box losses, normalisation, inference) stays torchvision's.

Labels. torchvision's detection models reserve label 0 for the background: `num_classes` counts it, targets use
1..num_classes-1, and channel 0 of the classification logits is never a positive. efldet's losses take C
foreground channels with labels 0..C-1, C for background and -1 for ignored. With `background_channel=True`
(torchvision's convention, the default) the efldet loss gets channels 1..num_classes-1 as its C = num_classes - 1
classes (torchvision label l -> efldet label l - 1, so statistic j belongs to torchvision label j + 1), and
channel 0 keeps torchvision's treatment: a sigmoid focal loss with every anchor negative. With
`background_channel=False` (a model built with num_classes = the foreground classes and labels 0..C-1) the loss
gets every channel and labels unchanged. Anchors torchvision leaves between thresholds (RetinaNet) are ignored
(-1), unmatched ones are background (C).

Normalisation is torchvision's: RetinaNet divides each image's sum by its foreground count (>= 1) and averages
over images; FCOS divides the batch's sum by its foreground count (>= 1). With `efldet.losses.FocalLoss` the
losses equal torchvision's own focal loss. Shape letters: N images, K anchors of one image, C classes of the
efldet loss.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.detection.fcos import FCOS, FCOSHead
from torchvision.models.detection.retinanet import RetinaNet, RetinaNetClassificationHead

from efldet.errors import UserInputError
from efldet.losses import sigmoid_focal_loss


def _check_loss(cls_loss: nn.Module, num_channels: int, background_channel: bool) -> int:
    """The number of classes C the efldet loss must have; raise if its `num_classes` differs."""
    expected = num_channels - 1 if background_channel else num_channels
    if getattr(cls_loss, "needs_scores", False):
        raise UserInputError(f"{type(cls_loss).__name__} needs IoU scores of the positives, which torchvision's "
                             "heads do not compute: use EqualizedFocalLoss, EQLv2FocalLoss or FocalLoss")
    got = getattr(cls_loss, "num_classes", None)
    if got is not None and got != expected:
        note = " (torchvision's num_classes minus the background channel 0)" if background_channel else ""
        raise UserInputError(f"the loss has num_classes={got} but the model's classification layer needs "
                             f"{expected}{note}: build the loss with num_classes={expected}")
    return expected


def _channel_loss(cls_loss: nn.Module, logits: Tensor, labels: Tensor, normalizer: float,
                  background_channel: bool) -> Tensor:
    """logits [K, num_classes] with torchvision labels [K] (class index, `num_classes` for background, -1 ignored)
    -> the efldet loss (plus the background channel's focal loss when `background_channel`)."""
    num_channels = logits.shape[1]
    if not background_channel:
        return cls_loss(logits, labels, normalizer=normalizer)
    if bool((labels == 0).any()):
        raise UserInputError("a target has label 0, the background class of torchvision's detection models: "
                             "use labels 1..num_classes-1, or use_efldet_loss(..., background_channel=False)")
    efl_labels = torch.where((labels > 0) & (labels < num_channels), labels - 1, labels)  # foreground l -> l - 1
    efl_labels = torch.where(labels == num_channels, labels - 1, efl_labels)  # background: C = num_channels - 1
    loss = cls_loss(logits[:, 1:], efl_labels, normalizer=normalizer)
    # channel 0 as torchvision trains it: negative everywhere (label 1 = background of a 1-class loss)
    channel0_labels = torch.where(labels >= 0, torch.ones_like(labels), labels)  # [K], -1 kept
    return loss + sigmoid_focal_loss(logits[:, :1], channel0_labels, normalizer=normalizer)


def _check_labels(labels: Tensor, num_channels: int) -> None:
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_channels):
        raise UserInputError(f"target labels must be in 0..{num_channels - 1} (the model's num_classes is "
                             f"{num_channels}), got {labels.unique().tolist()}")


class RetinaNetClassificationHeadWithLoss(RetinaNetClassificationHead):
    """torchvision's RetinaNet classification head whose `compute_loss` is an efldet loss (`cls_loss`).

    Takes over the layers of `head` (`conv`, `cls_logits`: same state-dict keys). See the module docstring for
    the label mapping.
    """

    def __init__(self, head: RetinaNetClassificationHead, cls_loss: nn.Module, *,
                 background_channel: bool = True) -> None:
        super().__init__(head.cls_logits.in_channels, head.num_anchors, head.num_classes)
        self.conv, self.cls_logits = head.conv, head.cls_logits  # the trained / configured layers
        _check_loss(cls_loss, head.num_classes, background_channel)
        self.cls_loss = cls_loss
        self.background_channel = background_channel

    def compute_loss(self, targets: list[dict[str, Tensor]], head_outputs: dict[str, Tensor],
                     matched_idxs: list[Tensor]) -> Tensor:
        """Per image: the efldet loss of its anchors / max(1, its foreground count); mean over images."""
        losses = []
        for target, logits, matched in zip(targets, head_outputs["cls_logits"], matched_idxs, strict=True):
            _check_labels(target["labels"], self.num_classes)
            labels = torch.full_like(matched, self.num_classes)  # [K], background
            foreground = matched >= 0
            labels[foreground] = target["labels"][matched[foreground]]
            labels[matched == self.BETWEEN_THRESHOLDS] = -1  # ignored
            normalizer = float(max(1, int(foreground.sum())))
            losses.append(_channel_loss(self.cls_loss, logits, labels, normalizer, self.background_channel))
        return torch.stack(losses).sum() / len(targets)


class FCOSHeadWithLoss(FCOSHead):
    """torchvision's FCOS head whose classification loss is an efldet loss (`cls_loss`).

    Takes over `classification_head`, `regression_head` and `box_coder` of `head` (same state-dict keys); the box
    and centerness losses are torchvision's. See the module docstring for the label mapping.
    """

    def __init__(self, head: FCOSHead, cls_loss: nn.Module, *, background_channel: bool = True) -> None:
        cls_head = head.classification_head
        super().__init__(cls_head.cls_logits.in_channels, cls_head.num_anchors, cls_head.num_classes, num_convs=0)
        self.classification_head, self.regression_head = head.classification_head, head.regression_head
        self.box_coder = head.box_coder
        _check_loss(cls_loss, cls_head.num_classes, background_channel)
        self.cls_loss = cls_loss
        self.background_channel = background_channel

    def compute_loss(self, targets: list[dict[str, Tensor]], head_outputs: dict[str, Tensor],
                     anchors: list[Tensor], matched_idxs: list[Tensor]) -> dict[str, Tensor]:
        """torchvision's losses with `classification` = efldet loss of all anchors / max(1, foreground count)."""
        num_classes = self.classification_head.num_classes
        labels = []
        for target, matched in zip(targets, matched_idxs, strict=True):
            _check_labels(target["labels"], num_classes)
            image_labels = torch.full_like(matched, num_classes)  # [K], background
            foreground = matched >= 0
            image_labels[foreground] = target["labels"][matched[foreground]]
            labels.append(image_labels)
        all_labels = torch.cat(labels)  # [N*K]
        logits = head_outputs["cls_logits"]  # [N, K, num_classes]
        normalizer = float(max(1, int((all_labels < num_classes).sum())))
        losses = super().compute_loss(targets, {**head_outputs, "cls_logits": logits.detach()}, anchors,
                                      matched_idxs)  # box and centerness losses
        losses["classification"] = _channel_loss(self.cls_loss, logits.reshape(-1, logits.shape[-1]),  # [N*K, .]
                                                 all_labels, normalizer, self.background_channel)
        return losses


def use_efldet_loss(model: RetinaNet | FCOS, cls_loss: nn.Module, *, background_channel: bool = True
                    ) -> RetinaNet | FCOS:
    """Make `cls_loss` (EqualizedFocalLoss, EQLv2FocalLoss, FocalLoss, ...) the classification loss of a torchvision
    RetinaNet or FCOS, in place; returns the model. The loss becomes a submodule of the head, so its statistics
    are in `model.state_dict()`. `background_channel`: see the module docstring (True = torchvision's convention,
    label 0 is the background and the loss has num_classes - 1 classes)."""
    if isinstance(model, RetinaNet):
        head = model.head.classification_head
        if isinstance(head, RetinaNetClassificationHeadWithLoss):
            raise UserInputError("this RetinaNet already uses an efldet loss (head.classification_head.cls_loss)")
        model.head.classification_head = RetinaNetClassificationHeadWithLoss(
            head, cls_loss, background_channel=background_channel)
    elif isinstance(model, FCOS):
        if isinstance(model.head, FCOSHeadWithLoss):
            raise UserInputError("this FCOS already uses an efldet loss (head.cls_loss)")
        model.head = FCOSHeadWithLoss(model.head, cls_loss, background_channel=background_channel)
    else:
        raise UserInputError(f"use_efldet_loss supports torchvision RetinaNet and FCOS models, got "
                             f"{type(model).__name__}")
    return model
