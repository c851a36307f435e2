"""The paper's analyses, from plain arrays: per-category margins (Fig. 4), positive/negative gradient ratios
(Fig. 2 style), AP against training image count and AP per frequency group. Each plot is a PNG with a CSV.

Categories are always drawn sorted by training image count, most frequent first (left), rarest last, and
coloured by LVIS frequency group with the same colours in every figure (`FREQUENCY_COLORS`).
Category index j (0..C-1) is the j-th category in sorted id order (efldet's contiguous mapping).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from efldet.errors import UserInputError

FREQUENCY_COLORS = {"r": "#d62728", "c": "#ff7f0e", "f": "#1f77b4", "": "#7f7f7f"}
FREQUENCY_NAMES = {"r": "rare", "c": "common", "f": "frequent", "": "unknown"}
RUN_COLORS = ("#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


# ------------------------------------------------------------------------------------------ categories
def _frequency_of(count: int) -> str:
    """LVIS rule: rare 1-10 training images, common 11-100, frequent > 100."""
    if count < 0:
        return ""
    return "r" if count <= 10 else ("c" if count <= 100 else "f")


def category_table(ann_file: str | Path | Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Categories sorted by id: [{category_id, name, frequency, image_count}].

    ann_file: an LVIS/COCO-format json (path or dict) -- `frequency` and `image_count` (or
    `train_image_count`) are taken from its categories, or counted from its annotations when absent (the
    training file gives the training counts); None: the LVIS v1 list shipped with efldet.
    """
    if ann_file is None:
        from efldet.evaluation.simulate import lvis_v1_categories

        data: Mapping[str, Any] = {"categories": lvis_v1_categories()}
    elif isinstance(ann_file, Mapping):
        data = ann_file
    else:
        try:
            with open(ann_file, "rb") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise UserInputError(f"annotation file {ann_file} does not exist") from None
    cats = sorted(data.get("categories", []), key=lambda c: c["id"])
    if not cats:
        raise UserInputError(f"{ann_file}: no categories found")
    counted: dict[int, set[int]] = {}
    if any("image_count" not in c and "train_image_count" not in c for c in cats):
        for a in data.get("annotations", []):
            counted.setdefault(int(a["category_id"]), set()).add(int(a["image_id"]))
    rows = []
    for c in cats:
        cid = int(c["id"])
        count = c.get("image_count", c.get("train_image_count"))
        if count is None:
            count = len(counted.get(cid, ())) if "annotations" in data else -1
        freq = c.get("frequency") or _frequency_of(int(count))
        rows.append(
            {
                "category_id": cid,
                "name": str(c.get("name", cid)),
                "frequency": freq,
                "image_count": int(count),
            }
        )
    return rows


