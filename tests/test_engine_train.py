"""The training engine: resume equivalence, the non-finite guard, two gloo processes, the command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import REPO, tiny_overrides

from efldet.cli import main
from efldet.config import load_config
from efldet.engine.checkpoint import load_checkpoint
from efldet.engine.trainer import NonFiniteLossError, train
from efldet.models.detector import DenseDetector

TINY = str(REPO / "configs" / "synthetic" / "tiny.yaml")


def records(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_train_n_stop_resume_n_equals_train_2n(tiny_dataset, tmp_path):
    common = ["train.deterministic=true", "eval.at_end=false", "train.checkpoint_iters=null"]
    straight = train(load_config(TINY, tiny_overrides(tiny_dataset, tmp_path / "a", "train.max_iters=6", *common)),
                     resume=False)
    first = load_config(TINY, tiny_overrides(tiny_dataset, tmp_path / "b", "train.max_iters=3", *common))
    train(first, resume=False)
    assert load_checkpoint(tmp_path / "b" / "last.pt")["iteration"] == 3
    second = load_config(TINY, tiny_overrides(tiny_dataset, tmp_path / "b", "train.max_iters=6", *common))
    resumed = train(second, resume=True)
    assert straight["iteration"] == resumed["iteration"] == 6
    state_a, state_b = straight["model"].state_dict(), resumed["model"].state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
    assert state_a["cls_loss.pos_grad"].abs().sum() > 0           # EFL statistics accumulated ...
    assert torch.equal(state_a["cls_loss.neg_grad"], state_b["cls_loss.neg_grad"])   # ... and equal


def test_nonfinite_losses_skip_steps_and_stop_after_n_in_a_row(tiny_dataset, tmp_path, monkeypatch):
    original = DenseDetector.compute_losses
    calls = {"n": 0}

    def sometimes_nan(self, *args, **kwargs):
        calls["n"] += 1
        losses = original(self, *args, **kwargs)
        if calls["n"] == 2:                                         # one bad batch: skipped, training goes on
            losses["loss_cls"] = losses["loss_cls"] * float("nan")
        return losses

    monkeypatch.setattr(DenseDetector, "compute_losses", sometimes_nan)
    run = tmp_path / "once"
    result = train(load_config(TINY, tiny_overrides(tiny_dataset, run, "train.max_iters=3", "eval.at_end=false")),
                   resume=False)
    assert result["iteration"] == 3 and result["nonfinite_total"] == 1
    assert [r["in_row"] for r in records(run, "nonfinite")] == [1]

    def always_nan(self, *args, **kwargs):
        losses = original(self, *args, **kwargs)
        losses["loss_box"] = losses["loss_box"] + float("inf")
        return losses

    monkeypatch.setattr(DenseDetector, "compute_losses", always_nan)
    run = tmp_path / "always"
    cfg = load_config(TINY, tiny_overrides(tiny_dataset, run, "train.max_iters=10", "train.max_nonfinite=3"))
    with pytest.raises(NonFiniteLossError, match="3 non-finite losses in a row"):
        train(cfg, resume=False)
    assert [r["in_row"] for r in records(run, "nonfinite")] == [1, 2, 3]
    assert records(run, "train") == []


def _ddp_worker(rank: int, world_size: int, port: int, dataset: str, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    cfg = load_config(TINY, tiny_overrides(Path(dataset), Path(out) / "run", "train.max_iters=3",
                                           "train.deterministic=true", "eval.at_end=true"))
    result = train(cfg, resume=False)
    torch.save({"state": result["model"].state_dict(), "metrics": result["metrics"]}, f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_two_gloo_processes_hold_identical_weights_and_efl_statistics(tiny_dataset, tmp_path):
    port = 29500 + os.getpid() % 1000
    mp.spawn(_ddp_worker, args=(2, port, str(tiny_dataset), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key
    assert ranks[0]["state"]["cls_loss.neg_grad"].sum() > 0
    assert ranks[0]["metrics"] == ranks[1]["metrics"] and "APr" in ranks[0]["metrics"]   # gathered, broadcast
    assert load_checkpoint(tmp_path / "run" / "last.pt")["world_size"] == 2


def test_command_line_train_eval_predict_resume(tiny_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    overrides = tiny_overrides(tiny_dataset, run, "train.max_iters=2")
    assert main(["train", TINY, *overrides]) == 0
    assert {"config.yaml", "metrics.jsonl", "last.pt", "eval"} <= {p.name for p in run.iterdir()}
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"AP", "APr", "APc", "APf"} <= set(final)
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["iteration"] == 2 and ckpt["class_names"] and ckpt["config"]["model"]["num_classes"] == 6

    assert main(["eval", TINY, *overrides, "--weights", str(run / "last.pt"), "--out", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert set(metrics) >= {"AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"}

    images = tiny_dataset / "images"
    val_images = sorted(images.glob("val_*.png"))[:2]
    assert main(["predict", "--weights", str(run / "last.pt"), *map(str, val_images), "--out",
                 str(tmp_path / "pred"), "--score-threshold", "0.0"]) == 0
    drawn = sorted(p.name for p in (tmp_path / "pred").glob("*.png"))
    assert drawn == sorted(p.name for p in val_images)
    detections = json.loads((tmp_path / "pred" / "detections.json").read_text())
    assert detections and {"file_name", "category_name", "bbox", "score"} <= set(detections[0])

    # Fig. 4 margins straight from the checkpoint (its embedded config names the val set).
    assert main(["analyze", "margins", "--weights", str(run / "last.pt"), "--out", str(tmp_path / "an")]) == 0
    assert (tmp_path / "an" / "margins.png").is_file()
    rows = (tmp_path / "an" / "margins_run.csv").read_text().splitlines()
    assert len(rows) == 1 + 6 and "margin" in rows[0]

    # Auto-resume: the same command with more iterations continues from last.pt.
    assert main(["train", TINY, *tiny_overrides(tiny_dataset, run, "train.max_iters=3")]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert load_checkpoint(run / "last.pt")["iteration"] == 3
    assert [r["iteration"] for r in records(run, "train")] == [1, 2, 3]
    assert [r["iteration"] for r in records(run, "eval")] == [2, 3] and "APr" in records(run, "eval")[0]


def test_command_line_errors_exit_2(tiny_dataset, tmp_path, capsys):
    assert main(["train", TINY, f"data.root={tmp_path}/nowhere"]) == 2
    assert "efldet data synth" in capsys.readouterr().err
    assert main(["train", TINY, *tiny_overrides(tiny_dataset, tmp_path, "model.num_classes=5")]) == 2
    assert "model.num_classes=6" in capsys.readouterr().err
    assert main(["train", TINY, *tiny_overrides(tiny_dataset, tmp_path / "r"), "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["predict", "--weights", str(tmp_path / "none.pt"), str(tmp_path), "--out", str(tmp_path)]) == 2


def test_sigterm_writes_a_checkpoint_before_exiting(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "efldet", "train", TINY,
           *tiny_overrides(tiny_dataset, run, "train.max_iters=100000", "eval.at_end=false")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (run / "metrics.jsonl").exists() and records(run, "train"):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "stopped by SIGTERM" in err
    ckpt = load_checkpoint(run / "last.pt")
    assert 1 <= ckpt["iteration"] < 100000


@pytest.mark.usefixtures("one_thread")
def test_yolox_final_phase_switches_off_strong_augmentation_and_on_the_l1_loss(tiny_dataset, tmp_path, monkeypatch):
    """Original YOLOX with Mosaic / MixUp for 2 epochs of 10 iterations, the last one without them and with L1."""
    from efldet.models.yolox import YOLOXDetector

    seen = []
    original = YOLOXDetector.compute_losses

    def record(self, *args, **kwargs):
        losses = original(self, *args, **kwargs)
        seen.append((self.use_l1, float(losses["loss_l1"].detach())))
        return losses

    monkeypatch.setattr(YOLOXDetector, "compute_losses", record)
    cfg = load_config(TINY, tiny_overrides(
        tiny_dataset, tmp_path / "run", "model.name=yolox", "model.backbone.name=cspdarknet",
        "model.backbone.size=nano", "model.loss.name=bce_iou", "data.strong_aug=true", "data.input_size=64",
        "data.no_aug_epochs=1", "data.sampler=random", "train.epochs=2", "train.max_iters=null", "eval.at_end=false"))
    result = train(cfg, resume=False)
    assert result["iteration"] == 20 and len(seen) == 20
    assert [use for use, _ in seen] == [False] * 10 + [True] * 10
    assert all(value == 0.0 for _, value in seen[:10]) and all(value > 0.0 for _, value in seen[10:])
    assert result["model"].use_l1  # the model ends in the final phase
