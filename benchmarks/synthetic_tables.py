"""The paper's comparisons at CPU scale, on the synthetic long-tailed benchmark (the demo's data and recipe).

    python benchmarks/synthetic_tables.py [--tables 2 3 4 8] [--seeds 0 1] [--out runs/synthetic_tables]

Trains every configuration of the chosen tables with every seed (configs/synthetic/demo.yaml plus the overrides
below; one run = one seed of data order, augmentation and initialisation on the same generated data), evaluates
with the LVIS protocol and prints tables shaped like the paper's: mean and spread (max - min over seeds) of AP,
APr, APc, APf, plus each run's final mean g_j per frequency group. Finished runs are reused (their
output_dir/eval/eval.json), so an interrupted benchmark continues where it stopped. Not a test.

    Table 2/6 analogue: focal loss vs EQLv2&Focal vs EFL on the improved baseline, and on RetinaNet; PAA focal vs EFL
    Table 3 analogue:   weighting factor only / focusing factor only
    Table 4 analogue:   s in {0, 1, 2, 4, 8, 12}
    Table 8 analogue:   YOLOX-Nano, original supervision (Sigmoid) and YOLOX-IP with FL / EFL / QFL / EQFL
                        (configs/synthetic/yolox_nano_*.yaml)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "synthetic" / "demo.yaml"
KEYS = ("AP", "APr", "APc", "APf")

TABLES: dict[str, list[tuple[str, list[str]]]] = {
    "2": [
        ("ATSS-IoU focal", ["model.loss.name=focal"]),
        ("ATSS-IoU EQLv2&Focal", ["model.loss.name=eqlv2_focal"]),
        ("ATSS-IoU EFL", ["model.loss.name=efl"]),
        ("RetinaNet focal", ["model.name=retinanet", "model.loss.name=focal"]),
        ("RetinaNet EQLv2&Focal", ["model.name=retinanet", "model.loss.name=eqlv2_focal"]),
        ("RetinaNet EFL", ["model.name=retinanet", "model.loss.name=efl"]),
        ("PAA focal", ["model.name=paa", "model.loss.name=focal", "model.loss.box_weight=1.3"]),
        ("PAA EFL", ["model.name=paa", "model.loss.name=efl", "model.loss.box_weight=1.3"]),
    ],
    "3": [
        ("no WF, no FF (focal)", ["model.loss.name=focal"]),
        ("WF only", ["model.loss.name=efl", "model.loss.focusing_factor=false"]),
        ("FF only", ["model.loss.name=efl", "model.loss.weighting_factor=false"]),
        ("WF + FF (EFL)", ["model.loss.name=efl"]),
    ],
    "4": [(f"s = {s}", ["model.loss.name=efl", f"model.loss.scale_factor={s}"]) for s in (0, 1, 2, 4, 8, 12)],
    # rows with their own config file (configs/synthetic/yolox_nano_*.yaml) instead of demo.yaml
    "8": [(f"YOLOX-Nano {label}", [], f"yolox_nano_{stem}.yaml")
          for label, stem in (("Sigmoid", "sigmoid"), ("FL", "fl"), ("EFL", "efl"), ("QFL", "qfl"), ("EQFL", "eqfl"))],
}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")


def run_one(name: str, overrides: list[str], seed: int, data: Path, out: Path, max_iters: int | None,
            config: Path = CONFIG) -> dict:
    """Train + evaluate one configuration (a subprocess, so every run starts from a clean interpreter)."""
    run_dir = out / f"{slug(name)}_seed{seed}"
    eval_json = run_dir / "eval" / "eval.json"
    if not eval_json.is_file():
        cmd = [sys.executable, "-m", "efldet", "train", str(config), f"data.root={data}", f"output_dir={run_dir}",
               f"train.seed={seed}", *overrides, "--no-resume"]
        if max_iters is not None:
            cmd.append(f"train.max_iters={max_iters}")
        started = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        (run_dir / "wall_seconds.txt").write_text(f"{time.perf_counter() - started:.1f}\n")
    metrics = next(iter(json.loads(eval_json.read_text()).values()))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if r["kind"] == "train"][-1]
    wall = float((run_dir / "wall_seconds.txt").read_text()) if (run_dir / "wall_seconds.txt").is_file() else None
    return {"name": name, "seed": seed, **{k: metrics[k] for k in KEYS}, "wall_s": wall,
            **{k: last[k] for k in ("g_mean_r", "g_mean_c", "g_mean_f") if k in last}}


def table(title: str, rows: list[dict], names: list[str]) -> str:
    lines = [f"### {title}", "", "| configuration | seeds | " + " | ".join(KEYS) + " | mean g_j r / c / f |",
             "|---|---:|" + "---:|" * len(KEYS) + "---|"]
    for name in names:
        runs = [r for r in rows if r["name"] == name]
        cells = []
        for key in KEYS:
            values = [100 * r[key] for r in runs if r[key] is not None and r[key] >= 0]
            if not values:
                cells.append("-")
                continue
            spread = max(values) - min(values)
            cells.append(f"{statistics.mean(values):.1f} ± {spread / 2:.1f}" if len(values) > 1 else f"{values[0]:.1f}")
        g = [statistics.mean(r[k] for r in runs) if all(k in r for r in runs) else float("nan")
             for k in ("g_mean_r", "g_mean_c", "g_mean_f")]
        g_text = " / ".join(f"{v:.3f}" for v in g) if all(v == v for v in g) else "-"
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + f" | {g_text} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", nargs="+", default=["2", "3", "4", "8"], choices=sorted(TABLES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "synthetic_tables")
    parser.add_argument("--max-iters", type=int, help="iterations per run (default: the demo recipe's)")
    parser.add_argument("--only", nargs="*", help="only the configurations whose names contain one of these")
    args = parser.parse_args()

    data = args.out / "data"
    if not (data / "val.json").is_file():
        subprocess.run([sys.executable, "-m", "efldet", "data", "synth", "--out", str(data)], check=True,
                       stdout=subprocess.DEVNULL)
    started = time.perf_counter()
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}; seeds {args.seeds}; runs in {args.out}")
    rows: list[dict] = []
    titles = {"2": "Table 2/6 analogue: loss x detector", "3": "Table 3 analogue: EFL's two factors",
              "4": "Table 4 analogue: scale factor s", "8": "Table 8 analogue: YOLOX-Nano supervision x loss"}
    for key in args.tables:
        names = []
        for name, overrides, *config in TABLES[key]:
            if args.only and not any(part in name for part in args.only):
                continue
            names.append(name)
            config_path = CONFIG.parent / config[0] if config else CONFIG
            for seed in args.seeds:
                row = run_one(name, overrides, seed, data, args.out, args.max_iters, config_path)
                rows.append(row)
                print(f"  {name} seed {seed}: " + ", ".join(f"{k} {100 * row[k]:.1f}" for k in KEYS), flush=True)
        print("\n" + table(titles[key], rows, names) + "\n", flush=True)
    print(f"total wall time {(time.perf_counter() - started) / 60:.1f} min (finished runs reused)")


if __name__ == "__main__":
    main()
