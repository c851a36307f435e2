"""Backbone, neck, head, priors and box coding of the detectors."""

import pytest
import torch
import torchvision

from efldet.errors import UserInputError
from efldet.models import FPN, AnchorGenerator, DenseHead, PointGenerator, ResNet, TinyBackbone, concat_levels
from efldet.structures import (
    centerness_target,
    decode_deltas,
    decode_distances,
    encode_deltas,
    encode_distances,
    paired_box_iou,
)


def test_anchors_hand_computed():
    # stride 4, size 2 x 4 = 8, ratios h/w 1 and 4 (w = 8/2 = 4, h = 8*2 = 16), centres (x + 0.5) * 4.
    gen = AnchorGenerator(strides=(4,), scales=(2.0,), ratios=(1.0, 4.0))
    (anchors,) = gen([(1, 2)])
    expected = torch.tensor([
        [-2.0, -2.0, 6.0, 6.0], [0.0, -6.0, 4.0, 10.0],  # location (x=0, y=0), centre (2, 2)
        [2.0, -2.0, 10.0, 6.0], [4.0, -6.0, 8.0, 10.0],  # location (x=1, y=0), centre (6, 2)
    ])
    assert gen.num_anchors == 2
    torch.testing.assert_close(anchors, expected)


def test_improved_baseline_anchors_two_scales_per_location():
    gen = AnchorGenerator()  # strides 8..128, scales (6, 8), ratio 1
    levels = gen([(2, 3), (1, 2), (1, 1), (1, 1), (1, 1)])
    assert [a.shape[0] for a in levels] == [12, 4, 2, 2, 2]
    # first location of P3: centre (4, 4), sizes 48 and 64; index 2 = location (x=1, y=0), centre (12, 4)
    expected = torch.tensor([[-20.0, -20.0, 28.0, 28.0], [-28.0, -28.0, 36.0, 36.0]])
    torch.testing.assert_close(levels[0][:2], expected)
    torch.testing.assert_close(levels[0][2], torch.tensor([-12.0, -20.0, 36.0, 28.0]))
    # row-major order: index 6 = (x=0, y=1), centre (4, 12)
    torch.testing.assert_close(levels[0][6], torch.tensor([-20.0, -12.0, 28.0, 36.0]))
    # P7: stride 128, sizes 768 and 1024 around (64, 64)
    expected = torch.tensor([[-320.0, -320.0, 448.0, 448.0], [-448.0, -448.0, 576.0, 576.0]])
    torch.testing.assert_close(levels[4], expected)


def test_points_hand_computed():
    gen = PointGenerator(strides=(8, 16))
    p3, p4 = gen([(2, 2), (1, 1)])
    torch.testing.assert_close(p3, torch.tensor([[4.0, 4.0], [12.0, 4.0], [4.0, 12.0], [12.0, 12.0]]))
    torch.testing.assert_close(p4, torch.tensor([[8.0, 8.0]]))


def test_box_coding_round_trip_and_values():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 20.0], [5.0, 5.0, 9.0, 7.0]])
    boxes = torch.tensor([[5.0, 0.0, 15.0, 40.0], [4.0, 4.0, 12.0, 10.0]])
    deltas = encode_deltas(anchors, boxes)
    # box 0: centre moves +5 px = 0.5 widths, height doubles -> dh = log 2
    torch.testing.assert_close(deltas[0], torch.tensor([0.5, 0.5, 0.0, float(torch.log(torch.tensor(2.0)))]))
    torch.testing.assert_close(decode_deltas(anchors, deltas), boxes)
    weighted = encode_deltas(anchors, boxes, (10.0, 10.0, 5.0, 5.0))
    torch.testing.assert_close(weighted[:, 0], 10 * deltas[:, 0])
    torch.testing.assert_close(decode_deltas(anchors, weighted, (10.0, 10.0, 5.0, 5.0)), boxes)
    # a huge log-scale delta is clamped instead of overflowing
    assert torch.isfinite(decode_deltas(anchors, torch.full((2, 4), 1e4))).all()
    points = torch.tensor([[6.0, 8.0]])
    box = torch.tensor([[2.0, 4.0, 10.0, 20.0]])
    torch.testing.assert_close(encode_distances(points, box), torch.tensor([[4.0, 4.0, 4.0, 12.0]]))
    torch.testing.assert_close(decode_distances(points, encode_distances(points, box)), box)
    # centerness sqrt(4/4 * 4/12)
    torch.testing.assert_close(centerness_target(points, box), torch.tensor([(1 / 3) ** 0.5]))


