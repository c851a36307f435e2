"""Time the LVIS evaluation backends end to end (json files in, metrics out) with peak RSS.

Generates an LVIS-v1-val-shaped case (default 19,809 images, ~12 annotations per image, the 1,203 real LVIS
v1 categories, 300 detections per image), writes the ground-truth and results json files, then runs each
backend in a fresh subprocess under an address-space cap (RLIMIT_AS) and reports wall time and the child's
peak RSS. The official API and faster-coco-eval do not fit the full size on a 24 GB machine, so they are run
at reduced sizes (--reduced) and extrapolated linearly from the two largest sizes, clearly labelled.

    python benchmarks/bench_eval.py                       # full size for "fast", reduced for the others
    python benchmarks/bench_eval.py --images 2000 --reduced 500 1000 --mem-cap-gb 6
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")


def write_case(out_dir: Path, num_images: int, seed: int) -> tuple[Path, Path, int, int]:
    """Write gt.json and results.json for a generated case; returns paths, #annotations, #detections."""
    from efldet.evaluation.simulate import make_lvis_case

    # LVIS v1 val: 19,809 images, 244,707 annotations (12.35 per image), 300 detections per image
    gt, det = make_lvis_case(num_images=num_images, seed=seed, dets_per_image=300, anns_per_image=12.7)
    gt_path = out_dir / f"gt_{num_images}.json"
    res_path = out_dir / f"results_{num_images}.json"
    gt_path.write_text(json.dumps(gt))
    n = len(det["score"])
    with open(res_path, "w") as f:  # streamed: no list of millions of dicts
        f.write("[")
        step = 100_000
        for s in range(0, n, step):
            e = min(n, s + step)
            rows = [
                f'{{"image_id": {i}, "category_id": {c}, "bbox": [{b[0]!r}, {b[1]!r}, {b[2]!r}, {b[3]!r}], '
                f'"score": {sc!r}}}'
                for i, c, b, sc in zip(
                    det["image_id"][s:e].tolist(),
                    det["category_id"][s:e].tolist(),
                    det["bbox"][s:e].tolist(),
                    det["score"][s:e].tolist(),
                    strict=True,
                )
            ]
            f.write((", " if s else "") + ", ".join(rows))
        f.write("]")
    return gt_path, res_path, len(gt["annotations"]), n


def run_one(backend: str, gt_path: str, res_path: str) -> None:
    """Child process: evaluate and print one json line with seconds, peak RSS and metrics."""
    from efldet.evaluation import evaluate_lvis

    t0, c0 = time.perf_counter(), time.process_time()
    metrics = evaluate_lvis(gt_path, res_path, backend=backend)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": dt, "cpu_seconds": cpu, "peak_rss": rss, "metrics": metrics}))


