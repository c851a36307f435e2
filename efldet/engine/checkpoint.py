"""Checkpoints: atomic writes, keep-last-k, and loading with `weights_only=True` and a clear key report.

A checkpoint is a dict of tensors and plain Python values only (so `torch.load(..., weights_only=True)` reads it):
    model, optimizer, scaler, ema          state dicts (scaler / ema may be None)
    iteration, epoch, batch_in_epoch       where training stands (the sampler position)
    rng                                    torch / CUDA / numpy / python random states
    config                                 the resolved run configuration (nested dicts)
    class_names, category_ids              so that predict / eval need nothing but the checkpoint
    metrics                                the last evaluation, if any
"""

from __future__ import annotations

import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from efldet.errors import UserInputError

_PERIODIC = re.compile(r"^iter_(\d+)\.pt$")


def save_atomic(payload: dict[str, Any], path: str | Path) -> Path:
    """Write `payload` to `path` through a temporary file in the same directory and an atomic rename, so a crash
    mid-write leaves the previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as tmp:
            torch.save(payload, tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(payload: dict[str, Any], output_dir: str | Path, *, keep_last: int) -> Path:
    """Write `iter_<N>.pt` and `last.pt` (both atomically) and delete periodic checkpoints beyond `keep_last`."""
    output_dir = Path(output_dir)
    periodic = save_atomic(payload, output_dir / f"iter_{payload['iteration']:08d}.pt")
    save_atomic(payload, output_dir / "last.pt")
    existing = sorted((p for p in output_dir.iterdir() if _PERIODIC.match(p.name)),
                      key=lambda p: int(_PERIODIC.match(p.name).group(1)))
    for old in existing[: max(len(existing) - max(keep_last, 1), 0)]:
        old.unlink(missing_ok=True)
    return periodic


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # a truncated / foreign file: say which one and why
        raise UserInputError(f"could not read checkpoint {path}: {err}") from None
    if not isinstance(payload, dict) or "model" not in payload:
        raise UserInputError(f"{path} is not an efldet checkpoint (no 'model' entry)")
    return payload


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Strict load with a readable report of missing / unexpected / shape-mismatched keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or mismatched:
        lines = [f"the weights in {source} do not fit this model (was it trained with another config?):"]
        for title, keys in (("missing", missing), ("unexpected", unexpected)):
            if keys:
                lines.append(f"  {len(keys)} {title} keys: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}")
        for key in mismatched[:8]:
            lines.append(f"  shape mismatch {key}: checkpoint {tuple(state[key].shape)} "
                         f"vs model {tuple(own[key].shape)}")
        raise UserInputError("\n".join(lines))
    model.load_state_dict(state)


def rng_state() -> dict[str, Any]:
    """torch, CUDA, numpy and python random states as tensors / plain values (weights_only-loadable)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(_plain, np_state[2:])],
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _to_lists(value: Any) -> Any:
    return [_to_lists(v) for v in value] if isinstance(value, tuple) else value


def _to_tuples(value: Any) -> Any:
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value