def test_paired_iou_matches_torchvision_diagonal():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [0.0, 0.0, 4.0, 4.0], [3.0, 3.0, 5.0, 5.0]])
    torch.testing.assert_close(paired_box_iou(a, b), torchvision.ops.box_iou(a, b).diagonal())
    torch.testing.assert_close(paired_box_iou(a, b), torch.tensor([1 / 3, 1.0, 0.0]))


def test_resnet_keys_equal_torchvision_minus_fc():
    ours = ResNet(50, norm="bn").state_dict()
    ref = {k: v for k, v in torchvision.models.resnet50().state_dict().items() if not k.startswith("fc.")}
    assert list(ours) == list(ref)
    assert sum(p.numel() for p in ResNet(50, norm="bn").parameters()) == 23_508_032
    frozen = ResNet(50).state_dict()  # FrozenBatchNorm2d has no num_batches_tracked
    assert list(frozen) == [k for k in ref if not k.endswith("num_batches_tracked")]
    # frozen BN keeps weight / bias as buffers: the same 23,508,032 numbers, 53,120 of them not trainable
    learnable = sum(v.numel() for k, v in frozen.items() if not k.endswith(("running_mean", "running_var")))
    assert learnable == 23_508_032
    assert sum(p.numel() for p in ResNet(50).parameters()) == 23_508_032 - 53_120


def test_resnet_loads_local_torchvision_checkpoint(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)  # includes fc.* and num_batches_tracked
    model = ResNet(18, weights=str(path))
    torch.testing.assert_close(model.layer3[1].conv2.weight, reference.layer3[1].conv2.weight)
    torch.testing.assert_close(model.bn1.running_var, reference.bn1.running_var)
    # stem + layer1 frozen, the rest trainable
    assert not model.conv1.weight.requires_grad and not model.layer1[0].conv1.weight.requires_grad
    assert model.layer2[0].conv1.weight.requires_grad
    x = torch.randn(1, 3, 64, 96)
    reference.eval()
    model.eval()
    with torch.no_grad():
        expected_c5 = reference.layer4(reference.layer3(reference.layer2(reference.layer1(
            reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))))))
        c3, c4, c5 = model(x)
    assert c3.shape == (1, 128, 8, 12) and c4.shape == (1, 256, 4, 6)
    torch.testing.assert_close(c5, expected_c5)
    with pytest.raises(UserInputError, match="does not exist"):
        ResNet(18, weights=str(tmp_path / "missing.pth"))
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(UserInputError, match="do not match"):
        ResNet(18, weights=str(tmp_path / "bad.pth"))


def test_resnet_trainable_bn_of_frozen_stages_stays_in_eval():
    model = ResNet(18, norm="bn", frozen_stages=1).train()
    assert not model.bn1.training and not model.layer1[0].bn1.training
    assert model.layer2[0].bn1.training


def test_fpn_p3_to_p7_on_odd_sizes():
    backbone = TinyBackbone(widths=(8, 8, 16, 24, 32))
    neck = FPN(in_channels=backbone.out_channels, out_channels=16)
    feats = neck(backbone(torch.randn(2, 3, 97, 131)))
    assert [tuple(f.shape[-2:]) for f in feats] == [(13, 17), (7, 9), (4, 5), (2, 3), (1, 2)]
    assert all(f.shape[:2] == (2, 16) for f in feats)


def test_head_shapes_prior_and_flatten_order():
    head = DenseHead(in_channels=8, num_classes=3, num_anchors=2, num_convs=1, quality="iou", prior_prob=0.01)
    feats = [torch.randn(1, 8, 4, 5), torch.randn(1, 8, 2, 3)]
    cls, box, quality = head(feats)
    assert [c.shape for c in cls] == [(1, 6, 4, 5), (1, 6, 2, 3)]
    assert [b.shape for b in box] == [(1, 8, 4, 5), (1, 8, 2, 3)]
    assert [q.shape for q in quality] == [(1, 2, 4, 5), (1, 2, 2, 3)]
    # the classification bias starts every probability near the prior
    assert abs(torch.sigmoid(cls[0]).mean().item() - 0.01) < 0.005
    assert DenseHead(in_channels=8, num_classes=3, quality="none")(feats)[2] is None
    flat = concat_levels(cls, 3)
    assert flat.shape == (1, (20 + 6) * 2, 3)
    # prior index (y=1, x=2, a=1) of level 0 is (1*5 + 2)*2 + 1 = 15; its class 2 is channel a*C + c = 5
    assert flat[0, 15, 2] == cls[0][0, 5, 1, 2]
    assert flat[0, 40 + 3, 0] == cls[1][0, 3, 0, 1]  # level 1, (y=0, x=1, a=1): 40 + (0*3 + 1)*2 + 1
