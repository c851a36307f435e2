"""FPN P3-P7 on torchvision's `FeaturePyramidNetwork` + `LastLevelP6P7` (P6/P7 from P5's output, as ATSS).

Shape letters: N images, L levels.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7


class FPN(nn.Module):
    """[C3, C4, C5] -> [P3, P4, P5, P6, P7], each [N, out_channels, H_l, W_l] at strides 8..128.

    P6 is a 3x3 stride-2 conv on P5 (the FPN output, since in = out channels), P7 one on ReLU(P6).
    """

    def __init__(self, *, in_channels: Sequence[int], out_channels: int = 256) -> None:
        super().__init__()
        self.fpn = FeaturePyramidNetwork(
            list(in_channels), out_channels, extra_blocks=LastLevelP6P7(out_channels, out_channels)
        )
        self.out_channels = out_channels
        self.strides = (8, 16, 32, 64, 128)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        """feats: [C3, C4, C5] -> L = 5 maps [N, out_channels, H_l, W_l]."""
        named = OrderedDict((f"c{i + 3}", f) for i, f in enumerate(feats))
        return list(self.fpn(named).values())
