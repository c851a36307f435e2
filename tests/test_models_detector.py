"""The dense detectors end to end: train/eval contract, empty GT, odd sizes, bad input, overfitting."""

import json

import pytest
import torch
from torchvision.ops import box_iou

from efldet.cli import main
from efldet.config import from_dict, load_config
from efldet.errors import UserInputError
from efldet.losses import EqualizedFocalLoss
from efldet.models import (
    DETECTORS,
    LOSSES,
    BackboneConfig,
    DetectorConfig,
    HeadConfig,
    LossConfig,
    NeckConfig,
    TestConfig,
    build_detector,
    postprocess_detections,
)

NAMES = sorted(DETECTORS)


def tiny_cfg(name: str = "atss_iou", **kwargs) -> DetectorConfig:
    return DetectorConfig(
        name=name, num_classes=3, backbone=BackboneConfig(name="tiny", tiny_widths=(8, 8, 8, 8, 8)),
        neck=NeckConfig(channels=8), head=HeadConfig(num_convs=1, prior_prob=0.01), **kwargs,
    )


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster (conftest)


def target(boxes, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64)}


@pytest.mark.parametrize("name", NAMES)
def test_train_eval_contract_on_odd_sizes(name, one_thread):
    torch.manual_seed(0)
    model = build_detector(tiny_cfg(name))
    images = torch.randn(2, 3, 97, 131)
    targets = [target([[10, 20, 60, 80], [70, 5, 130, 40]], [1, 2]), target([[3, 3, 40, 50]], [0])]
    losses = model.train()(images, targets, image_sizes=[(97, 131), (90, 120)])
    expected = {"loss_cls", "loss_box"} | ({"loss_quality"} if model.head.quality != "none" else set())
    assert set(losses) == expected
    for value in losses.values():
        assert value.dim() == 0 and torch.isfinite(value) and value.requires_grad
    sum(losses.values()).backward()
    assert torch.isfinite(model.head.cls_logits.weight.grad).all()
    assert model.head.box_reg.weight.grad.abs().sum() > 0  # positives were assigned and regressed
    model.eval()
    with torch.no_grad():
        detections = model(images, image_sizes=[(97, 131), (60, 50)])
    assert len(detections) == 2
    for det, (h, w) in zip(detections, [(97, 131), (60, 50)], strict=True):
        assert set(det) == {"boxes", "scores", "labels"}
        assert det["boxes"].dtype == torch.float32 and det["labels"].dtype == torch.int64
        assert 0 < det["boxes"].shape[0] <= 300
        assert det["boxes"][:, 0::2].min() >= 0 and det["boxes"][:, 0::2].max() <= w
        assert det["boxes"][:, 1::2].min() >= 0 and det["boxes"][:, 1::2].max() <= h
        assert ((det["labels"] >= 0) & (det["labels"] < 3)).all()
        assert (det["scores"][:-1] >= det["scores"][1:]).all()


@pytest.mark.parametrize("name", NAMES)
def test_empty_ground_truth(name, one_thread):
    model = build_detector(tiny_cfg(name)).train()
    empty = target([], [])
    losses = model(torch.randn(2, 3, 64, 96), [empty, empty])
    assert losses["loss_cls"] > 0 and torch.isfinite(losses["loss_cls"])
    assert losses["loss_box"].item() == 0.0
    if "loss_quality" in losses:
        assert losses["loss_quality"].item() == 0.0
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize(
    ("boxes", "labels", "match"),
    [
        ([[30, 10, 20, 40]], [0], "x2 < x1"),
        ([[10, float("nan"), 20, 40]], [0], "not finite"),
        ([[10, 10, 20, 40]], [3], "outside 0..2"),
        ([[10, 10, 20, 40]], [-1], "outside 0..2"),
    ],
)
def test_degenerate_targets_raise_before_forward(boxes, labels, match):
    model = build_detector(tiny_cfg()).train()
    calls = []
    model.backbone.register_forward_pre_hook(lambda *args: calls.append(1))
    good = target([[1, 1, 5, 5]], [1])
    with pytest.raises(UserInputError, match=match) as err:
        model(torch.randn(2, 3, 64, 64), [good, target(boxes, labels)])
    assert "targets[1]" in str(err.value)
    assert calls == []


