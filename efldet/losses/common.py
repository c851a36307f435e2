"""Input checks, the default normalizer and row chunking shared by the classification losses.

Shape letters: K anchors (rows), C foreground classes.
Label convention: int64 [K]; 0..C-1 foreground class, C background, -1 ignored.
"""

from __future__ import annotations

import torch

# Rows per chunk are chosen so that one chunk holds about this many elements: large enough to amortise the
# per-op overhead, small enough that the few float32 temporaries of a chunk stay in cache-friendly, reusable
# allocations (big blocks returned to the OS by malloc cost a lot at LVIS sizes).
CHUNK_ELEMENTS = 1 << 18
# On an accelerator there is no cache to fit and every chunk costs launches and a host sync: use big chunks.
CHUNK_ELEMENTS_ACCELERATOR = 1 << 25


def check_logits_labels(
    logits: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None, *, where: str
) -> None:
    """Raise ValueError naming the argument, the expected and the received shape / range."""
    if not isinstance(logits, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise ValueError(f"{where}: logits and labels must be torch.Tensors, got "
                         f"{type(logits).__name__} and {type(labels).__name__}")
    if logits.dim() != 2:
        raise ValueError(f"{where}: logits must have shape [K, C] (anchors x classes), got {tuple(logits.shape)}; "
                         "flatten the image and anchor dimensions first")
    if not logits.is_floating_point():
        raise ValueError(f"{where}: logits must be a floating tensor, got dtype {logits.dtype}")
    if labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"{where}: labels must have shape [K] = [{logits.shape[0]}] to match logits "
                         f"{tuple(logits.shape)}, got {tuple(labels.shape)}")
    if labels.dtype != torch.int64:
        raise ValueError(f"{where}: labels must be int64 (0..C-1 foreground, C background, -1 ignored), "
                         f"got dtype {labels.dtype}")
    num_cols = logits.shape[1]
    if num_classes is not None and num_cols != num_classes:
        raise ValueError(f"{where}: logits have C = {num_cols} class columns but the loss was built with "
                         f"num_classes = {num_classes}; build it with the detector's number of foreground classes")
    if labels.numel() > 0:
        low, high = int(labels.min()), int(labels.max())
        if low < -1 or high > num_cols:
            raise ValueError(f"{where}: labels must lie in [-1, {num_cols}] (0..{num_cols - 1} foreground, "
                             f"{num_cols} background, -1 ignored), got values in [{low}, {high}]")


def check_scores(scores: torch.Tensor | None, num_rows: int, *, where: str) -> None:
    """`scores` must be a float [K] tensor of quality targets in [0, 1] (IoU of each foreground anchor)."""
    if scores is None:
        raise ValueError(f"{where}: scores (the IoU target of each foreground anchor, float [K]) are required")
    if not isinstance(scores, torch.Tensor) or scores.dim() != 1 or scores.shape[0] != num_rows:
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"{where}: scores must have shape [K] = [{num_rows}], got {shape}")
    if not scores.is_floating_point():
        raise ValueError(f"{where}: scores must be a floating tensor, got dtype {scores.dtype}")
    if scores.numel() > 0:
        low, high = float(scores.min()), float(scores.max())
        if not (0.0 <= low and high <= 1.0):
            raise ValueError(f"{where}: scores are quality targets and must lie in [0, 1], "
                             f"got values in [{low}, {high}]")


def resolve_normalizer(normalizer: float | torch.Tensor | None, labels: torch.Tensor, num_classes: int,
                       *, where: str) -> float:
    """The divisor of the summed loss: `normalizer` if given (> 0), else max(#foreground rows, 1)."""
    if normalizer is None:
        num_foreground = int(((labels >= 0) & (labels < num_classes)).sum())
        return float(max(num_foreground, 1))
    value = float(normalizer.detach()) if isinstance(normalizer, torch.Tensor) else float(normalizer)
    if not value > 0:
        raise ValueError(f"{where}: normalizer must be a positive number, got {value}")
    return value


def compute_dtype(logits: torch.Tensor) -> torch.dtype:
    """Losses run in float32 (float64 when the logits are float64, e.g. for gradcheck)."""
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def row_chunks(num_rows: int, num_cols: int, device: torch.device) -> list[tuple[int, int]]:
    """(start, stop) row ranges holding about CHUNK_ELEMENTS (CPU) elements each."""
    budget = CHUNK_ELEMENTS if device.type == "cpu" else CHUNK_ELEMENTS_ACCELERATOR
    rows = max(1, budget // max(num_cols, 1))
    return [(start, min(start + rows, num_rows)) for start in range(0, num_rows, rows)]
