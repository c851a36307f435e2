"""YOLOX's decoupled head (Ge et al. 2021): separate, unshared classification and regression branches per level.

Shape letters: N images, A anchors (priors) per location, C foreground classes, L levels,
(H_l, W_l) the size of level l.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from efldet.errors import UserInputError
from efldet.models.backbones.cspdarknet import ConvBNAct, conv_bn_act

QUALITIES = ("obj", "iou")


class YOLOXHead(nn.Module):
    """Per level l: a 1 x 1 conv-BN-SiLU stem from `in_channels[l]` to `width`, then

    - classification branch: two 3 x 3 conv-BN-SiLU, then a 1 x 1 conv to A x C logits (`cls_preds`, bias set
      so that sigmoid = `prior_prob`);
    - regression branch: two 3 x 3 conv-BN-SiLU, then 1 x 1 convs to A x 4 box regressions (`reg_preds`) and to
      A quality logits (`obj_preds`): YOLOX's objectness (`quality="obj"`, bias at `prior_prob` as in YOLOX)
      or the IoU branch of the improved baseline (`quality="iou"`, bias 0).

    Weights keep PyTorch's default initialisation (as YOLOX). Nothing is shared between levels; layer names
    are YOLOX's. With A = 1, `quality="obj"` and `width = int(256 x width multiplier)` this is YOLOX's head.

    Args:
        in_channels: channels of every input level, e.g. `PAFPN.out_channels`.
        width: channels of the stems and branches (YOLOX: int(256 x width multiplier), 128 for YOLOX-S).
        num_classes: C, foreground classes (sigmoid, no background channel).
        num_anchors: A, priors per location (1 in YOLOX, 2 in YOLOX-IP).
        quality: "obj" (objectness) | "iou" (IoU branch).
        prior_prob: initial foreground probability of the classification layers.
        depthwise: depthwise-separable 3 x 3 convs (YOLOX-Nano).
    """

    def __init__(
        self,
        *,
        in_channels: Sequence[int],
        width: int,
        num_classes: int,
        num_anchors: int = 1,
        quality: str = "obj",
        prior_prob: float = 0.01,
        depthwise: bool = False,
    ) -> None:
        super().__init__()
        if quality not in QUALITIES:
            raise UserInputError(f"YOLOXHead quality must be one of {QUALITIES}, got {quality!r}")
        if not 0.0 < prior_prob < 1.0:
            raise UserInputError(f"YOLOXHead prior_prob must be in (0, 1), got {prior_prob}")
        if num_classes < 1 or num_anchors < 1 or width < 1 or not in_channels:
            raise UserInputError(f"YOLOXHead needs num_classes, num_anchors, width >= 1 and at least one level, got "
                                 f"{num_classes}, {num_anchors}, {width} and in_channels {list(in_channels)}")
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.quality = quality
        self.width = width

        def branch() -> nn.Sequential:
            return nn.Sequential(conv_bn_act(width, width, 3, depthwise=depthwise),
                                 conv_bn_act(width, width, 3, depthwise=depthwise))

        self.stems = nn.ModuleList(ConvBNAct(int(c), width, 1) for c in in_channels)
        self.cls_convs = nn.ModuleList(branch() for _ in in_channels)
        self.reg_convs = nn.ModuleList(branch() for _ in in_channels)
        self.cls_preds = nn.ModuleList(nn.Conv2d(width, num_anchors * num_classes, 1) for _ in in_channels)
        self.reg_preds = nn.ModuleList(nn.Conv2d(width, num_anchors * 4, 1) for _ in in_channels)
        self.obj_preds = nn.ModuleList(nn.Conv2d(width, num_anchors, 1) for _ in in_channels)
        prior_bias = -math.log((1.0 - prior_prob) / prior_prob)
        for cls_pred, obj_pred in zip(self.cls_preds, self.obj_preds, strict=True):
            nn.init.constant_(cls_pred.bias, prior_bias)
            nn.init.constant_(obj_pred.bias, prior_bias if quality == "obj" else 0.0)

    def classification_biases(self) -> list[nn.Parameter]:
        """The bias of every level's final classification conv: the `optim.cls_bias_weight_decay` group."""
        return [cls_pred.bias for cls_pred in self.cls_preds]

    def forward(self, feats: list[Tensor]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """feats: L maps [N, in_channels[l], H_l, W_l] -> per level cls [N, A*C, H_l, W_l], box regression
        [N, A*4, H_l, W_l] and quality logits [N, A, H_l, W_l]."""
        if len(feats) != len(self.stems):
            raise ValueError(f"YOLOXHead built for {len(self.stems)} levels got {len(feats)} feature maps")
        cls_out, box_out, quality_out = [], [], []
        for level, feat in enumerate(feats):
            x = self.stems[level](feat)  # [N, width, H_l, W_l]
            cls_feat = self.cls_convs[level](x)
            reg_feat = self.reg_convs[level](x)
            cls_out.append(self.cls_preds[level](cls_feat))
            box_out.append(self.reg_preds[level](reg_feat))
            quality_out.append(self.obj_preds[level](reg_feat))
        return cls_out, box_out, quality_out
