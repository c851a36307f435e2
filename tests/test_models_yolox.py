"""YOLOX's networks (CSPDarknet, PAFPN, decoupled head) and YOLOX-IP as a DenseDetector (Appendix A).

Parameter counts are the official YOLOX models' (80 classes, one prior, objectness): YOLOX-S 8,968,255 and
YOLOX-M 25,326,495 (whose checkpoints hold 462 and 606 tensors), Tiny 5,055,855, Nano 912,159 (0.91 M).
"""

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from efldet.cli import main
from efldet.config import OptimConfig, from_dict
from efldet.engine.optim import parameter_groups
from efldet.errors import UserInputError
from efldet.models import BackboneConfig, DetectorConfig, HeadConfig, LossConfig, build_detector
from efldet.models.backbones import YOLOX_SIZES, CSPDarknet
from efldet.models.build import build_yolox_network
from efldet.models.detector import iou_loss
from efldet.models.heads import YOLOXHead
from efldet.models.necks import PAFPN

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster (conftest)


def yolox_cfg(size: str = "nano", num_classes: int = 3, **kwargs) -> DetectorConfig:
    return DetectorConfig(name="yolox_ip", num_classes=num_classes,
                          backbone=BackboneConfig(name="cspdarknet", size=size), **kwargs)


def original_yolox_params(size: str, num_classes: int) -> tuple[int, int]:
    """(parameters, state-dict tensors) of YOLOX-`size`'s network with its original head (1 prior,
    objectness), built on the meta device (no memory, no compute)."""
    cfg = DetectorConfig(num_classes=num_classes, backbone=BackboneConfig(name="cspdarknet", size=size),
                         head=HeadConfig(prior_prob=0.01))
    with torch.device("meta"):
        parts = build_yolox_network(cfg, num_anchors=1, quality="obj")
    return (sum(p.numel() for m in parts for p in m.parameters()), sum(len(m.state_dict()) for m in parts))


def target(boxes, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64)}


# ------------------------------------------------------------------------------------------ parameter counts
@pytest.mark.parametrize(
    ("size", "num_classes", "params"),
    [
        ("nano", 80, 912_159),
        ("tiny", 80, 5_055_855),
        ("s", 80, 8_968_255),
        ("m", 80, 25_326_495),
        ("s", 1203, 9_402_856),
        ("m", 1203, 25_976_712),
    ],
)
def test_parameter_counts_equal_official_yolox(size, num_classes, params):
    assert original_yolox_params(size, num_classes)[0] == params


def test_state_dict_tensor_counts_equal_official_checkpoints():
    assert original_yolox_params("s", 80)[1] == 462
    assert original_yolox_params("m", 80)[1] == 606


def test_class_count_only_changes_the_classification_convs():
    # each of the 3 levels has a 1x1 conv of (width + 1) parameters per class (width 128 for S, 192 for M)
    for size, width in (("s", 128), ("m", 192)):
        extra = original_yolox_params(size, 1203)[0] - original_yolox_params(size, 80)[0]
        assert extra == 3 * (width + 1) * (1203 - 80)


def test_yolox_ip_head_adds_a_second_prior():
    # second prior: per level (width + 1) x (C + 4 + 1) more parameters in the three prediction convs
    with torch.device("meta"):
        model = build_detector(yolox_cfg("s", 80))
    assert sum(p.numel() for p in model.parameters()) == 8_968_255 + 3 * 129 * 85 == 9_001_150
    assert model.prior_generator.num_anchors == 2 and model.head.num_anchors == 2


