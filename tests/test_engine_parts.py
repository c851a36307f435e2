"""Engine parts: parameter groups, the lr schedule, checkpoints (atomic, keep-last, key report), EMA, AMP."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import REPO, tiny_overrides
from torch import nn

from efldet.config import OptimConfig, load_config
from efldet.engine import checkpoint as ckpt_module
from efldet.engine.checkpoint import load_checkpoint, load_model_state, save_atomic, save_checkpoint
from efldet.engine.ema import ModelEMA
from efldet.engine.optim import LRSchedule, build_optimizer, parameter_groups
from efldet.engine.trainer import train
from efldet.errors import UserInputError
from efldet.models.build import DetectorConfig, build_detector

TINY = str(REPO / "configs" / "synthetic" / "tiny.yaml")


def tiny_detector():
    cfg = load_config(TINY, ["model.num_classes=3", "model.neck.channels=16", "model.head.norm_groups=4",
                             "model.backbone.tiny_widths=[8,8,8,16,16]"])
    return build_detector(cfg.model)


def test_parameter_groups_decay_weights_not_norms_and_yolox_cls_bias():
    model = tiny_detector()
    groups = {g["name"]: g for g in parameter_groups(model, OptimConfig(cls_bias_weight_decay=5e-4))}
    assert groups["weights"]["weight_decay"] == 1e-4 and groups["norm"]["weight_decay"] == 0.0
    assert [p is model.head.cls_logits.bias for p in groups["cls_bias"]["params"]] == [True]
    assert groups["cls_bias"]["weight_decay"] == 5e-4
    norm_params = {id(p) for m in model.modules() if isinstance(m, nn.GroupNorm) for p in m.parameters()}
    assert norm_params == {id(p) for p in groups["norm"]["params"]}
    counted = sum(len(g["params"]) for g in groups.values())
    assert counted == len([p for p in model.parameters() if p.requires_grad])
    assert "cls_bias" not in {g["name"] for g in parameter_groups(model, OptimConfig())}


def test_lr_schedule_warmup_in_epochs_overrides_iterations():
    cfg = OptimConfig(lr=0.01, warmup_iters=6000, warmup_epochs=5, warmup_ratio=0.0, schedule="cosine")
    schedule = LRSchedule(cfg, iters_per_epoch=10, total_iters=1000)
    assert schedule.warmup_iters == 50
    assert schedule.factor(25) == pytest.approx(0.5 * schedule.factor(50), rel=1e-2)  # halfway up the ramp
    assert schedule.factor(50) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.05)))  # ramp done, cosine


def test_lr_schedule_warmup_multistep_and_cosine():
    cfg = OptimConfig(lr=0.02, warmup_iters=100, warmup_ratio=0.001, milestones=(2, 3), gamma=0.1)
    schedule = LRSchedule(cfg, iters_per_epoch=100, total_iters=400)
    assert schedule.factor(0) == pytest.approx(0.001)
    assert schedule.factor(50) == pytest.approx(0.001 * 0.5 + 0.5)
    assert schedule.factor(100) == 1.0 and schedule.factor(199) == 1.0
    assert schedule.factor(200) == pytest.approx(0.1) and schedule.factor(300) == pytest.approx(0.01)
    model = nn.Linear(2, 2)
    optimizer = build_optimizer(model, cfg)
    assert schedule.apply(optimizer, 250) == pytest.approx(0.002)
    assert all(g["lr"] == pytest.approx(0.002) for g in optimizer.param_groups)
    cosine = LRSchedule(OptimConfig(schedule="cosine", warmup_iters=0, min_lr_ratio=0.05), iters_per_epoch=10,
                        total_iters=100)
    assert cosine.factor(0) == 1.0 and cosine.factor(100) == pytest.approx(0.05)
    assert cosine.factor(50) == pytest.approx(0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi / 2)))
    with pytest.raises(UserInputError, match="optim.schedule"):
        LRSchedule(OptimConfig(schedule="poly"), iters_per_epoch=1, total_iters=1)


def test_atomic_save_keeps_the_previous_file_when_a_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_atomic({"model": {"w": torch.ones(2)}, "iteration": 1}, path)

    def crash(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_module.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_atomic({"model": {"w": torch.zeros(2)}, "iteration": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["iteration"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]        # no temporary file left behind


def test_keep_last_k_periodic_checkpoints(tmp_path):
    for iteration in range(1, 6):
        save_checkpoint({"model": {}, "iteration": iteration}, tmp_path, keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_00000004.pt", "iter_00000005.pt", "last.pt"]
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 5


def test_checkpoint_errors_are_clear(tmp_path):
    with pytest.raises(UserInputError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserInputError, match="could not read checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    small = build_detector(DetectorConfig(num_classes=3, backbone=DetectorConfig().backbone.__class__(name="tiny")))
    other = build_detector(DetectorConfig(num_classes=5, backbone=DetectorConfig().backbone.__class__(name="tiny")))
    with pytest.raises(UserInputError, match="shape mismatch head.cls_logits.weight"):
        load_model_state(small, other.state_dict(), source="other.pt")
    state = small.state_dict()
    state.pop("head.scales")
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(UserInputError, match="1 missing keys: head.scales") as err:
        load_model_state(small, state, source="edited.pt")
    assert "1 unexpected keys: extra.weight" in str(err.value)


def test_ema_tracks_weights_and_copies_buffers():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = ModelEMA(model, decay=0.5)
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.fill_(3.0)
    before = ema.module[0].weight.clone()
    ema.update(model)
    decay = 0.5 * (1 - math.exp(-1 / 2000))
    torch.testing.assert_close(ema.module[0].weight, decay * before + (1 - decay) * model[0].weight)
    assert torch.equal(ema.module[1].running_mean, torch.full((2,), 3.0))


def test_bf16_autocast_ema_and_accumulation_train_on_cpu(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    cfg = load_config(TINY, tiny_overrides(tiny_dataset, run, "train.max_iters=1", "train.amp=bf16",
                                           "train.ema_decay=0.9", "train.grad_accum=2", "eval.at_end=false"))
    result = train(cfg, resume=False)
    assert result["iteration"] == 1 and result["ema"] is not None
    assert int(result["ema"].updates) == 1
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["ema"] is not None and ckpt["batch_in_epoch"] == 2      # 1 step x 2 micro-batches
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in logged if r["kind"] == "train"]
    assert all(math.isfinite(r["loss"]) for r in train_records)
    assert {"g_mean_r", "g_mean_c", "log10_ratio_r"} <= set(train_records[-1])   # EFL statistics per group
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))


def test_fp16_on_cpu_is_a_clear_error(tiny_dataset, tmp_path):
    cfg = load_config(TINY, tiny_overrides(tiny_dataset, tmp_path, "train.amp=fp16", "train.device=cpu"))
    with pytest.raises(UserInputError, match="fp16 needs CUDA"):
        train(cfg, resume=False)
