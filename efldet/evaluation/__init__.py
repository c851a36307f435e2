"""Evaluation (LVIS, COCO, OpenImages) and the paper's analyses (margins, gradient ratios, AP per category).

`evaluate_lvis` values are fractions in [0, 1] (the official LVIS API's convention); tables print percent.
The analysis names (`MarginAccumulator`, `plot_margins`, ...) are loaded on first use (they need torch and
matplotlib), so evaluation alone stays light.
"""

from typing import Any

from efldet.evaluation.coco import evaluate_coco
from efldet.evaluation.lvis import BACKENDS, LVISEvalResult, evaluate_lvis, evaluate_lvis_detailed
from efldet.evaluation.lvis_fast import Detections, load_lvis_ground_truth, read_detections_json
from efldet.evaluation.openimages import (
    convert_openimages_challenge,
    evaluate_openimages,
    evaluate_openimages_detailed,
)
from efldet.evaluation.report import (
    format_markdown_table,
    read_per_category_ap,
    save_lvis_evaluation,
    write_per_category_ap,
    write_results_table,
)

_ANALYSIS = (
    "MarginAccumulator",
    "ap_by_frequency",
    "category_table",
    "load_grad_stats",
    "plot_ap_by_group",
    "plot_ap_vs_count",
    "plot_gradient_ratio",
    "plot_margins",
    "read_margin_csv",
)


def __getattr__(name: str) -> Any:
    if name in _ANALYSIS:
        from efldet.evaluation import analysis

        return getattr(analysis, name)
    raise AttributeError(f"module 'efldet.evaluation' has no attribute {name!r}")


__all__ = [
    "BACKENDS",
    "Detections",
    "LVISEvalResult",
    "convert_openimages_challenge",
    "evaluate_coco",
    "evaluate_lvis",
    "evaluate_lvis_detailed",
    "evaluate_openimages",
    "evaluate_openimages_detailed",
    "format_markdown_table",
    "load_lvis_ground_truth",
    "read_detections_json",
    "read_per_category_ap",
    "save_lvis_evaluation",
    "write_per_category_ap",
    "write_results_table",
    *_ANALYSIS,
]
