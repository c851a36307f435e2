"""Configs: strict loading, inheritance, overrides, and every shipped config builds its model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from efldet.cli import main
from efldet.config import Config, dump_yaml, load_config
from efldet.errors import UserInputError
from efldet.models import build_detector

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "configs").rglob("*.yaml"))


def test_defaults_are_the_paper_settings():
    cfg = Config()
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (0.02, 0.9, 1e-4)
    assert (cfg.optim.warmup_iters, cfg.optim.warmup_ratio, cfg.optim.clip_grad_norm) == (6000, 0.001, 35.0)
    assert cfg.optim.milestones == (16, 22) and cfg.train.epochs == 24 and cfg.train.batch_size == 16
    assert cfg.data.train_short_sides == (640, 672, 704, 736, 768, 800) and cfg.data.max_size == 1333
    assert cfg.data.sampler == "repeat_factor" and cfg.data.rfs_threshold == 0.001
    assert cfg.model.name == "atss_iou" and cfg.model.num_classes == 1203


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_shipped_config_loads_and_builds_on_the_meta_device(path):
    cfg = load_config(path, ["model.backbone.weights=null"])   # no download here; loading is tested elsewhere
    with torch.device("meta"):
        model = build_detector(cfg.model)
    params = list(model.parameters())
    assert params and all(p.is_meta for p in params)
    assert model.num_classes == cfg.model.num_classes


def test_shipped_configs_cover_the_paper_rows():
    names = {p.name for p in SHIPPED}
    for s in (0, 1, 2, 4, 8, 12):
        assert f"atss_r50_fpn_efl_s{s}_2x_rfs.yaml" in names
    for det in ("retinanet", "fcos"):
        for loss in ("focal", "efl", "eqlv2_focal"):
            assert f"{det}_r50_fpn_{loss}_2x_rfs.yaml" in names
    assert {"atss_r50_fpn_efl_2x_rfs.yaml", "atss_r101_fpn_efl_2x_rfs.yaml", "atss_r50_fpn_focal_2x_rfs.yaml",
            "atss_r50_fpn_efl_ff_only_2x_rfs.yaml", "atss_r50_fpn_efl_wf_only_2x_rfs.yaml",
            "atss_r50_fpn_focal_2x.yaml", "atss_r50_fpn_efl_2x.yaml", "tiny.yaml"} <= names
    s4 = load_config(REPO / "configs/lvis_v1/atss_r50_fpn_efl_s4_2x_rfs.yaml")
    assert s4.model.loss.name == "efl" and s4.model.loss.scale_factor == 4.0 and s4.model.backbone.depth == 50
    wf = load_config(REPO / "configs/lvis_v1/atss_r50_fpn_efl_wf_only_2x_rfs.yaml")
    assert (wf.model.loss.focusing_factor, wf.model.loss.weighting_factor) == (False, True)


def test_base_inheritance_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("model: {num_classes: 7, loss: {name: efl}}\noptim: {lr: 0.01}\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nmodel: {loss: {scale_factor: 4}}\n")
    cfg = load_config(tmp_path / "child.yaml", ["optim.milestones=[3, 5]", "train.amp=bf16"])
    assert cfg.model.num_classes == 7 and cfg.model.loss.name == "efl" and cfg.model.loss.scale_factor == 4.0
    assert cfg.optim.lr == 0.01 and cfg.optim.milestones == (3, 5) and cfg.train.amp == "bf16"
    again = load_config(tmp_path / "child.yaml", ["optim.milestones=[3, 5]", "train.amp=bf16"])
    assert dump_yaml(again) == dump_yaml(cfg)


@pytest.mark.parametrize("override, message", [
    ("model.los.name=efl", "unknown config key 'model.los'; did you mean 'model.loss'"),
    ("optim.learning_rate=0.1", "valid keys: lr, momentum"),
    ("optim.lr=fast", "optim.lr must be of type float"),
    ("train.max_iters=1.5", "train.max_iters must be of type int"),
    ("train.deterministic=3", "train.deterministic must be of type bool"),
    ("optim.milestones=[a, 2]", "optim.milestones\\[0\\] must be of type int"),
    ("optim", "must look like key.path=value"),
    ("optim.lr.value=1", "'lr' is a value, not a section"),
])
def test_config_errors_name_the_key(override, message):
    with pytest.raises(UserInputError, match=message):
        load_config(REPO / "configs/synthetic/tiny.yaml", [override])


def test_config_file_errors(tmp_path):
    with pytest.raises(UserInputError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(UserInputError, match="loop"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "bad.yaml").write_text("model: [1, 2\n")
    with pytest.raises(UserInputError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_config_command_prints_resolved_yaml_and_exits_2_on_bad_keys(capsys):
    assert main(["config", str(REPO / "configs/synthetic/tiny.yaml"), "train.max_iters=7"]) == 0
    printed = capsys.readouterr().out
    assert "max_iters: 7" in printed and "name: efl" in printed
    assert main(["config", str(REPO / "configs/synthetic/tiny.yaml"), "trian.max_iters=7"]) == 2
    assert "did you mean 'train'" in capsys.readouterr().err
