"""A small CPU backbone of our own (not from the paper): conv-GN-ReLU stages returning C3-C5.

torchvision's ResNets cannot be made narrower, and ResNet-18 (11 M parameters) is too slow to train from
scratch on a laptop; this one (~0.3 M parameters at the default widths) is for tests and the CPU demo.
Shape letters: N images, H x W input size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn


def _conv_gn_relu(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    groups = math.gcd(8, max(out_channels // 2, 1))  # >= 2 channels per group
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(groups, out_channels),
        nn.ReLU(inplace=True),
    )


class TinyBackbone(nn.Module):
    """Five stride-2 stages of (3x3 conv stride 2, GN, ReLU) + (3x3 conv, GN, ReLU).

    `forward(x [N,3,H,W])` returns [C3, C4, C5] at strides 8, 16, 32 with `widths[2:]` channels.

    Args:
        widths: channels of the five stages (strides 2, 4, 8, 16, 32).
    """

    def __init__(self, *, widths: Sequence[int] = (16, 32, 64, 96, 128), in_channels: int = 3) -> None:
        super().__init__()
        if len(widths) != 5:
            raise ValueError(f"TinyBackbone needs 5 stage widths, got {list(widths)}")
        stages, prev = [], in_channels
        for width in widths:
            stages.append(nn.Sequential(_conv_gn_relu(prev, width, 2), _conv_gn_relu(width, width, 1)))
            prev = width
        self.stages = nn.ModuleList(stages)
        self.out_channels = list(widths[2:])

    def forward(self, x: Tensor) -> list[Tensor]:
        """x [N,3,H,W] -> [C3 [N,widths[2],H/8,W/8], C4 (H/16), C5 (H/32)] (sizes rounded up)."""
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats[2:]