def test_bad_images_and_missing_targets():
    model = build_detector(tiny_cfg()).train()
    with pytest.raises(UserInputError, match="needs targets"):
        model(torch.randn(1, 3, 64, 64))
    with pytest.raises(UserInputError, match="one dict per image"):
        model(torch.randn(2, 3, 64, 64), [target([], [])])
    with pytest.raises(UserInputError, match=r"\[N, 3, H, W\]"):
        model(torch.randn(3, 64, 64), [target([], [])])
    with pytest.raises(UserInputError, match="not inside the padded batch"):
        model(torch.randn(1, 3, 64, 64), [target([], [])], image_sizes=[(65, 64)])


def test_efl_statistics_live_in_the_model(one_thread):
    model = build_detector(tiny_cfg(loss=LossConfig(name="efl"))).train()
    assert isinstance(model.cls_loss, EqualizedFocalLoss)
    assert "cls_loss.pos_grad" in model.state_dict() and "cls_loss.neg_grad" in model.state_dict()
    losses = model(torch.randn(1, 3, 64, 64), [target([[8, 8, 40, 48]], [2])])
    sum(losses.values()).backward()
    assert model.cls_loss.pos_grad[2] > 0 and model.cls_loss.pos_grad[0] == 0


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_every_classification_loss_trains(loss):
    # qfl / eqfl need the IoU target as `scores`; the others must be called without
    model = build_detector(tiny_cfg(loss=LossConfig(name=loss))).train()
    losses = model(torch.randn(1, 3, 64, 64), [target([[8, 8, 40, 48]], [2])])
    assert torch.isfinite(losses["loss_cls"]) and losses["loss_cls"] > 0
    sum(losses.values()).backward()
    assert torch.isfinite(model.head.cls_logits.weight.grad).all()


def test_normalizers_are_averaged_across_ranks(monkeypatch):
    torch.manual_seed(0)
    model = build_detector(tiny_cfg()).train()
    images, targets = torch.randn(1, 3, 64, 64), [target([[8, 8, 40, 48]], [2])]
    single = model(images, targets)
    # as if the other rank had 3x as many positives (and IoU mass): every normalizer doubles
    import efldet.models.detector as detector_module

    monkeypatch.setattr(detector_module, "reduce_mean", lambda v: 2 * torch.as_tensor(v, dtype=torch.float32))
    doubled = model(images, targets)
    for key in single:
        torch.testing.assert_close(doubled[key], single[key] / 2)


def test_postprocess_nms_clip_and_top_k():
    # 3 priors, 2 classes; priors 0 and 1 overlap (IoU 0.81) and prior 2 sticks out of the image
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 9.0], [50.0, 50.0, 120.0, 70.0]]])
    logits = torch.tensor([[[4.0, -9.0], [3.0, 2.0], [1.0, -9.0]]])
    dets = postprocess_detections(logits, boxes, None, [3], [(60, 100)], max_per_image=300)[0]
    # class 0: prior 1 suppressed by prior 0; class 1: prior 1 kept (class-aware), the rest ~0 kept too
    kept = list(zip(dets["labels"].tolist(), dets["boxes"].tolist(), strict=True))
    assert (0, [0.0, 0.0, 10.0, 10.0]) in kept and (1, [0.0, 0.0, 10.0, 9.0]) in kept
    assert (0, [0.0, 0.0, 10.0, 9.0]) not in kept
    assert (0, [50.0, 50.0, 100.0, 60.0]) in kept  # clipped to w = 100, h = 60
    torch.testing.assert_close(dets["scores"][0], torch.sigmoid(torch.tensor(4.0)))
    # quality multiplies the score; max_per_image and pre_nms_topk cut
    quality = torch.tensor([[0.0, 0.0, 10.0]])
    dets = postprocess_detections(logits, boxes, quality, [3], [(60, 100)], max_per_image=1)[0]
    assert dets["boxes"].shape == (1, 4)
    expected = torch.sigmoid(torch.tensor([1.0])) * torch.sigmoid(torch.tensor([10.0]))
    torch.testing.assert_close(dets["scores"], expected)
    dets = postprocess_detections(logits, boxes, None, [2, 1], [(60, 100)], pre_nms_topk=1)[0]
    assert sorted(dets["labels"].tolist()) == [0, 0]  # best pair of each level: (0, class 0), (2, class 0)


