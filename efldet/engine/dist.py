"""torch.distributed helpers that are no-ops in a single process (no process group initialised)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_dist() -> bool:
    """True when torch.distributed is available and a process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over ranks in place (no-op in one process); returns it."""
    if is_dist() and get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def reduce_mean(value: torch.Tensor | float) -> torch.Tensor:
    """Mean of a scalar over ranks, as a new detached float32 tensor (the value itself in one process)."""
    tensor = torch.as_tensor(value, dtype=torch.float32).detach().clone()
    if is_dist() and get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= get_world_size()
    return tensor
