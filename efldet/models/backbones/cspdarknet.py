"""YOLOX's CSPDarknet backbone (Ge et al. 2021), returning the dark3, dark4 and dark5 maps as C3, C4, C5.

The layout (Focus stem, four stride-2 stages of conv + CSP layer, SPP in the last one) and the parameter
count follow the official YOLOX models; the building blocks here (`ConvBNAct`, `DWConvBNAct`,
`Bottleneck`, `CSPLayer`, `SPPBottleneck`) are shared with the PAFPN neck and the YOLOX head.
Every convolution is Conv (no bias) - BatchNorm (eps 1e-3, momentum 0.03, YOLOX's values) - SiLU.

Shape letters: N images, H x W input size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from efldet.errors import UserInputError

# YOLOX model sizes: name -> (depth multiplier, width multiplier, depthwise convolutions).
YOLOX_SIZES: dict[str, tuple[float, float, bool]] = {
    "nano": (0.33, 0.25, True),
    "tiny": (0.33, 0.375, False),
    "s": (0.33, 0.50, False),
    "m": (0.67, 0.75, False),
    "l": (1.0, 1.0, False),
    "x": (1.33, 1.25, False),
}

BN_EPS = 1e-3  # YOLOX's BatchNorm epsilon
BN_MOMENTUM = 0.03  # YOLOX's BatchNorm momentum


class ConvBNAct(nn.Module):
    """k x k conv (no bias, padding (k - 1) / 2) - BN - SiLU: [N, in, H, W] -> [N, out, H / stride, W / stride]."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                              padding=(kernel_size - 1) // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """x [N, in, H, W] -> [N, out, H / stride, W / stride]."""
        return self.act(self.bn(self.conv(x)))


class DWConvBNAct(nn.Module):
    """Depthwise k x k conv-BN-SiLU then pointwise 1 x 1 conv-BN-SiLU (YOLOX-Nano's cheap convolution)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__()
        self.dconv = ConvBNAct(in_channels, in_channels, kernel_size, stride, groups=in_channels)
        self.pconv = ConvBNAct(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """x [N, in, H, W] -> [N, out, H / stride, W / stride]."""
        return self.pconv(self.dconv(x))


def conv_bn_act(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, *,
                depthwise: bool = False) -> nn.Module:
    """`DWConvBNAct` when `depthwise`, else `ConvBNAct` (the choice YOLOX makes for its 3 x 3 convs)."""
    if depthwise:
        return DWConvBNAct(in_channels, out_channels, kernel_size, stride)
    return ConvBNAct(in_channels, out_channels, kernel_size, stride)


class Bottleneck(nn.Module):
    """1 x 1 conv to `hidden` channels, 3 x 3 conv back, plus the input when `shortcut` and in == out."""

    def __init__(self, in_channels: int, out_channels: int, *, shortcut: bool = True, expansion: float = 1.0,
                 depthwise: bool = False) -> None:
        super().__init__()
        hidden = int(out_channels * expansion)
        self.conv1 = ConvBNAct(in_channels, hidden, 1)
        self.conv2 = conv_bn_act(hidden, out_channels, 3, depthwise=depthwise)
        self.use_add = shortcut and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        """x [N, in, H, W] -> [N, out, H, W]."""
        y = self.conv2(self.conv1(x))
        return y + x if self.use_add else y


class CSPLayer(nn.Module):
    """Cross-stage partial layer: two 1 x 1 branches of out/2 channels, `num_blocks` bottlenecks on the first,
    concatenated and fused by a 1 x 1 conv: [N, in, H, W] -> [N, out, H, W]."""

    def __init__(self, in_channels: int, out_channels: int, *, num_blocks: int = 1, shortcut: bool = True,
                 depthwise: bool = False) -> None:
        super().__init__()
        hidden = int(out_channels * 0.5)
        self.conv1 = ConvBNAct(in_channels, hidden, 1)
        self.conv2 = ConvBNAct(in_channels, hidden, 1)
        self.conv3 = ConvBNAct(2 * hidden, out_channels, 1)
        self.m = nn.Sequential(  # the bottlenecks
            *[Bottleneck(hidden, hidden, shortcut=shortcut, depthwise=depthwise) for _ in range(num_blocks)]
        )

    def forward(self, x: Tensor) -> Tensor:
        """x [N, in, H, W] -> [N, out, H, W]."""
        return self.conv3(torch.cat([self.m(self.conv1(x)), self.conv2(x)], dim=1))  # [N, 2*hidden, H, W]


class SPPBottleneck(nn.Module):
    """Spatial pyramid pooling: 1 x 1 conv to in/2, max-pools 5, 9, 13 (stride 1) concatenated with the
    input, 1 x 1 conv to `out_channels`: [N, in, H, W] -> [N, out, H, W]."""

    def __init__(self, in_channels: int, out_channels: int, kernel_sizes: tuple[int, ...] = (5, 9, 13)) -> None:
        super().__init__()
        hidden = in_channels // 2
        self.conv1 = ConvBNAct(in_channels, hidden, 1)
        self.m = nn.ModuleList(nn.MaxPool2d(k, stride=1, padding=k // 2) for k in kernel_sizes)  # the pools
        self.conv2 = ConvBNAct(hidden * (len(kernel_sizes) + 1), out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """x [N, in, H, W] -> [N, out, H, W]."""
        x = self.conv1(x)
        return self.conv2(torch.cat([x] + [pool(x) for pool in self.m], dim=1))  # [N, 4*hidden, H, W]


class Focus(nn.Module):
    """Space-to-depth stem: the four pixels of every 2 x 2 cell as 12 channels, then a conv-BN-SiLU:
    [N, 3, H, W] -> [N, out, ceil(H / 2), ceil(W / 2)] (odd sizes are zero-padded on the bottom / right)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = ConvBNAct(in_channels * 4, out_channels, kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        """x [N, 3, H, W] -> [N, out, ceil(H / 2), ceil(W / 2)]."""
        x = F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))  # even H, W
        # YOLOX's channel order: (top-left, bottom-left, top-right, bottom-right) pixel of each cell
        cells = [x[..., 0::2, 0::2], x[..., 1::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 1::2]]
        return self.conv(torch.cat(cells, dim=1))  # [N, 4*3, H/2, W/2] -> [N, out, H/2, W/2]


def _check_multipliers(depth_multiplier: float, width_multiplier: float, where: str) -> None:
    if not depth_multiplier > 0 or not width_multiplier > 0:
        raise UserInputError(f"{where}: depth_multiplier and width_multiplier must be positive, got "
                             f"{depth_multiplier} and {width_multiplier} (YOLOX-S: 0.33 and 0.5)")
    if int(64 * width_multiplier) < 2:
        raise UserInputError(f"{where}: width_multiplier {width_multiplier} gives fewer than 2 stem channels; "
                             "use at least 0.04")


class CSPDarknet(nn.Module):
    """YOLOX's CSPDarknet: `forward(x [N,3,H,W])` returns [dark3, dark4, dark5] at strides 8, 16, 32 with
    `out_channels` = (256, 512, 1024) x `width_multiplier` channels.

    Stages (w = int(64 x width_multiplier), d = max(round(3 x depth_multiplier), 1)): Focus stem to w channels;
    dark2: 3 x 3 stride-2 conv to 2w + CSP(d); dark3: to 4w + CSP(3d); dark4: to 8w + CSP(3d); dark5: to 16w
    + SPP + CSP(d, no shortcut).

    Args:
        depth_multiplier: scales the number of bottlenecks (YOLOX-S 0.33, M 0.67, L 1.0, X 1.33).
        width_multiplier: scales the channels (YOLOX-Nano 0.25, Tiny 0.375, S 0.5, M 0.75, L 1.0, X 1.25).
        depthwise: depthwise-separable 3 x 3 convs (YOLOX-Nano).
    """

    def __init__(self, *, depth_multiplier: float, width_multiplier: float, depthwise: bool = False) -> None:
        super().__init__()
        _check_multipliers(depth_multiplier, width_multiplier, "CSPDarknet")
        width = int(width_multiplier * 64)
        depth = max(round(depth_multiplier * 3), 1)
        self.depth_multiplier = depth_multiplier
        self.width_multiplier = width_multiplier
        self.stem = Focus(3, width, kernel_size=3)
        self.dark2 = nn.Sequential(
            conv_bn_act(width, width * 2, 3, 2, depthwise=depthwise),
            CSPLayer(width * 2, width * 2, num_blocks=depth, depthwise=depthwise),
        )
        self.dark3 = nn.Sequential(
            conv_bn_act(width * 2, width * 4, 3, 2, depthwise=depthwise),
            CSPLayer(width * 4, width * 4, num_blocks=depth * 3, depthwise=depthwise),
        )
        self.dark4 = nn.Sequential(
            conv_bn_act(width * 4, width * 8, 3, 2, depthwise=depthwise),
            CSPLayer(width * 8, width * 8, num_blocks=depth * 3, depthwise=depthwise),
        )
        self.dark5 = nn.Sequential(
            conv_bn_act(width * 8, width * 16, 3, 2, depthwise=depthwise),
            SPPBottleneck(width * 16, width * 16),
            CSPLayer(width * 16, width * 16, num_blocks=depth, shortcut=False, depthwise=depthwise),
        )
        self.out_channels = [width * 4, width * 8, width * 16]  # C3, C4, C5

    @classmethod
    def from_size(cls, size: str) -> CSPDarknet:
        """The backbone of YOLOX-`size` ("nano" | "tiny" | "s" | "m" | "l" | "x")."""
        depth_multiplier, width_multiplier, depthwise = yolox_size(size)
        return cls(depth_multiplier=depth_multiplier, width_multiplier=width_multiplier, depthwise=depthwise)

    def forward(self, x: Tensor) -> list[Tensor]:
        """x [N,3,H,W] -> [C3 [N,4w,H/8,W/8], C4 [N,8w,H/16,W/16], C5 [N,16w,H/32,W/32]] (sizes rounded up)."""
        c3 = self.dark3(self.dark2(self.stem(x)))
        c4 = self.dark4(c3)
        c5 = self.dark5(c4)
        return [c3, c4, c5]


def yolox_size(size: str) -> tuple[float, float, bool]:
    """(depth multiplier, width multiplier, depthwise) of YOLOX-`size`."""
    if size not in YOLOX_SIZES:
        raise UserInputError(f"YOLOX size {size!r} is not one of {list(YOLOX_SIZES)}")
    return YOLOX_SIZES[size]
