"""Results tables: metrics of one or more runs printed and saved as JSON + Markdown; per-category AP as CSV.

Metrics are stored as fractions in [0, 1] (the evaluators' convention); tables print percent with one decimal,
and "-" for undefined values (-1 or NaN).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from efldet.errors import UserInputError

LVIS_TABLE_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
PER_CATEGORY_FIELDS = ("category_id", "name", "frequency", "image_count", "ap")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    v = float(value)
    if math.isnan(v) or v < 0:
        return "-"
    return f"{100 * v:.1f}"


def format_markdown_table(runs: Mapping[str, Mapping[str, float]], keys: Sequence[str] | None = None) -> str:
    """A Markdown table, one row per run, one column per metric (percent). keys default: the LVIS columns
    present in the first run, else all its keys."""
    if not runs:
        raise UserInputError("no runs to tabulate")
    first = next(iter(runs.values()))
    if keys is None:
        keys = [k for k in LVIS_TABLE_KEYS if k in first] or list(first)
    lines = ["| run | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for name, metrics in runs.items():
        lines.append(f"| {name} | " + " | ".join(_cell(metrics.get(k)) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def write_results_table(
    out_dir: str | Path,
    runs: Mapping[str, Mapping[str, float]],
    *,
    name: str = "results",
    keys: Sequence[str] | None = None,
    print_table: bool = True,
) -> tuple[Path, Path]:
    """Write `<out_dir>/<name>.json` (raw fractions) and `<out_dir>/<name>.md` (percent); print the table.

    runs: {run name: metrics dict}. Returns the two paths.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = format_markdown_table(runs, keys)
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    clean = {
        r: {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in m.items()}
        for r, m in runs.items()
    }
    json_path.write_text(json.dumps(clean, indent=2) + "\n")
    md_path.write_text(table)
    if print_table:
        print(table, end="")
    return json_path, md_path


def write_per_category_ap(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """CSV with columns category_id, name, frequency, image_count, ap (fraction; empty when undefined).

    rows: e.g. `LVISEvalResult.per_category_rows()`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=PER_CATEGORY_FIELDS)
        w.writeheader()
        for r in rows:
            ap = r.get("ap")
            w.writerow(
                {k: r.get(k, "") for k in PER_CATEGORY_FIELDS} | {"ap": "" if ap is None else repr(float(ap))}
            )
    return path


def read_per_category_ap(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a per-category AP CSV (as written by `write_per_category_ap`): ap is a float or None."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"per-category AP file {path} does not exist")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [k for k in PER_CATEGORY_FIELDS if k not in (reader.fieldnames or [])]
        if missing:
            raise UserInputError(
                f"{path} lacks the column(s) {missing}; expected {list(PER_CATEGORY_FIELDS)}"
            )
        rows = []
        for r in reader:
            rows.append(
                {
                    "category_id": int(r["category_id"]),
                    "name": r["name"],
                    "frequency": r["frequency"],
                    "image_count": int(r["image_count"]) if r["image_count"] not in ("", None) else -1,
                    "ap": float(r["ap"]) if r["ap"] not in ("", None) else None,
                }
            )
    return rows


def save_lvis_evaluation(out_dir: str | Path, result: Any, *, run_name: str = "model") -> dict[str, Path]:
    """Everything an LVIS evaluation leaves next to a run: eval.json + eval.md (table) and
    per_category_ap.csv. result: an `LVISEvalResult` (from `evaluate_lvis_detailed`)."""
    json_path, md_path = write_results_table(out_dir, {run_name: result.metrics}, name="eval")
    csv_path = write_per_category_ap(Path(out_dir) / "per_category_ap.csv", result.per_category_rows())
    return {"json": json_path, "markdown": md_path, "per_category": csv_path}
