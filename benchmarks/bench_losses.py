"""Forward+backward time and peak extra memory of the classification losses at LVIS scale.

    python benchmarks/bench_losses.py [--anchors 20000 100000] [--classes 1203] [--repeats 5] [--threads 2]

Each (implementation, size) runs in a fresh subprocess: peak extra memory = peak RSS during one forward+backward
minus the RSS just before it (logits and labels already allocated; the gradient buffer counts as extra). Time is
the median wall time of `--repeats` forward+backward passes after one warm-up. "eager" is the paper's EFL formula
written plainly with autograd (efldet.losses.reference) plus the per-class |dL/dx| sums taken from x.grad, i.e.
what a straightforward implementation with gradient collection costs. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

IMPLEMENTATIONS = ["eager", "focal", "efl", "eqfl", "eqlv2_focal"]


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _child(impl: str, num_anchors: int, num_classes: int, repeats: int, threads: int) -> dict:
    import torch

    from efldet.losses import (
        EQLv2FocalLoss,
        EqualizedFocalLoss,
        EqualizedQualityFocalLoss,
        sigmoid_focal_loss,
    )
    from efldet.losses.reference import reference_efl, reference_gradient_sums

    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)

    def make_inputs(rows: int):
        logits = torch.randn(rows, num_classes, generator=generator) * 2.0 - 4.0
        labels = torch.full((rows,), num_classes, dtype=torch.int64)            # background
        fg = torch.randperm(rows, generator=generator)[: max(1, rows // 100)]    # 1% foreground anchors
        labels[fg] = torch.randint(0, num_classes, (fg.numel(),), generator=generator)
        labels[torch.randperm(rows, generator=generator)[: rows // 200]] = -1    # 0.5% ignored
        scores = torch.rand(rows, generator=generator)
        return logits, labels, scores

    efl = EqualizedFocalLoss(num_classes)
    eqfl = EqualizedQualityFocalLoss(num_classes)
    eqlv2 = EQLv2FocalLoss(num_classes)
    for module in (efl, eqfl, eqlv2):            # realistic, non-trivial statistics
        module.pos_grad.uniform_(0.0, 1.0, generator=generator)
        module.neg_grad.uniform_(0.5, 2.0, generator=generator)

    def step(logits, labels, scores):
        x = logits.requires_grad_()
        if impl == "eager":
            loss = reference_efl(x, labels, efl.pos_neg_ratio)
            loss.backward()
            reference_gradient_sums(x.grad, labels)
        elif impl == "focal":
            sigmoid_focal_loss(x, labels).backward()
        elif impl == "efl":
            efl(x, labels).backward()
        elif impl == "eqfl":
            eqfl(x, labels, scores).backward()
        elif impl == "eqlv2_focal":
            eqlv2(x, labels).backward()
        x.grad = None
        x.requires_grad_(False)

    step(*make_inputs(64))                       # load kernels outside the measurement
    logits, labels, scores = make_inputs(num_anchors)
    with open("/proc/self/clear_refs", "w") as clear:   # reset the peak RSS to the current RSS
        clear.write("5")
    before = _rss_kib("VmRSS")
    step(logits, labels, scores)
    peak_extra_mib = (_rss_kib("VmHWM") - before) / 1024
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step(logits, labels, scores)
        times.append(time.perf_counter() - start)
    return {"impl": impl, "anchors": num_anchors, "classes": num_classes, "median_s": statistics.median(times),
            "min_s": min(times), "peak_extra_mib": peak_extra_mib,
            "logits_mib": logits.numel() * logits.element_size() / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--anchors", type=int, nargs="+", default=[20000, 100000])
    parser.add_argument("--classes", type=int, default=1203)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--impl", nargs="+", default=IMPLEMENTATIONS, choices=IMPLEMENTATIONS)
    parser.add_argument("--child", nargs=5, metavar=("IMPL", "K", "C", "REPEATS", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        impl, k, c, repeats, threads = args.child
        print(json.dumps(_child(impl, int(k), int(c), int(repeats), int(threads))))
        return

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch threads {args.threads}, "
          f"python {platform.python_version()}")
    rows = []
    for num_anchors in args.anchors:
        for impl in args.impl:
            cmd = [sys.executable, __file__, "--child", impl, str(num_anchors), str(args.classes),
                   str(args.repeats), str(args.threads)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            row = rows[-1]
            print(f"  measured {impl:12s} K={num_anchors:>6}: {row['median_s'] * 1000:8.1f} ms, "
                  f"{row['peak_extra_mib']:8.1f} MiB", flush=True)

    print()
    print("| K anchors | C | loss | fwd+bwd median (ms) | speed-up vs eager | peak extra memory (MiB) "
          "| x logits size | memory vs eager |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|")
    for num_anchors in args.anchors:
        group = [r for r in rows if r["anchors"] == num_anchors]
        eager = next((r for r in group if r["impl"] == "eager"), None)
        for r in group:
            speed = f"{eager['median_s'] / r['median_s']:.1f}x" if eager else "-"
            memory = f"{r['peak_extra_mib'] / eager['peak_extra_mib']:.2f}" if eager else "-"
            print(f"| {num_anchors} | {r['classes']} | {r['impl']} | {r['median_s'] * 1000:.1f} | {speed} "
                  f"| {r['peak_extra_mib']:.0f} | {r['peak_extra_mib'] / r['logits_mib']:.1f} | {memory} |")


if __name__ == "__main__":
    main()