def _order_by_count(rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Indices sorting categories by image count, most frequent first (ties: by id)."""
    counts = np.array([r["image_count"] for r in rows], dtype=np.int64)
    ids = np.array([r["category_id"] for r in rows], dtype=np.int64)
    return np.lexsort((ids, -counts))


def _write_csv(path: Path, fieldnames: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fieldnames))
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
    return path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig: Any, out_dir: str | Path, name: str) -> tuple[Path, Path]:
    """Write `fig` as <out_dir>/<name>.png (directory created) and close it; returns (out_dir, png path)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"{name}.png"
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    _plt().close(fig)
    return out, png


def _shade_groups(ax: Any, freqs: Sequence[str]) -> None:
    """Background bands in the r/c/f colours behind consecutive runs of the same frequency group."""
    start = 0
    for i in range(1, len(freqs) + 1):
        if i == len(freqs) or freqs[i] != freqs[start]:
            ax.axvspan(
                start - 0.5, i - 0.5, color=FREQUENCY_COLORS.get(freqs[start], "#7f7f7f"), alpha=0.08, lw=0
            )
            start = i
    handles = [
        _plt().Rectangle((0, 0), 1, 1, color=FREQUENCY_COLORS[f], alpha=0.3)
        for f in ("f", "c", "r")
        if f in freqs
    ]
    labels = [FREQUENCY_NAMES[f] for f in ("f", "c", "r") if f in freqs]
    ax.add_artist(ax.legend(handles, labels, loc="upper right", fontsize=8, title="frequency"))


# ------------------------------------------------------------------------------------------ margins
class MarginAccumulator:
    """Per-category margin (Fig. 4): mean score of positive anchors minus mean score of negative anchors.

    Feed it batch by batch with `update(scores, labels)`: scores [K, C] probabilities (sigmoid outputs),
    labels [K] int64 with the loss convention (0..C-1 foreground class, C background, -1 ignored). For
    category j, positives are anchors labelled j and negatives all other non-ignored anchors (background or
    another class). Sums are float64; `merge` adds another accumulator (e.g. from another rank).
    """

    def __init__(self, num_classes: int) -> None:
        if num_classes <= 0:
            raise UserInputError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.pos_sum = torch.zeros(num_classes, dtype=torch.float64)
        self.pos_count = torch.zeros(num_classes, dtype=torch.float64)
        self.neg_sum = torch.zeros(num_classes, dtype=torch.float64)
        self.neg_count = torch.zeros(num_classes, dtype=torch.float64)

    @torch.no_grad()
    def update(self, scores: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> None:
        scores = torch.as_tensor(scores).detach().to("cpu", torch.float64)
        labels = torch.as_tensor(labels).detach().to("cpu", torch.int64)
        c = self.num_classes
        if scores.ndim != 2 or scores.shape[1] != c or labels.shape != (scores.shape[0],):
            raise UserInputError(
                f"MarginAccumulator.update expects scores [K, {c}] and labels [K]; got {tuple(scores.shape)} "
                f"and {tuple(labels.shape)}"
            )
        if labels.numel() and (labels.min() < -1 or labels.max() > c):
            raise UserInputError(f"labels must be in -1..{c} (-1 ignored, {c} background)")
        valid = labels >= 0
        s, lab = scores[valid], labels[valid]
        fg = lab < c
        pos_scores = s[fg, lab[fg]]  # [P]: each positive anchor's score at its own class
        pos_sum = torch.zeros(c, dtype=torch.float64).index_add_(0, lab[fg], pos_scores)
        pos_cnt = torch.bincount(lab[fg], minlength=c).to(torch.float64)
        self.pos_sum += pos_sum
        self.pos_count += pos_cnt
        self.neg_sum += s.sum(dim=0) - pos_sum
        self.neg_count += s.shape[0] - pos_cnt

    def merge(self, other: MarginAccumulator) -> None:
        for name in ("pos_sum", "pos_count", "neg_sum", "neg_count"):
            getattr(self, name).add_(getattr(other, name))

    def result(self) -> dict[str, np.ndarray]:
        """{pos_mean, neg_mean, margin, num_pos}: float64 [C]; NaN where a category has no positives."""
        with np.errstate(invalid="ignore", divide="ignore"):
            pos = (self.pos_sum / self.pos_count).numpy()
            neg = (self.neg_sum / self.neg_count).numpy()
        return {
            "pos_mean": pos,
            "neg_mean": neg,
            "margin": pos - neg,
            "num_pos": self.pos_count.numpy().copy(),
        }

    def write_csv(self, path: str | Path, categories: Sequence[Mapping[str, Any]]) -> Path:
        """CSV: category_id, name, frequency, image_count, num_pos, pos_mean, neg_mean, margin.
        categories: `category_table(...)` rows in index order (one per class)."""
        if len(categories) != self.num_classes:
            raise UserInputError(f"{len(categories)} categories given for {self.num_classes} classes")
        res = self.result()
        rows = [
            dict(categories[j])
            | {
                "num_pos": int(res["num_pos"][j]),
                "pos_mean": float(res["pos_mean"][j]),
                "neg_mean": float(res["neg_mean"][j]),
                "margin": float(res["margin"][j]),
            }
            for j in range(self.num_classes)
        ]
        return _write_csv(Path(path), list(rows[0]), rows)


def read_margin_csv(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a margins CSV (MarginAccumulator.write_csv): margin as float (NaN when empty)."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"margins file {path} does not exist")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        need = ("category_id", "frequency", "image_count", "margin")
        missing = [k for k in need if k not in (reader.fieldnames or [])]
        if missing:
            raise UserInputError(
                f"{path} lacks the column(s) {missing}; write it with MarginAccumulator.write_csv"
            )
        return [
            {
                "category_id": int(r["category_id"]),
                "name": r.get("name", ""),
                "frequency": r["frequency"],
                "image_count": int(r["image_count"]),
                "margin": float(r["margin"]) if r["margin"] else math.nan,
            }
            for r in reader
        ]


def plot_margins(
    runs: Mapping[str, Sequence[Mapping[str, Any]]], out_dir: str | Path, *, name: str = "margins"
) -> tuple[Path, Path]:
    """Fig. 4: margin per category for one or more runs (e.g. focal loss vs EFL), categories sorted by
    training image count. runs: {label: rows with category_id, frequency, image_count, margin}.
    Writes <name>.png and <name>.csv (one margin column per run); returns both paths."""
    if not runs:
        raise UserInputError("no margins to plot")
    labels = list(runs)
    base = list(runs[labels[0]])
    ids = [r["category_id"] for r in base]
    for lab in labels[1:]:
        if [r["category_id"] for r in runs[lab]] != ids:
            raise UserInputError(f"run {lab!r} has different categories than run {labels[0]!r}")
    order = _order_by_count(base)
    freqs = [base[i]["frequency"] for i in order]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 4))
    _shade_groups(ax, freqs)
    x = np.arange(len(order))
    for k, lab in enumerate(labels):
        m = np.array([runs[lab][i]["margin"] for i in order], dtype=np.float64)
        ax.plot(x, m, lw=0.8, color=RUN_COLORS[k % len(RUN_COLORS)], label=lab)
    ax.legend(loc="upper center", fontsize=8)
    ax.set_xlabel("category (sorted by training image count, frequent -> rare)")
    ax.set_ylabel("margin = mean positive score - mean negative score")
    ax.set_title("Per-category margins")
    ax.set_xlim(-0.5, len(order) - 0.5)
    out, png = _save_figure(fig, out_dir, name)
    rows = []
    for i in order:
        r = {k: base[i][k] for k in ("category_id", "name", "frequency", "image_count") if k in base[i]}
        for lab in labels:
            r[f"margin_{lab}"] = runs[lab][i]["margin"]
        rows.append(r)
    return png, _write_csv(out / f"{name}.csv", list(rows[0]), rows)


# ------------------------------------------------------------------------------------------ gradients
def load_grad_stats(checkpoint: str | Path | Mapping[str, Any]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """EFL/EQLv2 gradient statistics in a checkpoint: {module prefix: (pos_grad [C], neg_grad [C])}.

    checkpoint: a `torch.save`d dict whose "model" entry is a state dict, a bare state dict, or its path.
    Buffers are found by key suffix `pos_grad` / `neg_grad`.
    """
    if isinstance(checkpoint, (str, Path)):
        try:
            checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise UserInputError(f"checkpoint {checkpoint} does not exist") from None
    if not isinstance(checkpoint, Mapping):
        raise UserInputError(
            "a checkpoint must be a dict (with a 'model' state dict, or a state dict itself)"
        )
    state = checkpoint.get("model", checkpoint)
    if not isinstance(state, Mapping):
        raise UserInputError("the checkpoint's 'model' entry is not a state dict")
    out = {}
    for key, pos in state.items():
        if not key.endswith("pos_grad"):
            continue
        prefix = key[: -len("pos_grad")]
        neg = state.get(prefix + "neg_grad")
        if neg is None:
            raise UserInputError(f"checkpoint has {key} but no {prefix}neg_grad")
        out[prefix.rstrip(".") or "loss"] = (
            torch.as_tensor(pos).double().numpy(),
            torch.as_tensor(neg).double().numpy(),
        )
    if not out:
        raise UserInputError(
            "no gradient statistics (keys ending in pos_grad / neg_grad) in this checkpoint; it must come "
            "from a model trained with EqualizedFocalLoss, EqualizedQualityFocalLoss or EQLv2FocalLoss"
        )
    return out


def plot_gradient_ratio(
    pos_grad: np.ndarray,
    neg_grad: np.ndarray,
    categories: Sequence[Mapping[str, Any]],
    out_dir: str | Path,
    *,
    name: str = "grad_ratio",
    title: str = "Accumulated positive / negative gradient ratio",
) -> tuple[Path, Path]:
    """Fig. 2 style: pos_grad / neg_grad per category on a log scale, sorted by training image count, coloured
    by r/c/f. pos_grad, neg_grad: [C] in category index order. Writes <name>.png and <name>.csv."""
    pos_grad = np.asarray(pos_grad, dtype=np.float64)
    neg_grad = np.asarray(neg_grad, dtype=np.float64)
    if pos_grad.shape != neg_grad.shape or pos_grad.shape[0] != len(categories):
        raise UserInputError(
            f"gradient statistics have {pos_grad.shape[0]} classes but {len(categories)} categories "
            "were given; pass the annotation file the model was trained on (--ann)"
        )
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(neg_grad > 0, pos_grad / neg_grad, np.nan)
    order = _order_by_count(categories)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 4))
    x = np.arange(len(order))
    y = ratio[order]
    cols = [FREQUENCY_COLORS.get(categories[i]["frequency"], "#7f7f7f") for i in order]
    ok = np.isfinite(y) & (y > 0)
    ax.scatter(x[ok], y[ok], s=4, c=[cols[i] for i in np.flatnonzero(ok)])
    if ok.any():
        ax.set_yscale("log")
    for f in ("f", "c", "r"):
        ax.scatter([], [], s=12, color=FREQUENCY_COLORS[f], label=FREQUENCY_NAMES[f])
    ax.legend(fontsize=8, title="frequency")
    ax.set_xlabel("category (sorted by training image count, frequent -> rare)")
    ax.set_ylabel("positive / negative gradient (log)")
    ax.set_title(title)
    out, png = _save_figure(fig, out_dir, name)
    rows = [
        dict(categories[i])
        | {"pos_grad": float(pos_grad[i]), "neg_grad": float(neg_grad[i]), "ratio": float(ratio[i])}
        for i in order
    ]
    return png, _write_csv(out / f"{name}.csv", list(rows[0]), rows)


