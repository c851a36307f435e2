"""YOLOX's PAFPN: a top-down then bottom-up path of CSP layers on [C3, C4, C5] (Ge et al. 2021).

Shape letters: N images; (H_l, W_l) the size of level l (strides 8, 16, 32).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from efldet.errors import UserInputError
from efldet.models.backbones.cspdarknet import ConvBNAct, CSPLayer, conv_bn_act


def _upsample_to(x: Tensor, ref: Tensor) -> Tensor:
    """Nearest upsampling of x [N, ch, h, w] to ref's size (2x for sizes divisible by 32, as in YOLOX)."""
    return F.interpolate(x, size=ref.shape[-2:], mode="nearest")


class PAFPN(nn.Module):
    """[C3, C4, C5] with channels (c3, c4, c5) -> [P3, P4, P5] with the same channels at strides 8, 16, 32.

    Top-down: P5' = 1x1 conv(C5) to c4; P4' = CSP(up(P5') ++ C4) to c4; P4'' = 1x1 conv(P4') to c3;
    P3 = CSP(up(P4'') ++ C3) to c3. Bottom-up: P4 = CSP(3x3 s2 conv(P3) ++ P4'') to c4;
    P5 = CSP(3x3 s2 conv(P4) ++ P5') to c5. Every CSP layer has round(3 x depth_multiplier) bottlenecks and
    no shortcut. Odd map sizes (inputs not divisible by 32) are handled by upsampling to the lateral's size.
    Layer names are YOLOX's (`lateral_conv0`, `C3_p4`, ...), so its checkpoints map by key prefix.

    Args:
        in_channels: (c3, c4, c5), e.g. `CSPDarknet.out_channels`.
        depth_multiplier: YOLOX's depth multiplier (S 0.33, M 0.67, L 1.0, X 1.33).
        depthwise: depthwise-separable 3 x 3 convs (YOLOX-Nano).
    """

    def __init__(self, *, in_channels: Sequence[int], depth_multiplier: float, depthwise: bool = False) -> None:
        super().__init__()
        if len(in_channels) != 3:
            raise UserInputError(f"PAFPN needs the channels of 3 backbone maps (C3, C4, C5), got {list(in_channels)}")
        if not depth_multiplier > 0:
            raise UserInputError(f"PAFPN depth_multiplier must be positive, got {depth_multiplier}")
        c3, c4, c5 = (int(c) for c in in_channels)
        n = round(3 * depth_multiplier)
        self.lateral_conv0 = ConvBNAct(c5, c4, 1)
        self.C3_p4 = CSPLayer(2 * c4, c4, num_blocks=n, shortcut=False, depthwise=depthwise)
        self.reduce_conv1 = ConvBNAct(c4, c3, 1)
        self.C3_p3 = CSPLayer(2 * c3, c3, num_blocks=n, shortcut=False, depthwise=depthwise)
        self.bu_conv2 = conv_bn_act(c3, c3, 3, 2, depthwise=depthwise)
        self.C3_n3 = CSPLayer(2 * c3, c4, num_blocks=n, shortcut=False, depthwise=depthwise)
        self.bu_conv1 = conv_bn_act(c4, c4, 3, 2, depthwise=depthwise)
        self.C3_n4 = CSPLayer(2 * c4, c5, num_blocks=n, shortcut=False, depthwise=depthwise)
        self.out_channels = [c3, c4, c5]  # P3, P4, P5
        self.strides = (8, 16, 32)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        """feats: [C3, C4, C5] -> [P3 [N, c3, H_3, W_3], P4 [N, c4, H_4, W_4], P5 [N, c5, H_5, W_5]]."""
        if len(feats) != 3:
            raise ValueError(f"PAFPN takes 3 maps (C3, C4, C5), got {len(feats)}")
        c3, c4, c5 = feats
        # top-down
        lat5 = self.lateral_conv0(c5)  # [N, c4, H_5, W_5]
        td4 = self.C3_p4(torch.cat([_upsample_to(lat5, c4), c4], dim=1))  # [N, 2*c4, H_4, W_4] -> c4
        lat4 = self.reduce_conv1(td4)  # [N, c3, H_4, W_4]
        p3 = self.C3_p3(torch.cat([_upsample_to(lat4, c3), c3], dim=1))  # [N, 2*c3, H_3, W_3] -> c3
        # bottom-up
        p4 = self.C3_n3(torch.cat([self.bu_conv2(p3), lat4], dim=1))  # [N, 2*c3, H_4, W_4] -> c4
        p5 = self.C3_n4(torch.cat([self.bu_conv1(p4), lat5], dim=1))  # [N, 2*c4, H_5, W_5] -> c5
        return [p3, p4, p5]