# -------------------------------------------------------------------------------------------------- shapes
def test_backbone_neck_head_shapes_per_level():
    torch.manual_seed(0)
    backbone = CSPDarknet(depth_multiplier=0.33, width_multiplier=0.25, depthwise=True)
    neck = PAFPN(in_channels=backbone.out_channels, depth_multiplier=0.33, depthwise=True)
    head = YOLOXHead(in_channels=neck.out_channels, width=64, num_classes=7, num_anchors=2, quality="iou",
                     depthwise=True)
    assert backbone.out_channels == [64, 128, 256] and neck.out_channels == [64, 128, 256]
    assert neck.strides == (8, 16, 32)
    feats = backbone(torch.randn(2, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(2, 64, 8, 12), (2, 128, 4, 6), (2, 256, 2, 3)]
    pyramid = neck(feats)
    assert [tuple(p.shape) for p in pyramid] == [(2, 64, 8, 12), (2, 128, 4, 6), (2, 256, 2, 3)]
    cls, box, quality = head(pyramid)
    sizes = [(8, 12), (4, 6), (2, 3)]
    assert [tuple(c.shape) for c in cls] == [(2, 14, *s) for s in sizes]  # A*C = 2*7
    assert [tuple(b.shape) for b in box] == [(2, 8, *s) for s in sizes]  # A*4
    assert [tuple(q.shape) for q in quality] == [(2, 2, *s) for s in sizes]  # A
    assert all(torch.isfinite(t).all() for t in cls + box + quality)


@settings(max_examples=8, deadline=None)
@given(st.integers(32, 100), st.integers(32, 100))
def test_any_input_size_gives_maps_at_ceil_strides(height, width):
    backbone = CSPDarknet(depth_multiplier=0.33, width_multiplier=0.125).eval()  # BN on 1 x 1 maps of 1 image
    neck = PAFPN(in_channels=backbone.out_channels, depth_multiplier=0.33).eval()
    with torch.no_grad():
        maps = neck(backbone(torch.zeros(1, 3, height, width)))
    for level, stride in zip(maps, (8, 16, 32), strict=True):
        assert level.shape[-2:] == (math.ceil(height / stride), math.ceil(width / stride))


def test_head_initialisation_and_classification_biases():
    head = YOLOXHead(in_channels=[8, 16, 32], width=8, num_classes=5, prior_prob=0.01, quality="obj")
    biases = head.classification_biases()
    assert len(biases) == 3 and all(isinstance(b, torch.nn.Parameter) for b in biases)
    assert [id(b) for b in biases] == [id(conv.bias) for conv in head.cls_preds]
    prior_logit = -math.log(0.99 / 0.01)
    for bias, obj in zip(biases, head.obj_preds, strict=True):
        torch.testing.assert_close(bias, torch.full((5,), prior_logit))
        torch.testing.assert_close(obj.bias, torch.full((1,), prior_logit))  # YOLOX's objectness prior
    iou_head = YOLOXHead(in_channels=[8], width=8, num_classes=5, quality="iou")
    assert (iou_head.obj_preds[0].bias == 0).all()
    assert head.cls_convs[0][0].bn.eps == 1e-3 and head.cls_convs[0][0].bn.momentum == 0.03
    with pytest.raises(UserInputError, match="quality"):
        YOLOXHead(in_channels=[8], width=8, num_classes=5, quality="centerness")


def test_optimizer_gives_every_level_classification_bias_its_decay():
    model = build_detector(yolox_cfg())
    groups = {g["name"]: g for g in parameter_groups(model, OptimConfig(cls_bias_weight_decay=1e-4))}
    assert [id(p) for p in groups["cls_bias"]["params"]] == [id(c.bias) for c in model.head.cls_preds]
    assert groups["cls_bias"]["weight_decay"] == 1e-4
    bn = model.backbone.stem.conv.bn
    assert any(p is bn.weight for p in groups["norm"]["params"])  # BN of YOLOX's convs: the norm group


def test_nano_is_depthwise():
    nano = CSPDarknet.from_size("nano")
    groups = [m.groups for m in nano.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert max(groups) > 1  # depthwise 3x3 convs
    small = CSPDarknet.from_size("s")
    assert all(m.groups == 1 for m in small.modules() if isinstance(m, torch.nn.Conv2d))
    assert YOLOX_SIZES["m"] == (0.67, 0.75, False)


# -------------------------------------------------------------------------------------- YOLOX-IP training
@pytest.mark.parametrize("loss", ["efl", "eqfl"])
def test_yolox_ip_trains_one_step_and_detects(loss):
    torch.manual_seed(0)
    model = build_detector(yolox_cfg(loss=LossConfig(name=loss, scale_factor=4.0))).train()
    assert isinstance(model.head, YOLOXHead) and model.box_loss == "iou" and model.l1_loss_weight == 1.0
    images = torch.randn(2, 3, 96, 128)
    targets = [target([[10, 20, 60, 80], [70, 5, 125, 40]], [1, 2]), target([[3, 3, 40, 50]], [0])]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = model(images, targets)
    assert set(losses) == {"loss_cls", "loss_box", "loss_quality", "loss_l1"}
    for value in losses.values():
        assert value.dim() == 0 and torch.isfinite(value) and value > 0
    before = model.head.reg_preds[0].weight.detach().clone()
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    optimizer.step()
    assert not torch.equal(before, model.head.reg_preds[0].weight)
    assert model.cls_loss.pos_grad.sum() > 0  # the EFL / EQFL statistics were collected
    model.eval()
    with torch.no_grad():
        detections = model(images, image_sizes=[(96, 128), (64, 100)])
    assert len(detections) == 2
    for det, (h, w) in zip(detections, [(96, 128), (64, 100)], strict=True):
        assert 0 < det["boxes"].shape[0] <= 300
        assert det["boxes"][:, 0::2].max() <= w and det["boxes"][:, 1::2].max() <= h
        assert ((det["labels"] >= 0) & (det["labels"] < 3)).all()


def test_yolox_ip_on_odd_sizes_and_without_objects():
    model = build_detector(yolox_cfg()).train()
    losses = model(torch.randn(1, 3, 97, 131), [target([], [])])
    assert losses["loss_box"].item() == 0.0 and losses["loss_l1"].item() == 0.0 and losses["loss_cls"] > 0


# ---------------------------------------------------------------------------------------------- box losses
def test_iou_loss_hand_computed():
    pred = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    gt = torch.tensor([[5.0, 0.0, 15.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    # IoU 50 / 150 = 1/3 -> 1 - 1/9; identical boxes -> 0
    torch.testing.assert_close(iou_loss(pred, gt), torch.tensor((8 / 9 + 0.0) / 2))
    torch.testing.assert_close(iou_loss(pred, gt, weight=torch.tensor([0.5, 1.0]), normalizer=4.0),
                               torch.tensor(0.5 * 8 / 9 / 4))
    assert iou_loss(pred[:0], gt[:0]).item() == 0.0


@pytest.mark.parametrize(("box_loss", "l1_weight", "expected_box"), [("giou", None, 0.4), ("iou", 0.5, 0.64)])
def test_box_and_l1_losses_through_the_detector(box_loss, l1_weight, expected_box):
    # one anchor [0, 0, 16, 16] with zero regression (decodes to itself), matched to GT [4, 0, 20, 16]:
    # IoU = 192 / 320 = 0.6; the enclosing box is the union, so GIoU = 0.6 too.
    # giou: 1 - 0.6 = 0.4; iou: 1 - 0.6^2 = 0.64 (one positive: the IoU weight cancels in the normaliser).
    # Encoded target with weights (10, 10, 5, 5): dx = 10 * (12 - 8) / 16 = 2.5, dy = dw = dh = 0 -> L1 = 2.5.
    cfg = yolox_cfg(num_classes=2, loss=LossConfig(box_loss=box_loss, l1_weight=l1_weight, box_weight=1.0))
    model = build_detector(cfg).train()
    priors = [torch.tensor([[0.0, 0.0, 16.0, 16.0]])]
    losses = model.compute_losses(
        torch.zeros(1, 1, 2), torch.zeros(1, 1, 4), torch.zeros(1, 1), priors, torch.tensor([[0]]),
        [target([[4, 0, 20, 16]], [1])],
    )
    torch.testing.assert_close(losses["loss_box"], torch.tensor(expected_box))
    if l1_weight is None:  # yolox_ip's own default: L1 weight 1
        torch.testing.assert_close(losses["loss_l1"], torch.tensor(2.5))
    else:
        torch.testing.assert_close(losses["loss_l1"], torch.tensor(2.5 * l1_weight))


def test_l1_targets_of_point_priors_are_distances_over_stride():
    # FCOS point (8, 8) on stride 8 with zero regression, GT [0, 0, 24, 16]: distances (8, 8, 16, 8) / 8 ->
    # L1 = 1 + 1 + 2 + 1 = 5 (one positive: its centerness weight cancels in the normaliser)
    cfg = DetectorConfig(name="fcos", num_classes=2, backbone=BackboneConfig(name="tiny", tiny_widths=(8,) * 5),
                         loss=LossConfig(l1_weight=1.0))
    cfg.neck.channels = 8
    model = build_detector(cfg).train()
    losses = model.compute_losses(torch.zeros(1, 1, 2), torch.zeros(1, 1, 4), torch.zeros(1, 1),
                                  [torch.tensor([[8.0, 8.0]])], torch.tensor([[0]]), [target([[0, 0, 24, 16]], [0])])
    torch.testing.assert_close(losses["loss_l1"], torch.tensor(5.0))


def test_dense_presets_keep_giou_and_no_l1():
    cfg = DetectorConfig(num_classes=3, backbone=BackboneConfig(name="tiny", tiny_widths=(8, 8, 8, 8, 8)))
    cfg.neck.channels = 8
    model = build_detector(cfg)
    assert (model.box_loss, model.l1_loss_weight) == ("giou", 0.0)
    assert cfg.loss.box_loss is None and cfg.loss.l1_weight is None and cfg.loss.box_weight == 2.0
    losses = model.train()(torch.randn(1, 3, 64, 64), [target([[8, 8, 40, 48]], [2])])
    assert "loss_l1" not in losses


# -------------------------------------------------------------------------------------------------- config
def test_config_errors_name_the_key():
    with pytest.raises(UserInputError, match="backbone.name to 'cspdarknet'"):
        build_detector(DetectorConfig(name="yolox_ip"))
    with pytest.raises(UserInputError, match="did you mean 'nano'"):
        build_detector(yolox_cfg(size="nan"))
    with pytest.raises(UserInputError, match="head.quality"):
        build_detector(yolox_cfg(head=HeadConfig(quality="centerness")))
    with pytest.raises(UserInputError, match="loss.box_loss"):
        build_detector(yolox_cfg(loss=LossConfig(box_loss="diou")))
    with pytest.raises(UserInputError, match="did you mean 'yolox_ip'"):
        build_detector(DetectorConfig(name="yolox-ip"))


def test_yaml_model_section_and_cli_info(tmp_path, capsys):
    section = {"name": "yolox_ip", "num_classes": 80, "backbone": {"name": "cspdarknet", "size": "s"},
               "loss": {"name": "efl", "scale_factor": 4.0}}
    cfg = from_dict(DetectorConfig, section, where="test")
    assert (cfg.backbone.size, cfg.loss.box_loss, cfg.loss.l1_weight) == ("s", None, None)
    path = tmp_path / "yolox_ip_s.yaml"
    path.write_text("model:\n  name: yolox_ip\n  num_classes: 80\n  backbone: {name: cspdarknet, size: s}\n")
    assert main(["info", str(path), "--input-size", "64", "64", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == 9_001_150 and info["backbone"] == "cspdarknet-s"
    assert {name: part["class"] for name, part in info["components"].items()} == {
        "backbone": "CSPDarknet", "neck": "PAFPN", "head": "YOLOXHead"}
    assert info["priors_per_location"] == 2 and info["quality"] == "iou" and info["flops"] > 0


# ---------------------------------------------------------------------------------- original YOLOX preset
def test_original_yolox_preset_is_the_official_network_with_simota_supervision():
    from efldet.models import YOLOXDetector

    cfg = DetectorConfig(name="yolox", num_classes=80, backbone=BackboneConfig(name="cspdarknet", size="s"),
                         head=HeadConfig(prior_prob=0.01), loss=LossConfig(name="bce_iou"))
    with torch.device("meta"):
        model = build_detector(cfg)
    assert isinstance(model, YOLOXDetector) and model.cls_positives_only
    assert sum(p.numel() for p in model.parameters()) == 8_968_255  # the official YOLOX-S

    torch.manual_seed(0)
    tiny = build_detector(DetectorConfig(name="yolox", num_classes=3, backbone=BackboneConfig(name="cspdarknet",
                                                                                               size="nano"),
                                         loss=LossConfig(name="efl", scale_factor=4.0))).train()
    assert not tiny.cls_positives_only  # the focal family sees every point, negatives included
    losses = tiny(torch.randn(1, 3, 64, 64), [target([[8, 8, 40, 48]], [2])])
    assert {"loss_cls", "loss_obj", "loss_iou", "loss_l1"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert tiny.cls_loss.pos_grad[2] > 0 and tiny.cls_loss.neg_grad.sum() > 0
