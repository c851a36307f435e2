"""Dense head shared by the one-stage detectors: classification and box towers on every FPN level.

Shape letters: N images, A anchors (or points) per location, C foreground classes, L levels,
K priors in all levels (sum over levels of H_l * W_l * A).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

QUALITIES = ("iou", "centerness", "none")


class DenseHead(nn.Module):
    """Two towers of `num_convs` (3x3 conv, GN, ReLU) shared over levels, then

    - classification: A x C logits per location (bias set so that sigmoid = `prior_prob`);
    - box: A x 4 regression per location, times a learnable per-level scale;
    - quality: A logits per location on the box tower: the IoU branch (improved baseline), centerness
      (ATSS / FCOS) or nothing (`quality="none"`, RetinaNet).

    Args:
        in_channels: channels of every FPN level (also the tower width).
        num_classes: C, foreground classes (sigmoid, no background channel).
        num_anchors: A, priors per location.
        norm_groups: GroupNorm groups (32 in the paper), reduced to gcd(norm_groups, in_channels / 2) so
            that narrow heads keep >= 2 channels per group; 0 disables normalisation.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        num_anchors: int = 1,
        num_convs: int = 4,
        norm_groups: int = 32,
        quality: str = "iou",
        prior_prob: float = 0.001,
        num_levels: int = 5,
    ) -> None:
        super().__init__()
        if quality not in QUALITIES:
            raise ValueError(f"quality must be one of {QUALITIES}, got {quality!r}")
        if not 0.0 < prior_prob < 1.0:
            raise ValueError(f"prior_prob must be in (0, 1), got {prior_prob}")
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.quality = quality
        self.cls_tower = self._tower(in_channels, num_convs, norm_groups)
        self.box_tower = self._tower(in_channels, num_convs, norm_groups)
        self.cls_logits = nn.Conv2d(in_channels, num_anchors * num_classes, 3, padding=1)
        self.box_reg = nn.Conv2d(in_channels, num_anchors * 4, 3, padding=1)
        self.quality_logits = (
            nn.Conv2d(in_channels, num_anchors, 3, padding=1) if quality != "none" else None
        )
        self.scales = nn.Parameter(torch.ones(num_levels))  # one learnable box scale per level
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.constant_(module.bias, 0.0)
        nn.init.constant_(self.cls_logits.bias, -math.log((1.0 - prior_prob) / prior_prob))

    @staticmethod
    def _tower(channels: int, num_convs: int, norm_groups: int) -> nn.Sequential:
        layers: list[nn.Module] = []
        for _ in range(num_convs):
            layers.append(nn.Conv2d(channels, channels, 3, padding=1))
            if norm_groups > 0:
                layers.append(nn.GroupNorm(math.gcd(norm_groups, max(channels // 2, 1)), channels))
            layers.append(nn.ReLU(inplace=True))
        return nn.Sequential(*layers)

    def classification_biases(self) -> list[nn.Parameter]:
        """The final classification conv's bias (shared by all levels): the `optim.cls_bias_weight_decay` group."""
        return [self.cls_logits.bias]

    def forward(self, feats: list[Tensor]) -> tuple[list[Tensor], list[Tensor], list[Tensor] | None]:
        """feats: L maps [N, in_channels, H_l, W_l] -> per level cls [N, A*C, H_l, W_l],
        box [N, A*4, H_l, W_l] (already scaled) and quality [N, A, H_l, W_l] (None without a branch)."""
        if len(feats) > self.scales.numel():
            raise ValueError(f"head built for {self.scales.numel()} levels got {len(feats)} feature maps")
        cls_out, box_out, quality_out = [], [], []
        for level, feat in enumerate(feats):
            cls_feat = self.cls_tower(feat)
            box_feat = self.box_tower(feat)
            cls_out.append(self.cls_logits(cls_feat))
            box_out.append(self.box_reg(box_feat) * self.scales[level])
            if self.quality_logits is not None:
                quality_out.append(self.quality_logits(box_feat))
        return cls_out, box_out, (quality_out if self.quality_logits is not None else None)


def concat_levels(maps: list[Tensor], dim: int) -> Tensor:
    """Per-level head outputs [N, A*dim, H_l, W_l] -> [N, K, dim] with priors ordered (level, y, x, a),
    the order of `AnchorGenerator` / `PointGenerator`."""
    flat = []
    for m in maps:
        n, _, h, w = m.shape
        m = m.view(n, -1, dim, h, w)  # [N, A, dim, H, W]
        m = m.permute(0, 3, 4, 1, 2)  # [N, H, W, A, dim]
        flat.append(m.reshape(n, -1, dim))  # [N, H*W*A, dim]
    return torch.cat(flat, dim=1)  # [N, K, dim]
