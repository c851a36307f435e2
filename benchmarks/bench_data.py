"""Index build time and peak memory for an LVIS-v1-train-sized annotation file: efldet vs the official API.

    python benchmarks/bench_data.py                       # full size: 100,170 images, 1,270,141 annotations
    python benchmarks/bench_data.py --images 5000 --annotations 63000   # a quick look
    python benchmarks/bench_data.py --skip-official       # efldet only (the official API needs ~10+ GB)

The file is generated once (about 1.1 GB at full size, with polygon segmentations like LVIS v1's) and reused
from `--json`. Each measurement runs in its own fresh process, so peak RSS is that of the index alone (plus
the interpreter and imports, which are measured separately and printed as the baseline).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

# Real LVIS v1 train: 100,170 images, 1,270,141 annotations, 1,203 categories, about 1.1 GB of json.
LVIS_TRAIN_IMAGES = 100_170
LVIS_TRAIN_ANNOTATIONS = 1_270_141


def write_lvis_like_json(path: str, num_images: int, num_annotations: int, seed: int = 0) -> None:
    """Write an LVIS-v1-shaped annotation file: same keys, id layout, polygon sizes and category list."""
    from efldet.data.categories import packaged_lvis_categories

    rng = np.random.default_rng(seed)
    cats = packaged_lvis_categories()
    cat_ids = np.array([c["id"] for c in cats])
    # Category of each annotation: proportional to LVIS train image counts (the long tail).
    weights = np.array([c["train_image_count"] for c in cats], dtype=np.float64)
    ann_cat = rng.choice(cat_ids, size=num_annotations, p=weights / weights.sum())
    ann_img = np.sort(rng.integers(0, num_images, size=num_annotations)) + 1
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write('{"info": {"description": "LVIS-v1-shaped benchmark file", "year": 2020}, "images": [')
        for i in range(1, num_images + 1):
            split = "train2017" if i % 5 else "val2017"
            rec = {
                "id": i,
                "height": 480,
                "width": 640,
                "license": 1,
                "date_captured": "2013-11-14 11:18:45",
                "coco_url": f"http://images.cocodataset.org/{split}/{i:012d}.jpg",
                "flickr_url": f"http://farm4.staticflickr.com/{i}.jpg",
                "neg_category_ids": rng.choice(cat_ids, 5, replace=False).tolist(),
                "not_exhaustive_category_ids": [],
            }
            f.write(("," if i > 1 else "") + json.dumps(rec))
        f.write('], "annotations": [')
        chunk = 20_000
        for start in range(0, num_annotations, chunk):
            n = min(chunk, num_annotations - start)
            xy = rng.uniform(0, 400, size=(n, 2))
            wh = rng.uniform(2, 200, size=(n, 2))
            npts = rng.integers(34, 68, size=n)  # about 1.1 GB in all, as LVIS v1 train
            parts = []
            for k in range(n):
                x, y = xy[k]
                w, h = wh[k]
                pts = rng.uniform(0, 1, size=2 * npts[k]) * np.tile([w, h], npts[k]) + np.tile(
                    [x, y], npts[k]
                )
                seg = ",".join(f"{v:.2f}" for v in pts)
                aid = start + k + 1
                parts.append(
                    f'{{"area": {w * h:.2f}, "id": {aid}, "segmentation": [[{seg}]], '
                    f'"image_id": {ann_img[start + k]}, '
                    f'"bbox": [{x:.2f}, {y:.2f}, {w:.2f}, {h:.2f}], "category_id": {ann_cat[start + k]}}}'
                )
            f.write(("," if start else "") + ",".join(parts))
        f.write('], "categories": ')
        counts = np.bincount(ann_cat, minlength=cat_ids.max() + 1)
        out_cats = []
        for c in cats:
            out_cats.append(
                {
                    "id": c["id"],
                    "name": c["name"],
                    "synset": c["synset"],
                    "frequency": c["frequency"],
                    "image_count": c["train_image_count"],
                    "instance_count": int(counts[c["id"]]),
                    "synonyms": [c["name"]],
                    "def": "",
                    "synset_def": "",
                }
            )
        f.write(json.dumps(out_cats))
        f.write(', "licenses": [{"id": 1, "name": "cc-by", "url": ""}]}')
    os.replace(tmp, path)


_CHILD = {
    "baseline": "import efldet.data.lvis, lvis",
    "efldet": "from efldet.data.lvis import LVISIndex; ix = LVISIndex.from_json({path!r}); "
    "print(len(ix), ix.num_annotations, file=sys.stderr)",
    "official": "import numpy as np; np.float = float; import lvis; api = lvis.LVIS({path!r}); "
    "print(len(api.imgs), len(api.anns), file=sys.stderr)",
}


def measure(kind: str, path: str, mem_cap_gib: float) -> tuple[float, float, float] | None:
    """Run one index build in a fresh process capped at `mem_cap_gib` of address space (RLIMIT_AS); return
    (wall seconds, CPU seconds, peak RSS in GiB), or None when it ran out of memory under the cap.
    CPU seconds are what a busy machine cannot inflate; wall time is what a user waits."""
    cap = int(mem_cap_gib * 2**30)

    def limit() -> None:  # runs in the child before exec
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    code = (
        "import resource, sys, time\n"
        "t0, c0 = time.perf_counter(), time.process_time()\n"
        f"{_CHILD[kind].format(path=path)}\n"
        "dt, dc = time.perf_counter() - t0, time.process_time() - c0\n"
        "print(dt, dc, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=limit)
    if out.returncode != 0 and ("MemoryError" in out.stderr or "bad_alloc" in out.stderr or out.returncode < 0):
        return None
    if out.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{out.stderr[-2000:]}")
    seconds, cpu, rss_kib = out.stdout.split()
    return float(seconds), float(cpu), int(rss_kib) / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--json", default="/tmp/efldet_bench_lvis_train.json", help="generated file (reused if present)"
    )
    p.add_argument("--images", type=int, default=LVIS_TRAIN_IMAGES)
    p.add_argument("--annotations", type=int, default=LVIS_TRAIN_ANNOTATIONS)
    p.add_argument("--skip-official", action="store_true", help="do not run lvis.LVIS (official API)")
    p.add_argument("--regenerate", action="store_true", help="write the file again even if it exists")
    p.add_argument("--mem-cap-gb", type=float, default=7.0,
                   help="address-space cap of each measured process in GiB (default 7: a shared machine)")
    args = p.parse_args()

    if args.regenerate or not os.path.exists(args.json):
        t0 = time.perf_counter()
        write_lvis_like_json(args.json, args.images, args.annotations)
        print(f"generated {args.json} in {time.perf_counter() - t0:.1f} s")
    size_gb = os.path.getsize(args.json) / 1e9
    print(f"file: {args.json} ({size_gb:.2f} GB)")

    kinds = [("interpreter + imports (baseline)", "baseline"), ("efldet LVISIndex.from_json", "efldet")]
    if not args.skip_official:
        kinds.append(("lvis.LVIS (official API 0.5.3)", "official"))
    rows = [(name, measure(kind, args.json, args.mem_cap_gb)) for name, kind in kinds]
    print()
    print(f"| {'index build':<34} | {'wall (s)':>8} | {'CPU (s)':>8} | {'peak RSS (GiB)':>14} |")
    print(f"|{'-' * 36}|{'-' * 10}|{'-' * 10}|{'-' * 16}|")
    for name, result in rows:
        if result is None:
            over = f"> {args.mem_cap_gb:g} (cap)"
            print(f"| {name:<34} | {'-':>8} | {'-':>8} | {over:>14} |")
        else:
            sec, cpu, rss = result
            print(f"| {name:<34} | {sec:>8.1f} | {cpu:>8.1f} | {rss:>14.2f} |")
    print("\n(times include the imports of the baseline row; peak RSS of a process that imported torch)")


if __name__ == "__main__":
    main()
