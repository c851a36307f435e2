"""`efldet demo`: the method on a laptop. Generates the synthetic long-tailed set, trains the improved baseline
structure with focal loss and with EFL on it, evaluates both and writes, into the output directory (runs/demo):

    results.json / results.md     one entry per trained loss: AP, AP50, AP75, APs, APm, APl, APr, APc, APf
    ap_by_group.png / .csv         AP per frequency group, side by side
    margins.png / .csv             Fig. 4: per-category margin (mean positive - mean negative score) on val
    gradient_ratio.png / .csv      Fig. 2 style: EFL's accumulated pos/neg gradient ratio per category
    fig3a/fig3b/fig5 *.png         the loss and derivative curves (Fig. 3, Fig. 5)
    predictions/                   a few val images with EFL's detections drawn
    focal/ efl/                    the two training runs (config, metrics.jsonl, checkpoints, eval)

The numbers are whatever the run measures. `--quick` checks the pipeline in about a minute (tiny data, a few
iterations), not accuracy.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from efldet.config import Config, load_config

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "synthetic" / "demo.yaml"
LOSSES = ("focal", "efl")
# The generated set: classes, train images, val images, image side (the iterations are in configs/synthetic/demo.yaml).
FULL = {"classes": 40, "train_images": 2000, "val_images": 400, "image_size": 128}
QUICK = {"classes": 8, "train_images": 60, "val_images": 16, "image_size": 64}


def demo_config_path() -> Path:
    if not DEMO_CONFIG.is_file():
        from efldet.errors import UserInputError

        raise UserInputError(f"{DEMO_CONFIG} is missing: run the demo from a checkout of the efldet repository")
    return DEMO_CONFIG


def run_demo(out_dir: str | Path = "runs/demo", *, quick: bool = False, seed: int = 0,
             max_iters: int | None = None) -> dict[str, dict[str, float]]:
    """Run the whole demo; returns {loss name: metrics}. `max_iters` overrides the iterations per loss."""
    from efldet.data.synthetic import generate
    from efldet.engine.trainer import train
    from efldet.evaluation import format_markdown_table

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sizes = QUICK if quick else FULL
    data_dir = out / ("data_quick" if quick else "data")
    if not (data_dir / "val.json").is_file() or _stale(data_dir, sizes, seed):
        print(f"generating the synthetic long-tailed set in {data_dir} ...", flush=True)
        summary = generate(str(data_dir), num_classes=sizes["classes"], train_images=sizes["train_images"],
                           val_images=sizes["val_images"], image_size=sizes["image_size"], seed=seed)
        (data_dir / "demo_params.json").write_text(json.dumps({**sizes, "seed": seed}))
        print(f"  {summary['train']['images']} train / {summary['val']['images']} val images, groups "
              f"{summary['groups']}", flush=True)

    results: dict[str, dict[str, float]] = {}
    runs: dict[str, Any] = {}
    started = time.perf_counter()
    for index, loss in enumerate(LOSSES, start=1):
        cfg = _demo_config(data_dir, out / loss, loss, sizes, quick=quick, seed=seed, max_iters=max_iters)
        print(f"[{index}/{len(LOSSES)}] training with {loss} ({cfg.train.max_iters} iterations, "
              f"batch {cfg.train.batch_size}) -> {cfg.output_dir}", flush=True)
        result = train(cfg, resume=False)
        results[loss] = {k: float(v) for k, v in result["metrics"].items()}
        runs[loss] = (cfg, result["model"])
    elapsed = time.perf_counter() - started

    table = format_markdown_table({loss: results[loss] for loss in LOSSES},
                                  keys=["AP", "AP50", "AP75", "APr", "APc", "APf"])
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(f"# efldet demo ({'quick' if quick else 'full'})\n\n{table}\n\n"
                                    f"Training + evaluation of both losses: {elapsed / 60:.1f} min.\n")
    _figures(out, runs, results)
    print("\n" + table)
    print(f"\nwritten to {out}: results.json, results.md, ap_by_group.png, margins.png, gradient_ratio.png, "
          "fig3a/fig3b/fig5 loss plots, predictions/", flush=True)
    return results


def _stale(data_dir: Path, sizes: dict[str, int], seed: int) -> bool:
    params = data_dir / "demo_params.json"
    return not params.is_file() or json.loads(params.read_text()) != {**sizes, "seed": seed}


def _demo_config(data_dir: Path, run_dir: Path, loss: str, sizes: dict[str, int], *, quick: bool, seed: int,
                 max_iters: int | None) -> Config:
    side = sizes["image_size"]
    overrides = [f"data.root={data_dir}", f"output_dir={run_dir}", f"model.num_classes={sizes['classes']}",
                 f"model.loss.name={loss}", f"train.seed={seed}", f"data.train_short_sides=[{side}]",
                 f"data.test_short_side={side}", f"data.max_size={2 * side}"]
    if quick:
        overrides += ["train.max_iters=6", "optim.warmup_iters=2", "train.batch_size=4", "data.num_workers=0",
                      "train.log_interval=2"]
    if max_iters is not None:
        overrides.append(f"train.max_iters={max_iters}")
    return load_config(demo_config_path(), overrides)


def _figures(out: Path, runs: dict[str, Any], results: dict[str, dict[str, float]]) -> None:
    from efldet.engine.inference import collect_margins
    from efldet.engine.predict import predict_images
    from efldet.engine.trainer import build_datasets, resolve_device
    from efldet.evaluation import (
        category_table,
        load_grad_stats,
        plot_ap_by_group,
        plot_gradient_ratio,
        plot_margins,
        read_margin_csv,
    )
    from efldet.losses.plots import plot_loss_figures

    plot_ap_by_group(results, out)
    plot_loss_figures(out)
    cfg, _ = runs["efl"]
    device = resolve_device(cfg.train.device)
    categories = category_table(str(Path(cfg.data.root) / cfg.data.train_ann))
    margins = {}
    for loss, (run_cfg, model) in runs.items():
        _, val_set = build_datasets(run_cfg)
        accumulator = collect_margins(model, val_set, run_cfg, device)
        margins[loss] = read_margin_csv(accumulator.write_csv(out / loss / "margins.csv", categories))
    plot_margins(margins, out)
    checkpoint = Path(cfg.output_dir) / "last.pt"
    pos_grad, neg_grad = next(iter(load_grad_stats(checkpoint).values()))
    plot_gradient_ratio(pos_grad, neg_grad, categories, out, name="gradient_ratio",
                        title="EFL: accumulated positive / negative gradient ratio per category")
    val_images = sorted((Path(cfg.data.root) / "images").glob("val_*.png"))[:6]
    predict_images(checkpoint, [str(p) for p in val_images], out / "predictions", score_threshold=0.3)