# ------------------------------------------------------------------------------------------ AP
def ap_by_frequency(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """{AP, APr, APc, APf} as means of per-category AP (None/NaN left out) -- equal to the LVIS summary values
    for area 'all', since each category contributes the same number of precision entries."""
    out = {}
    for key, group in (("AP", None), ("APr", "r"), ("APc", "c"), ("APf", "f")):
        aps = [
            r["ap"]
            for r in rows
            if r.get("ap") is not None
            and not math.isnan(r["ap"])
            and (group is None or r["frequency"] == group)
        ]
        out[key] = float(np.mean(aps)) if aps else math.nan
    return out


def plot_ap_vs_count(
    runs: Mapping[str, Sequence[Mapping[str, Any]]], out_dir: str | Path, *, name: str = "ap_vs_count"
) -> tuple[Path, Path]:
    """AP per category against training image count (log x), coloured by r/c/f, one marker per run.
    runs: {label: per-category rows (category_id, name, frequency, image_count, ap)}."""
    if not runs:
        raise UserInputError("no per-category AP to plot")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = ("o", "^", "s", "D", "v", "P")
    merged: dict[int, dict[str, Any]] = {}
    for k, (lab, rows) in enumerate(runs.items()):
        pts = [
            r for r in rows if r.get("ap") is not None and not math.isnan(r["ap"]) and r["image_count"] > 0
        ]
        ax.scatter(
            [r["image_count"] for r in pts],
            [100 * r["ap"] for r in pts],
            s=10,
            alpha=0.6,
            marker=markers[k % len(markers)],
            c=[FREQUENCY_COLORS.get(r["frequency"], "#7f7f7f") for r in pts],
            label=lab,
        )
        for r in rows:
            m = merged.setdefault(
                r["category_id"], {k2: r[k2] for k2 in ("category_id", "name", "frequency", "image_count")}
            )
            m[f"ap_{lab}"] = math.nan if r.get("ap") is None else r["ap"]
    ax.set_xscale("log")
    ax.set_xlabel("training images containing the category (log)")
    ax.set_ylabel("AP (%)")
    ax.set_title("AP per category vs training frequency")
    handles = [
        ax.scatter([], [], s=12, color=FREQUENCY_COLORS[f], label=FREQUENCY_NAMES[f]) for f in ("r", "c", "f")
    ]
    if len(runs) > 1:
        handles += [
            ax.scatter([], [], s=12, color="k", marker=markers[k % len(markers)], label=lab)
            for k, lab in enumerate(runs)
        ]
    ax.legend(handles=handles, fontsize=8)
    out, png = _save_figure(fig, out_dir, name)
    rows_out = sorted(merged.values(), key=lambda r: (-r["image_count"], r["category_id"]))
    return png, _write_csv(out / f"{name}.csv", list(rows_out[0]), rows_out)


def plot_ap_by_group(
    runs: Mapping[str, Mapping[str, float]], out_dir: str | Path, *, name: str = "ap_by_group"
) -> tuple[Path, Path]:
    """Bars of AP, APr, APc, APf (percent) for several runs side by side. runs: {label: metrics dict}."""
    if not runs:
        raise UserInputError("no runs to plot")
    keys = ("AP", "APr", "APc", "APf")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(runs)
    x = np.arange(len(keys))
    for k, (lab, m) in enumerate(runs.items()):
        vals = [100 * m[key] if m.get(key) is not None and m[key] >= 0 else np.nan for key in keys]
        bars = ax.bar(
            x + (k - (len(runs) - 1) / 2) * width,
            vals,
            width,
            label=lab,
            color=RUN_COLORS[k % len(RUN_COLORS)],
        )
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(x, keys)
    for tick, key in zip(ax.get_xticklabels(), keys, strict=True):
        tick.set_color(
            {"APr": FREQUENCY_COLORS["r"], "APc": FREQUENCY_COLORS["c"], "APf": FREQUENCY_COLORS["f"]}.get(
                key, "k"
            )
        )
    ax.set_ylabel("AP (%)")
    ax.set_title("AP per frequency group")
    ax.legend(fontsize=8)
    out, png = _save_figure(fig, out_dir, name)
    rows = [{"run": lab} | {key: m.get(key, math.nan) for key in keys} for lab, m in runs.items()]
    return png, _write_csv(out / f"{name}.csv", ["run", *keys], rows)
