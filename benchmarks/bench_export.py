"""Inference latency per image: PyTorch eager vs the exported ONNX model in onnxruntime, on this machine.

    python benchmarks/bench_export.py [--models tiny r50] [--iters 5] [--threads 2]

Models: "tiny" = our small CPU backbone, 64-channel FPN, 2-conv head, C = 40, at 128 x 128 (the demo's scale);
"r50" = the improved baseline (ATSS-IoU, ResNet-50-FPN, 2 anchors, C = 1203) at 640 x 640. Random weights
(latency does not depend on them; scores are spread so that NMS sees realistic candidate counts). Rows:
PyTorch eager `model(images)` (network + decoding + post-processing with NMS), onnxruntime on the file
exported without NMS (+ the same post-processing in PyTorch), and on the file exported with NMS in the graph.
One image per call, medians over `--iters` calls after one warm-up; both runtimes get `--threads` intra-op
threads. Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import onnxruntime
import torch

from efldet.export import OnnxDetector, export_onnx
from efldet.models import BackboneConfig, DetectorConfig, HeadConfig, NeckConfig, build_detector


def model_setup(kind: str) -> tuple[DetectorConfig, int]:
    """(config, input side) of a benchmark model."""
    if kind == "r50":
        return DetectorConfig(name="atss_iou", num_classes=1203), 640
    cfg = DetectorConfig(name="atss_iou", num_classes=40, backbone=BackboneConfig(name="tiny"),
                         neck=NeckConfig(channels=64), head=HeadConfig(num_convs=2))
    return cfg, 128


def median_ms(run: Callable[[], object], iters: int) -> float:
    """Median wall time of `run()` in milliseconds over `iters` calls after one warm-up."""
    run()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=("tiny", "r50"), default=["tiny", "r50"])
    parser.add_argument("--iters", type=int, default=5, help="timed calls per row (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of both runtimes (default 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, onnxruntime "
          f"{onnxruntime.__version__}, {args.threads} threads, median of {args.iters} calls, 1 image per call")
    print("| model | input | runtime | ms / image | export s |")
    print("|---|---|---|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.models:
            cfg, side = model_setup(kind)
            torch.manual_seed(0)
            model = build_detector(cfg).eval()
            torch.nn.init.normal_(model.head.cls_logits.weight, std=0.1)
            images = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                eager = median_ms(lambda m=model, x=images: m(x), args.iters)
            print(f"| {kind} | {side}x{side} | PyTorch eager (+NMS) | {eager:.1f} | - |", flush=True)
            for with_nms in (False, True):
                start = time.perf_counter()
                path = export_onnx(model, Path(tmp) / f"{kind}_{with_nms}.onnx", input_size=(side, side),
                                   with_nms=with_nms)
                seconds = time.perf_counter() - start
                detector = OnnxDetector(path, threads=args.threads)
                with torch.no_grad():
                    ms = median_ms(lambda d=detector, x=images: d(x), args.iters)
                name = "onnxruntime, NMS in graph" if with_nms else "onnxruntime (+NMS in PyTorch)"
                print(f"| {kind} | {side}x{side} | {name} | {ms:.1f} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
