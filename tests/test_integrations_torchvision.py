"""EFL inside torchvision's RetinaNet and FCOS: focal loss through the integration equals torchvision's own loss,
EFL trains, accumulates its statistics and keeps them in the state dict, and bad labels / sizes are refused."""

from __future__ import annotations

import copy

import pytest
import torch
from torchvision.models.detection import fcos_resnet50_fpn, retinanet_resnet50_fpn

from efldet.errors import UserInputError
from efldet.integrations.torchvision import use_efldet_loss
from efldet.losses import EQLv2FocalLoss, EqualizedFocalLoss, FocalLoss

NUM_CLASSES = 6  # torchvision's count: background 0 + foreground labels 1..5
STATS_KEY = {"retinanet": "head.classification_head.cls_loss", "fcos": "head.cls_loss"}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster (conftest)


def build(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    make = retinanet_resnet50_fpn if kind == "retinanet" else fcos_resnet50_fpn
    model = make(weights=None, weights_backbone=None, num_classes=NUM_CLASSES, min_size=64, max_size=64)
    model.backbone.body.requires_grad_(False)  # the ResNet stays fixed (speed); FPN and head train
    return model


def batch(seed: int = 0) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Two 64 px images with a long-tailed label set: label 1 in every box but one, label 4 once."""
    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, 64, 64, generator=g) for _ in range(2)]
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 36.0, 40.0], [30.0, 28.0, 60.0, 62.0]]), "labels": torch.tensor([1, 4])},
        {"boxes": torch.tensor([[10.0, 8.0, 50.0, 44.0], [2.0, 40.0, 26.0, 62.0]]), "labels": torch.tensor([1, 1])},
    ]
    return images, targets


@pytest.mark.parametrize("kind", ["retinanet", "fcos"])
def test_focal_loss_through_the_integration_equals_torchvision_loss(kind):
    stock = build(kind)
    ours = use_efldet_loss(copy.deepcopy(stock), FocalLoss())
    images, targets = batch()
    expected, got = stock(images, targets), ours(images, targets)
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["retinanet", "fcos"])
def test_efl_trains_accumulates_statistics_and_keeps_them_in_the_state_dict(kind):
    model = build(kind)
    torchvision_keys = set(model.state_dict())
    use_efldet_loss(model, EqualizedFocalLoss(num_classes=NUM_CLASSES - 1))
    fresh = copy.deepcopy(model)
    efl = model.get_submodule(STATS_KEY[kind])
    assert torch.equal(efl.pos_neg_ratio, torch.ones(NUM_CLASSES - 1))  # g_j = 1 before training: focal loss
    optimizer = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9)
    images, targets = batch()
    model.train()
    losses = []
    for _ in range(3):
        loss_dict = model(images, targets)
        loss = sum(loss_dict.values())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        losses.append(loss_dict["classification"].item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    ratio = efl.pos_neg_ratio
    # label l of torchvision is statistic l - 1: labels 1 and 4 had positives (g_j > 0), 2, 3 and 5 none (g_j = 0
    # < 1: EFL focuses harder on them); every class saw negatives
    assert (ratio[[0, 3]] > 0).all() and (ratio[[1, 2, 4]] == 0).all() and (ratio <= 1).all()
    assert (efl.neg_grad > 0).all() and (efl.pos_grad[[0, 3]] > 0).all()
    state = model.state_dict()
    prefix = STATS_KEY[kind]
    assert torch.equal(state[f"{prefix}.pos_grad"], efl.pos_grad) and state[f"{prefix}.neg_grad"].sum() > 0
    # the statistics travel with the state dict into a fresh model; torchvision's keys are unchanged
    assert fresh.get_submodule(prefix).pos_grad.sum() == 0
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.get_submodule(prefix).pos_neg_ratio, ratio)
    assert set(state) - {f"{prefix}.pos_grad", f"{prefix}.neg_grad"} == torchvision_keys
    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2 and {"boxes", "scores", "labels"} <= set(detections[0])


def test_eqlv2_focal_without_background_channel_sees_every_channel():
    model = use_efldet_loss(build("retinanet"), EQLv2FocalLoss(num_classes=NUM_CLASSES), background_channel=False)
    images, targets = batch()
    targets[0]["labels"] = torch.tensor([0, 4])  # label 0 is a foreground class here
    model(images, targets)["classification"].backward()
    pos_grad = model.head.classification_head.cls_loss.pos_grad
    assert (pos_grad[[0, 1, 4]] > 0).all() and (pos_grad[[2, 3, 5]] == 0).all()


def test_wrong_classes_and_labels_are_refused():
    with pytest.raises(UserInputError, match="num_classes=5"):
        use_efldet_loss(build("fcos"), EqualizedFocalLoss(num_classes=NUM_CLASSES))
    model = use_efldet_loss(build("retinanet"), EqualizedFocalLoss(num_classes=NUM_CLASSES - 1))
    with pytest.raises(UserInputError, match="already uses"):
        use_efldet_loss(model, FocalLoss())
    images, targets = batch()
    targets[1]["labels"] = torch.tensor([0, 1])
    with pytest.raises(UserInputError, match="label 0, the background"):
        model(images, targets)
    targets[1]["labels"] = torch.tensor([1, NUM_CLASSES])
    with pytest.raises(UserInputError, match="must be in 0..5"):
        model(images, targets)
    with pytest.raises(UserInputError, match="RetinaNet and FCOS"):
        use_efldet_loss(torch.nn.Linear(2, 2), FocalLoss())
