"""Prior generators: anchors (ATSS, RetinaNet) and points (FCOS) on every FPN level.

Shape letters: A anchors per location, K_l priors on level l, L levels. Priors are ordered
(y, x, a) within a level, the order in which `heads.concat_levels` flattens the head outputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def _grid_centers(size: tuple[int, int], stride: int, offset: float, device: torch.device) -> Tensor:
    """Centres ((x + offset) * stride, (y + offset) * stride) of an H x W grid -> [H*W, 2], y-major."""
    h, w = size
    xs = (torch.arange(w, dtype=torch.float32, device=device) + offset) * stride
    ys = (torch.arange(h, dtype=torch.float32, device=device) + offset) * stride
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")  # [H, W] each
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)  # [H*W, 2]


class AnchorGenerator:
    """Anchors of size `scale * stride` and aspect ratios h/w = `ratio` (area kept) at every location.

    The improved baseline (Sec. 4.1) uses scales (6, 8) and ratio 1: A = 2 square anchors per location.
    Anchor centres are at ((x + offset) * stride, (y + offset) * stride).
    """

    def __init__(
        self,
        *,
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        scales: Sequence[float] = (6.0, 8.0),
        ratios: Sequence[float] = (1.0,),
        offset: float = 0.5,
    ) -> None:
        self.strides = tuple(int(s) for s in strides)
        self.scales = tuple(float(s) for s in scales)
        self.ratios = tuple(float(r) for r in ratios)
        self.offset = float(offset)
        self.num_anchors = len(self.scales) * len(self.ratios)
        self._cache: dict[tuple, list[Tensor]] = {}

    def cell_anchors(self, stride: int) -> Tensor:
        """Anchors centred at (0, 0) for one level -> [A, 4], ordered (ratio, scale)."""
        boxes = []
        for ratio in self.ratios:
            for scale in self.scales:
                size = scale * stride
                w, h = size / math.sqrt(ratio), size * math.sqrt(ratio)
                boxes.append([-w / 2, -h / 2, w / 2, h / 2])
        return torch.tensor(boxes, dtype=torch.float32)

    def __call__(self, sizes: Sequence[tuple[int, int]], device: torch.device | str = "cpu") -> list[Tensor]:
        """Feature-map sizes [(H_l, W_l)] -> per level anchors [K_l = H_l*W_l*A, 4] xyxy float32."""
        key = (tuple(tuple(s) for s in sizes), str(device))
        if key not in self._cache:
            out = []
            for size, stride in zip(sizes, self.strides, strict=False):
                centers = _grid_centers(size, stride, self.offset, torch.device(device))  # [H*W, 2]
                cell = self.cell_anchors(stride).to(device)  # [A, 4]
                anchors = centers.repeat(1, 2)[:, None, :] + cell[None, :, :]  # [H*W, A, 4]
                out.append(anchors.reshape(-1, 4))  # [H*W*A, 4]
            self._cache = {key: out}  # keep only the latest sizes
        return self._cache[key]


class PointGenerator:
    """One point per location (FCOS): ((x + offset) * stride, (y + offset) * stride)."""

    num_anchors = 1

    def __init__(self, *, strides: Sequence[int] = (8, 16, 32, 64, 128), offset: float = 0.5) -> None:
        self.strides = tuple(int(s) for s in strides)
        self.offset = float(offset)
        self._cache: dict[tuple, list[Tensor]] = {}

    def __call__(self, sizes: Sequence[tuple[int, int]], device: torch.device | str = "cpu") -> list[Tensor]:
        """Feature-map sizes [(H_l, W_l)] -> per level points [K_l = H_l*W_l, 2] (x, y) float32."""
        key = (tuple(tuple(s) for s in sizes), str(device))
        if key not in self._cache:
            out = [
                _grid_centers(size, stride, self.offset, torch.device(device))
                for size, stride in zip(sizes, self.strides, strict=False)
            ]
            self._cache = {key: out}
        return self._cache[key]
