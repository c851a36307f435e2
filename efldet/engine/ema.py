"""Exponential moving average of a model's weights (optional; `train.ema_decay`)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA(nn.Module):
    """`ema = decay * ema + (1 - decay) * weights` after every optimizer step; buffers (BN statistics, EFL
    gradient statistics) are copied. The decay ramps up as 1 - exp(-updates / 2000) (YOLOX-style), so early
    weights do not dominate. Saved in checkpoints; evaluation uses it when enabled."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay must be in (0, 1), got {decay}")
        self.module = copy.deepcopy(model).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)
        self.decay = decay
        self._param_names = {name for name, _ in self.module.named_parameters()}
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = self.decay * (1.0 - torch.exp(-self.updates.double() / 2000.0)).item()
        model_state = model.state_dict()
        for name, value in self.module.state_dict().items():
            source = model_state[name]
            if name in self._param_names:
                value.mul_(decay).add_(source.detach().to(value.dtype), alpha=1.0 - decay)
            else:
                value.copy_(source)
