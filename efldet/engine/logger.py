"""Run logging: a progress bar with ETA on the console, a JSON-lines metrics file and TensorBoard event files.

Only the main process writes. `metrics.jsonl` holds one JSON object per record with at least `iteration` and a
`kind` ("train", "eval", "efl_stats", "nonfinite", ...). TensorBoard files are written when the `tensorboard`
package is installed (the `tensorboard` extra), under `<output_dir>/tensorboard`.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm


class RunLogger:
    def __init__(self, output_dir: str | Path, *, total_iters: int, start_iter: int, enabled: bool,
                 tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.metrics_path = Path(output_dir) / "metrics.jsonl"
        self._file = None
        self._writer = None
        self._bar = None
        if not enabled:
            return
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.metrics_path.open("a", buffering=1)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:   # the tensorboard package is optional
                self._writer = None
            else:
                self._writer = SummaryWriter(log_dir=str(Path(output_dir) / "tensorboard"))
        self._bar = tqdm(total=total_iters, initial=start_iter, desc="train", unit="it", dynamic_ncols=True,
                         file=sys.stderr, smoothing=0.1)

    def log(self, record: dict[str, Any]) -> None:
        """Append one record to metrics.jsonl and its numeric fields to TensorBoard (as kind/key)."""
        if not self.enabled:
            return
        self._file.write(json.dumps(record, default=_json_default) + "\n")
        if self._writer is not None:
            step = int(record.get("iteration", 0))
            kind = record.get("kind", "train")
            for key, value in record.items():
                if key not in ("iteration", "kind") and isinstance(value, (int, float)) and math.isfinite(value):
                    self._writer.add_scalar(f"{kind}/{key}", value, step)

    def advance(self, steps: int = 1, postfix: dict[str, float] | None = None) -> None:
        if self._bar is None:
            return
        if postfix:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
        self._bar.update(steps)

    def message(self, text: str) -> None:
        """A line on the console that does not break the progress bar."""
        if self.enabled:
            tqdm.write(text, file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._writer is not None:
            self._writer.close()
        if self._file is not None:
            self._file.close()
        self._bar = self._writer = self._file = None


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
