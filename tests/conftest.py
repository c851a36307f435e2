"""Shared fixtures: a tiny synthetic long-tailed dataset and a seconds-scale training config on it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """6 categories, 40 train / 12 val PNG images of 64 px, LVIS-format json (generated once per session)."""
    from efldet.data.synthetic import generate

    root = tmp_path_factory.mktemp("synthetic")
    generate(str(root), num_classes=6, train_images=40, val_images=12, image_size=64, seed=0, max_objects=3)
    return root


def tiny_overrides(dataset: Path, output_dir: Path, *extra: str) -> list[str]:
    """configs/synthetic/tiny.yaml shrunk further for tests: 64 px images, batch 4, no worker processes."""
    return [f"data.root={dataset}", f"output_dir={output_dir}", "model.num_classes=6",
            "data.train_short_sides=[64]", "data.test_short_side=64", "data.max_size=128", "data.num_workers=0",
            "model.neck.channels=32", "model.head.norm_groups=8", "model.backbone.tiny_widths=[8,16,24,32,32]",
            "train.batch_size=4", "eval.batch_size=6", "train.log_interval=1", "optim.warmup_iters=2", *extra]


@pytest.fixture()
def tiny_config_args(tiny_dataset, tmp_path):
    """(config path, overrides) for a run under tmp_path/run."""
    return str(REPO / "configs" / "synthetic" / "tiny.yaml"), tiny_overrides(tiny_dataset, tmp_path / "run")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run faster on one intra-op thread than on two shared cores (used with `pytestmark`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