def measure(backend: str, gt_path: Path, res_path: Path, mem_cap_gb: float, timeout_s: float) -> dict:
    cap = int(mem_cap_gb * 2**30)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    cmd = [sys.executable, __file__, "--run-one", backend, str(gt_path), str(res_path)]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=limit, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout after {timeout_s:.0f} s"}
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        oom = "MemoryError" in proc.stderr or "bad_alloc" in proc.stderr or proc.returncode < 0
        return {
            "status": ("out of memory" if oom else "failed") + f" under a {mem_cap_gb:g} GB cap: {tail[:120]}",
            "seconds": wall,
        }
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["status"] = "ok"
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=19809, help="full-size case (LVIS v1 val has 19,809 images)")
    p.add_argument(
        "--reduced",
        type=int,
        nargs="*",
        default=[1000, 2000, 4000],
        help="sizes at which the official API and faster-coco-eval are run",
    )
    p.add_argument("--backends", nargs="+", default=["fast", "faster", "lvis"])
    p.add_argument("--mem-cap-gb", type=float, default=7.0, help="address-space cap per run (GB)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None, help="where to write the json files (default: a temp dir)")
    p.add_argument("--run-one", nargs=3, metavar=("BACKEND", "GT", "RESULTS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.run_one:
        run_one(*args.run_one)
        return

    tmp = tempfile.TemporaryDirectory() if args.workdir is None else None
    work = Path(args.workdir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    sizes = sorted(set(args.reduced + [args.images]))
    rows = []
    for n in sizes:
        t0 = time.perf_counter()
        gt_path, res_path, n_ann, n_det = write_case(work, n, args.seed)
        print(
            f"[{n} images] wrote case: {n_ann} annotations, {n_det} detections, "
            f"results json {res_path.stat().st_size / 2**20:.0f} MiB ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
        for backend in args.backends:
            if n == args.images and backend != "fast" and n not in args.reduced:
                continue
            r = measure(backend, gt_path, res_path, args.mem_cap_gb, args.timeout)
            r.update(backend=backend, images=n, annotations=n_ann, detections=n_det)
            rows.append(r)
            print(
                f"  {backend:7s} {r['status']:4s} "
                + (
                    f"{r['seconds']:8.1f} s wall {r['cpu_seconds']:8.1f} s CPU  peak RSS "
                    f"{r['peak_rss'] / 2**30:5.2f} GB  "
                    f"AP {r['metrics']['AP']:.4f}"
                    if r["status"] == "ok"
                    else ""
                ),
                flush=True,
            )
        gt_path.unlink()
        res_path.unlink()

    # agreement of the metrics at each size where several backends ran
    print("\nMax |difference| to the official API over AP, AP50, AP75, APs, APm, APl, APr, APc, APf:")
    for n in sizes:
        ref = [r for r in rows if r["images"] == n and r["backend"] == "lvis" and r["status"] == "ok"]
        for r in rows:
            if ref and r["images"] == n and r["backend"] != "lvis" and r["status"] == "ok":
                diff = max(abs(r["metrics"][k] - ref[0]["metrics"][k]) for k in KEYS)
                print(f"  {n} images, {r['backend']}: {diff:.2e}")

    print("\n| backend | images | detections | wall (s) | CPU (s) | peak RSS (GB) | note |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        if r["status"] == "ok":
            print(
                f"| {r['backend']} | {r['images']:,} | {r['detections']:,} | {r['seconds']:.1f} | "
                f"{r['cpu_seconds']:.1f} | {r['peak_rss'] / 2**30:.2f} | measured |"
            )
        else:
            print(f"| {r['backend']} | {r['images']:,} | {r['detections']:,} | - | - | - | {r['status']} |")
    x = args.images
    full = {r["backend"]: r for r in rows if r["images"] == x and r["status"] == "ok"}
    extrapolated = {}
    for backend in args.backends:
        ok = sorted(
            (r for r in rows if r["backend"] == backend and r["status"] == "ok" and r["images"] in args.reduced),
            key=lambda r: r["images"],
        )
        if backend in full or len(ok) < 2:
            continue
        a, b = ok[-2], ok[-1]

        def line(key: str, a: dict = a, b: dict = b) -> float:
            return b[key] + (b[key] - a[key]) / (b["images"] - a["images"]) * (x - b["images"])

        extrapolated[backend] = {k: line(k) for k in ("seconds", "cpu_seconds", "peak_rss")}
        e = extrapolated[backend]
        print(
            f"| {backend} | {x:,} | - | {e['seconds']:.0f} | {e['cpu_seconds']:.0f} | "
            f"{e['peak_rss'] / 2**30:.1f} | EXTRAPOLATED linearly from {a['images']:,} and {b['images']:,} "
            "images, not measured |"
        )
    print("\nSpeed-up of fast (CPU time ratio; wall-time ratio in brackets):")
    for n in sizes:
        here = {r["backend"]: r for r in rows if r["images"] == n and r["status"] == "ok"}
        if "fast" not in here:
            continue
        f = here["fast"]
        for other, r in sorted(here.items()):
            if other != "fast":
                print(
                    f"  {n:,} images: {r['cpu_seconds'] / f['cpu_seconds']:.1f}x vs {other} "
                    f"({r['seconds'] / f['seconds']:.1f}x)"
                )
        if n == x:
            for other, e in sorted(extrapolated.items()):
                print(
                    f"  {n:,} images: {e['cpu_seconds'] / f['cpu_seconds']:.1f}x vs {other} EXTRAPOLATED "
                    f"({e['seconds'] / f['seconds']:.1f}x)"
                )
    if "fast" in full:
        f = full["fast"]
        print(
            f"\nfast at {x:,} images: {f['seconds']:.1f} s wall, {f['cpu_seconds']:.1f} s CPU, peak RSS "
            f"{f['peak_rss'] / 2**30:.2f} GB; metrics: " + ", ".join(f"{k} {f['metrics'][k]:.4f}" for k in KEYS)
        )
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