def test_at_most_300_detections(one_thread):
    model = build_detector(tiny_cfg("retinanet")).eval()  # 9 anchors: thousands of candidates
    with torch.no_grad():
        (det,) = model(torch.randn(1, 3, 128, 128))
    assert det["boxes"].shape[0] == 300


def test_overfits_one_image(one_thread):
    torch.manual_seed(0)
    model = build_detector(tiny_cfg()).train()
    image = torch.zeros(1, 3, 64, 64)
    image[:, :, 20:52, 16:44] = 1.0
    image[:, 1, 20:52, 16:44] = -1.0
    box = torch.tensor([[16.0, 20.0, 44.0, 52.0]])
    targets = [{"boxes": box, "labels": torch.tensor([1])}]
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(100):
        loss = sum(model(image, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        (det,) = model(image)
    assert det["labels"][0] == 1
    assert box_iou(det["boxes"][:1], box).item() > 0.7
    assert det["scores"][0] > 0.5


# ---------------------------------------------------------------------------------------------- config
def test_config_defaults_are_the_improved_baseline():
    cfg = DetectorConfig()
    assert (cfg.name, cfg.num_classes, cfg.backbone.depth, cfg.backbone.frozen_stages) == (
        "atss_iou", 1203, 50, 1)
    assert (cfg.neck.channels, cfg.head.num_convs, cfg.head.prior_prob, cfg.head.norm_groups) == (
        256, 4, 0.001, 32)
    assert (cfg.test.score_thresh, cfg.test.nms_iou, cfg.test.max_per_image) == (0.0, 0.5, 300)
    preset = DETECTORS["atss_iou"]
    assert (preset["scales"], preset["ratios"], preset["topk"], preset["quality"]) == (
        (6.0, 8.0), (1.0,), 18, "iou")
    model = build_detector(tiny_cfg())
    assert model.prior_generator.num_anchors == 2 and model.assigner.keywords["topk"] == 18
    assert build_detector(tiny_cfg("retinanet")).prior_generator.num_anchors == 9
    assert build_detector(tiny_cfg("atss")).head.quality == "centerness"


def test_config_strict_loading():
    cfg = from_dict(DetectorConfig, {"name": "fcos", "backbone": {"depth": 101}, "loss": {"name": "efl"},
                                     "anchors": {"scales": [4, 5]}}, where="test")
    assert cfg.backbone.depth == 101 and cfg.loss.name == "efl" and cfg.anchors.scales == (4.0, 5.0)
    with pytest.raises(UserInputError, match=r"unknown config key 'backbone.dpeth'.*did you mean 'backbone.depth'"):
        from_dict(DetectorConfig, {"backbone": {"dpeth": 101}}, where="test")
    with pytest.raises(UserInputError, match="did you mean 'num_classes'"):
        from_dict(DetectorConfig, {"num_class": 80}, where="test")
    with pytest.raises(UserInputError, match="test.nms_iou must be of type float"):
        from_dict(DetectorConfig, {"test": {"nms_iou": "half"}}, where="test")
    with pytest.raises(UserInputError, match="did you mean 'retinanet'"):
        build_detector(from_dict(DetectorConfig, {"name": "retinanett"}, where="test"))


def test_cli_info(tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text("model:\n  name: atss_iou\n  num_classes: 3\n"
                    "  backbone: {name: tiny, tiny_widths: [8, 8, 8, 8, 8]}\n  neck: {channels: 8}\n")
    assert main(["info", str(path), "--input-size", "64", "96", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    model = build_detector(load_config(path).model)
    assert info["params"] == sum(p.numel() for p in model.parameters())
    assert info["flops"] > 0 and info["priors_per_location"] == 2
    assert main(["info", str(path), "--input-size", "64", "64"]) == 0
    assert "parameters" in capsys.readouterr().out
    assert main(["info", str(path), "model.num_classes=5", "--json", "--input-size", "64", "96"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] > info["params"]
    path.write_text("model: {nme: atss}\n")
    assert main(["info", str(path)]) == 2
    assert "did you mean 'model.name'" in capsys.readouterr().err


def test_test_settings_reach_postprocess():
    model = build_detector(tiny_cfg(test=TestConfig(max_per_image=7, nms_iou=0.6)))
    assert (model.test_max_per_image, model.test_nms_iou) == (7, 0.6)
    with torch.no_grad():
        (det,) = model.eval()(torch.randn(1, 3, 64, 64))
    assert det["boxes"].shape[0] <= 7
