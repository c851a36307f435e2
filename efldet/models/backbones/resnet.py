"""ResNet backbones: torchvision's `ResNet` with `fc` removed, returning C3-C5.

The blocks, layer names and state-dict keys are torchvision's (minus `fc.*`), so an ImageNet checkpoint
saved by torchvision loads with no key mapping. Shape letters: N images, H x W input size.
"""

from __future__ import annotations

import os

import torch
import torchvision
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

from efldet.errors import UserInputError

# depth -> (block, blocks per stage); the torchvision constructors' arguments.
_ARCHS = {
    18: (torchvision.models.resnet.BasicBlock, [2, 2, 2, 2]),
    34: (torchvision.models.resnet.BasicBlock, [3, 4, 6, 3]),
    50: (torchvision.models.resnet.Bottleneck, [3, 4, 6, 3]),
    101: (torchvision.models.resnet.Bottleneck, [3, 4, 23, 3]),
}
_NORMS = {"frozen_bn": FrozenBatchNorm2d, "bn": nn.BatchNorm2d}


class ResNet(torchvision.models.ResNet):
    """torchvision ResNet-`depth` without `fc`; `forward(x [N,3,H,W])` returns [C3, C4, C5] at strides
    8, 16, 32 with `out_channels` channels each.

    Args:
        depth: 18, 34, 50 or 101.
        frozen_stages: 0 = nothing frozen, 1 = stem + layer1 (the detectors' default), ... 4 = everything.
        norm: "frozen_bn" (torchvision `FrozenBatchNorm2d`, statistics and affine fixed) or "bn"
            (trainable `BatchNorm2d`; BN in frozen stages is kept in eval mode).
        weights: None, a local path to a torchvision state dict (`torch.save(resnet50().state_dict())`,
            `fc.*` keys are dropped) or an http(s) URL (downloaded by `torch.hub`).
    """

    def __init__(
        self, depth: int = 50, *, frozen_stages: int = 1, norm: str = "frozen_bn", weights: str | None = None
    ) -> None:
        if depth not in _ARCHS:
            raise UserInputError(f"backbone depth {depth} is not supported; choose one of {sorted(_ARCHS)}")
        if norm not in _NORMS:
            raise UserInputError(f"backbone norm {norm!r} is not supported; choose one of {sorted(_NORMS)}")
        if not 0 <= frozen_stages <= 4:
            raise UserInputError(f"backbone frozen_stages must be in 0..4, got {frozen_stages}")
        block, layers = _ARCHS[depth]
        super().__init__(block, layers, norm_layer=_NORMS[norm])
        del self.fc  # detection needs no classifier; the state dict then equals torchvision's minus fc.*
        self.depth = depth
        self.frozen_stages = frozen_stages
        expansion = block.expansion
        self.out_channels = [128 * expansion, 256 * expansion, 512 * expansion]  # C3, C4, C5
        if weights:
            self.load_torchvision_weights(weights)
        for module in self._frozen_modules():
            for param in module.parameters():
                param.requires_grad_(False)

    def _frozen_modules(self) -> list[nn.Module]:
        stem = [self.conv1, self.bn1]
        stages = [self.layer1, self.layer2, self.layer3, self.layer4]
        return (stem + stages[: self.frozen_stages]) if self.frozen_stages > 0 else []

    def load_torchvision_weights(self, weights: str) -> None:
        """Load a torchvision ResNet state dict from a local path or an http(s) URL (strict, minus fc.*)."""
        if weights.startswith(("http://", "https://")):
            state = torch.hub.load_state_dict_from_url(weights, map_location="cpu", progress=False)
        else:
            if not os.path.isfile(weights):
                raise UserInputError(
                    f"backbone weights file {weights!r} does not exist; give a torchvision ResNet state dict "
                    "saved with torch.save(model.state_dict(), path), or an http(s) URL"
                )
            state = torch.load(weights, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        try:
            self.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise UserInputError(
                f"backbone weights {weights!r} do not match torchvision's resnet{self.depth} keys: {err}"
            ) from err

    def train(self, mode: bool = True) -> ResNet:
        """Like `nn.Module.train`, but BatchNorm layers of frozen stages stay in eval mode."""
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        """x [N,3,H,W] -> [C3 [N,out_channels[0],H/8,W/8], C4 (H/16), C5 (H/32)] (sizes rounded up)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c3, c4, c5]
