"""The loss family: values against closed forms and plain autograd, gradient statistics, bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

from efldet.losses import (
    EQLv2FocalLoss,
    EqualizedFocalLoss,
    EqualizedQualityFocalLoss,
    FocalLoss,
    QualityFocalLoss,
    SigmoidBCELoss,
    giou_loss,
    quality_focal_loss,
    sigmoid_bce_loss,
    sigmoid_focal_loss,
)
from efldet.losses import common as loss_common
from efldet.losses.reference import reference_efl, reference_focal_family, reference_gradient_sums


def make_batch(num_rows: int = 64, num_classes: int = 5, seed: int = 0, dtype=torch.float32):
    """Logits [K, C] spread over the interesting range and labels with foreground, background and ignored rows."""
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(num_rows, num_classes, generator=gen) * 3.0).to(dtype)
    labels = torch.randint(0, num_classes + 1, (num_rows,), generator=gen)
    labels[torch.randperm(num_rows, generator=gen)[: num_rows // 8]] = -1
    kinds = torch.tensor([0, num_classes, -1])[:num_rows]           # every kind of row at least once
    labels[: kinds.numel()] = kinds
    scores = torch.rand(num_rows, generator=gen).to(dtype)
    return logits, labels, scores


def one_hot_valid(labels: torch.Tensor, num_classes: int):
    valid = labels >= 0
    targets = torch.zeros(labels.shape[0], num_classes)
    fg = valid & (labels < num_classes)
    targets[fg.nonzero().squeeze(1), labels[fg]] = 1.0
    return targets, valid, int(fg.sum())


def seeded_statistics(module, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    module.pos_grad.copy_(torch.rand(module.num_classes, generator=gen))
    module.neg_grad.copy_(torch.rand(module.num_classes, generator=gen) * 2 + 0.1)
    return module


# ------------------------------------------------------------------------------------------ values
def test_focal_equals_torchvision_on_one_hot_targets():
    logits, labels, _ = make_batch(200, 7)
    x = logits.clone().requires_grad_()
    loss = sigmoid_focal_loss(x, labels)
    loss.backward()

    targets, valid, num_fg = one_hot_valid(labels, 7)
    x_ref = logits.clone().requires_grad_()
    ref = torchvision.ops.sigmoid_focal_loss(x_ref[valid], targets[valid], alpha=0.25, gamma=2.0,
                                             reduction="sum") / num_fg
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-7)


def test_focal_with_alpha_disabled_and_other_gamma_matches_torchvision():
    logits, labels, _ = make_batch(50, 3, seed=4)
    targets, valid, num_fg = one_hot_valid(labels, 3)
    ref = torchvision.ops.sigmoid_focal_loss(logits[valid], targets[valid], alpha=-1, gamma=1.5, reduction="sum")
    torch.testing.assert_close(sigmoid_focal_loss(logits, labels, alpha=-1, gamma=1.5, normalizer=1.0), ref)
    torch.testing.assert_close(FocalLoss(alpha=-1, gamma=1.5)(logits, labels, normalizer=2.0), ref / 2)


def test_bce_matches_torch_bce():
    logits, labels, _ = make_batch(40, 4, seed=2)
    targets, valid, _ = one_hot_valid(labels, 4)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(logits[valid], targets[valid], reduction="sum")
    torch.testing.assert_close(sigmoid_bce_loss(logits, labels, normalizer=1.0), ref)
    torch.testing.assert_close(SigmoidBCELoss()(logits, labels, normalizer=1.0), ref)


def test_efl_hand_computed_value():
    """C = 2, one anchor of class 0 with logits (0, 0), g = (0.5, 1): gamma = (6, 2), weights = (3, 1)."""
    efl = EqualizedFocalLoss(num_classes=2)
    efl.pos_grad.copy_(torch.tensor([1.0, 2.0]))
    efl.neg_grad.copy_(torch.tensor([2.0, 2.0]))
    loss = efl(torch.zeros(1, 2), torch.tensor([0]))
    expected = 0.25 * 3.0 * 0.5**6 * math.log(2.0) + 0.75 * 1.0 * 0.5**2 * math.log(2.0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_quality_focal_hand_computed_value():
    """x = 0 gives p = 0.5 and BCE = log 2 for any target: one positive with IoU 0.8 plus one negative column."""
    loss = quality_focal_loss(torch.zeros(1, 2), torch.tensor([1]), torch.tensor([0.8]), beta=2.0)
    expected = (0.8 - 0.5) ** 2 * math.log(2.0) + 0.5**2 * math.log(2.0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 2.0])
def test_quality_focal_gradient_finite_when_prediction_equals_target(beta):
    """|p - t|^(beta - 1) is inf at p = t for beta < 1: the gradient there must be the subgradient 0, not NaN."""
    logits = torch.tensor([[0.7, -1.0]], requires_grad=True)
    target = torch.sigmoid(logits.detach()[:, 0])  # the positive's prediction equals its target exactly
    quality_focal_loss(logits, torch.tensor([0]), target, beta=beta).backward()
    assert torch.isfinite(logits.grad).all()
    if beta > 1.0:  # the positive's gradient is exactly 0 where p = t (both terms vanish)
        assert logits.grad[0, 0].item() == 0.0


@pytest.mark.parametrize("kind", ["efl", "efl_ff_only", "efl_wf_only", "eqfl", "eqlv2", "qfl"])
def test_losses_match_plain_autograd_reference(kind):
    num_classes = 6
    logits, labels, scores = make_batch(120, num_classes, seed=3)
    fg = int(((labels >= 0) & (labels < num_classes)).sum())
    if kind.startswith("efl"):
        module = seeded_statistics(EqualizedFocalLoss(num_classes, focusing_factor=kind != "efl_wf_only",
                                                      weighting_factor=kind != "efl_ff_only"))
        exponent, weight = module.factors()
        ref_args = dict(gamma=exponent, pos_weight=0.25 * weight, neg_weight=0.75 * weight)
        call = lambda x: module(x, labels)  # noqa: E731
    elif kind == "eqfl":
        module = seeded_statistics(EqualizedQualityFocalLoss(num_classes))
        exponent, weight = module.factors()
        ref_args = dict(gamma=exponent, pos_weight=weight, neg_weight=weight, scores=scores)
        call = lambda x: module(x, labels, scores)  # noqa: E731
    elif kind == "eqlv2":
        module = seeded_statistics(EQLv2FocalLoss(num_classes))
        pos_w, neg_w = module.weights()
        ref_args = dict(gamma=torch.full((num_classes,), 2.0), pos_weight=0.25 * pos_w, neg_weight=0.75 * neg_w)
        call = lambda x: module(x, labels)  # noqa: E731
    else:
        ones = torch.ones(num_classes)
        ref_args = dict(gamma=2 * ones, pos_weight=ones, neg_weight=ones, scores=scores)
        call = lambda x: QualityFocalLoss(beta=2.0)(x, labels, scores)  # noqa: E731

    x = logits.clone().requires_grad_()
    loss = call(x)
    loss.backward()
    x_ref = logits.clone().requires_grad_()
    ref = reference_focal_family(x_ref, labels, normalizer=float(fg), **ref_args)
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", ["focal", "bce", "qfl", "efl", "eqfl", "eqlv2"])
def test_gradcheck_float64(name):
    logits, labels, scores = make_batch(10, 4, seed=5, dtype=torch.float64)
    modules = {"efl": EqualizedFocalLoss(4), "eqfl": EqualizedQualityFocalLoss(4), "eqlv2": EQLv2FocalLoss(4)}
    calls = {
        "focal": lambda x: sigmoid_focal_loss(x, labels),
        "bce": lambda x: sigmoid_bce_loss(x, labels),
        "qfl": lambda x: quality_focal_loss(x, labels, scores),
        "efl": lambda x: seeded_statistics(modules["efl"])(x, labels),
        "eqfl": lambda x: seeded_statistics(modules["eqfl"])(x, labels, scores),
        "eqlv2": lambda x: seeded_statistics(modules["eqlv2"])(x, labels),
    }
    assert torch.autograd.gradcheck(calls[name], (logits.clone().requires_grad_(),))


@settings(max_examples=25, deadline=None)
@given(num_rows=st.integers(1, 40), num_classes=st.integers(1, 9), chunk=st.integers(1, 64),
       seed=st.integers(0, 10_000))
def test_result_does_not_depend_on_row_chunking(num_rows, num_classes, chunk, seed):
    """Chunk boundaries (with foreground and ignored rows on either side) must not change anything."""
    logits, labels, _ = make_batch(num_rows, num_classes, seed=seed)

    def run():
        efl = seeded_statistics(EqualizedFocalLoss(num_classes))
        x = logits.clone().requires_grad_()
        loss = efl(x, labels)
        loss.backward()
        return loss.detach(), x.grad, efl.pos_grad.clone(), efl.neg_grad.clone()

    whole = run()
    original = loss_common.CHUNK_ELEMENTS
    loss_common.CHUNK_ELEMENTS = chunk
    try:
        chunked = run()
    finally:
        loss_common.CHUNK_ELEMENTS = original
    for a, b in zip(whole, chunked, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)   # float32 sums in another order
    assert whole[0] >= 0


# ------------------------------------------------------------------------------------------ EFL and focal
def test_efl_equals_focal_before_any_statistics():
    logits, labels, _ = make_batch(80, 5)
    efl = EqualizedFocalLoss(5)
    assert torch.equal(efl.pos_neg_ratio, torch.ones(5))
    torch.testing.assert_close(efl(logits, labels), sigmoid_focal_loss(logits, labels), rtol=0, atol=0)


def test_efl_scale_zero_is_exactly_focal_loss_during_training():
    efl = EqualizedFocalLoss(5, scale_factor=0.0)
    for step in range(3):
        logits, labels, _ = make_batch(80, 5, seed=step)
        x1, x2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
        a, b = efl(x1, labels), sigmoid_focal_loss(x2, labels)
        a.backward()
        b.backward()
        assert torch.equal(a, b) and torch.equal(x1.grad, x2.grad)
    assert (efl.pos_neg_ratio < 1).any()   # statistics did accumulate, and still nothing changed


def test_ablation_switches_change_the_right_factor():
    efl_full = seeded_statistics(EqualizedFocalLoss(4))
    ff_only = seeded_statistics(EqualizedFocalLoss(4, weighting_factor=False))
    wf_only = seeded_statistics(EqualizedFocalLoss(4, focusing_factor=False))
    exponent, weight = efl_full.factors()
    assert (exponent >= 2).all() and (exponent > 2).any() and torch.allclose(weight, exponent / 2)
    assert torch.equal(ff_only.factors()[0], exponent) and torch.equal(ff_only.factors()[1], torch.ones(4))
    assert torch.equal(wf_only.factors()[0], torch.full((4,), 2.0)) and torch.equal(wf_only.factors()[1], weight)


# ------------------------------------------------------------------------------------------ statistics
@pytest.mark.parametrize("kind", ["efl", "eqfl", "eqlv2"])
def test_statistics_equal_summed_autograd_gradients_over_steps(kind):
    num_classes = 5
    module = {"efl": EqualizedFocalLoss(num_classes), "eqfl": EqualizedQualityFocalLoss(num_classes),
              "eqlv2": EQLv2FocalLoss(num_classes)}[kind]
    ref_pos = torch.zeros(num_classes, dtype=torch.float64)
    ref_neg = torch.zeros(num_classes, dtype=torch.float64)
    for step in range(4):
        logits, labels, scores = make_batch(96, num_classes, seed=10 + step)
        fg = float(max(int(((labels >= 0) & (labels < num_classes)).sum()), 1))
        # The reference uses the module's current factors, as the module itself does in this step.
        if kind == "eqlv2":
            pos_w, neg_w = module.weights()
            args = dict(gamma=torch.full((num_classes,), 2.0), pos_weight=0.25 * pos_w, neg_weight=0.75 * neg_w)
        else:
            exponent, weight = module.factors()
            alpha = (0.25, 0.75) if kind == "efl" else (1.0, 1.0)
            args = dict(gamma=exponent, pos_weight=alpha[0] * weight, neg_weight=alpha[1] * weight)
            if kind == "eqfl":
                args["scores"] = scores
        x_ref = logits.double().requires_grad_()
        reference_focal_family(x_ref, labels, normalizer=fg, **args).backward()
        pos, neg = reference_gradient_sums(x_ref.grad, labels)
        ref_pos += pos
        ref_neg += neg
        x = logits.clone().requires_grad_()
        (module(x, labels, scores) if kind == "eqfl" else module(x, labels)).backward()
        assert module.pos_grad.dtype == torch.float32
        torch.testing.assert_close(module.pos_grad.double(), ref_pos, rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(module.neg_grad.double(), ref_neg, rtol=1e-5, atol=1e-9)


def test_statistics_ignore_loss_scaling_and_outer_multipliers():
    logits, labels, _ = make_batch(64, 5)
    plain, scaled = EqualizedFocalLoss(5), EqualizedFocalLoss(5)
    x1, x2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    plain(x1, labels).backward()
    (scaled(x2, labels) * 1024.0).backward()          # what an AMP GradScaler or a loss weight does
    torch.testing.assert_close(plain.pos_grad, scaled.pos_grad, rtol=0, atol=0)
    torch.testing.assert_close(plain.neg_grad, scaled.neg_grad, rtol=0, atol=0)
    torch.testing.assert_close(x2.grad, x1.grad * 1024.0)


def test_statistics_independent_of_autocast_bf16_on_cpu():
    logits, labels, _ = make_batch(64, 5)
    outside, inside = EqualizedFocalLoss(5), EqualizedFocalLoss(5)
    x1, x2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    outside(x1, labels).backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = inside(x2, labels)
    assert loss.dtype == torch.float32
    loss.backward()
    assert torch.equal(outside.pos_grad, inside.pos_grad) and torch.equal(outside.neg_grad, inside.neg_grad)


def test_bf16_logits_from_an_autocast_head_give_float32_statistics():
    """A bf16 head output: the loss upcasts, returns a bf16 gradient, keeps float32 statistics."""
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 5)
    features = torch.randn(64, 8)
    _, labels, _ = make_batch(64, 5)
    efl = EqualizedFocalLoss(5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(features)
    assert logits.dtype == torch.bfloat16
    efl(logits, labels).backward()
    assert head.weight.grad is not None and torch.isfinite(head.weight.grad).all()
    reference = EqualizedFocalLoss(5)
    x = logits.detach().float().requires_grad_()
    reference(x, labels).backward()
    assert efl.pos_grad.dtype == torch.float32
    torch.testing.assert_close(efl.pos_grad, reference.pos_grad, rtol=0, atol=0)
    torch.testing.assert_close(efl.neg_grad, reference.neg_grad, rtol=0, atol=0)


def test_statistics_change_only_when_backward_runs():
    logits, labels, _ = make_batch(64, 5)
    efl = EqualizedFocalLoss(5)
    efl(logits.clone().requires_grad_(), labels)             # forward only
    with torch.no_grad():
        efl(logits, labels)
    assert efl.pos_grad.sum() == 0 and efl.neg_grad.sum() == 0
    efl(logits.clone().requires_grad_(), labels).backward()
    assert efl.pos_grad.sum() > 0 and efl.neg_grad.sum() > 0


def test_ignored_rows_contribute_nothing():
    logits, labels, _ = make_batch(64, 5)
    extra = torch.randn(10, 5) * 50.0                         # wild logits on ignored rows
    all_logits = torch.cat([logits, extra])
    all_labels = torch.cat([labels, torch.full((10,), -1)])
    a, b = EqualizedFocalLoss(5), EqualizedFocalLoss(5)
    x1, x2 = logits.clone().requires_grad_(), all_logits.clone().requires_grad_()
    loss1, loss2 = a(x1, labels), b(x2, all_labels)
    loss1.backward()
    loss2.backward()
    torch.testing.assert_close(loss1, loss2)
    torch.testing.assert_close(x2.grad[:64], x1.grad)
    assert torch.equal(x2.grad[64:], torch.zeros(10, 5))
    torch.testing.assert_close(a.pos_grad, b.pos_grad)
    torch.testing.assert_close(a.neg_grad, b.neg_grad)


def test_statistics_are_buffers_saved_and_restored():
    efl = EqualizedFocalLoss(5)
    logits, labels, _ = make_batch(64, 5)
    efl(logits.clone().requires_grad_(), labels).backward()
    state = efl.state_dict()
    assert set(state) == {"pos_grad", "neg_grad"}
    restored = EqualizedFocalLoss(5)
    restored.load_state_dict(state)
    assert torch.equal(restored.pos_neg_ratio, efl.pos_neg_ratio)
    torch.testing.assert_close(restored(logits, labels), efl(logits, labels), rtol=0, atol=0)
    assert (efl.pos_neg_ratio < 1).any() and (efl.pos_neg_ratio >= 0).all()


def test_eqlv2_weights_follow_eq7():
    eqlv2 = EQLv2FocalLoss(3)
    pos_w, neg_w = eqlv2.weights()
    assert torch.equal(pos_w, torch.ones(3)) and torch.equal(neg_w, torch.ones(3))   # no statistics yet
    eqlv2.pos_grad.copy_(torch.tensor([0.0, 0.8, 2.0]))
    eqlv2.neg_grad.copy_(torch.tensor([1.0, 1.0, 1.0]))
    pos_w, neg_w = eqlv2.weights()
    f = 1 / (1 + torch.exp(-12.0 * (torch.tensor([0.0, 0.8, 2.0]) - 0.8)))
    torch.testing.assert_close(neg_w, f)
    torch.testing.assert_close(pos_w, 1 + 4.0 * (1 - f))
    assert neg_w[1].item() == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------ box loss
def test_giou_loss_weighted_and_empty():
    pred = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]], requires_grad=True)
    target = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0]])
    # Box 2: IoU = 50 / 150, enclosing box area 150 = union, so GIoU = IoU = 1/3 and the loss term is 2/3.
    loss = giou_loss(pred, target, weight=torch.tensor([1.0, 0.5]), normalizer=2.0)
    assert loss.item() == pytest.approx(0.5 * (2.0 / 3.0) / 2.0, rel=1e-6)
    loss.backward()
    assert pred.grad is not None
    empty = torch.zeros(0, 4, requires_grad=True)
    zero = giou_loss(empty, torch.zeros(0, 4))
    zero.backward()
    assert zero.item() == 0.0 and empty.grad.shape == (0, 4)


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("call, message", [
    (lambda: sigmoid_focal_loss(torch.zeros(4, 3, 2), torch.zeros(4, dtype=torch.long)), "shape \\[K, C\\]"),
    (lambda: sigmoid_focal_loss(torch.zeros(4, 3), torch.zeros(5, dtype=torch.long)), "labels must have shape"),
    (lambda: sigmoid_focal_loss(torch.zeros(4, 3), torch.tensor([0, 1, 4, 2])), "\\[-1, 3\\]"),
    (lambda: sigmoid_focal_loss(torch.zeros(4, 3), torch.tensor([0, 1, -2, 2])), "got values in \\[-2, 2\\]"),
    (lambda: sigmoid_focal_loss(torch.zeros(4, 3), torch.zeros(4, dtype=torch.int32)), "int64"),
    (lambda: EqualizedFocalLoss(5)(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long)), "num_classes = 5"),
    (lambda: EqualizedQualityFocalLoss(3)(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long)), "scores"),
    (lambda: quality_focal_loss(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), torch.full((4,), 2.0)),
     "\\[0, 1\\]"),
    (lambda: EqualizedFocalLoss(3)(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), torch.zeros(4)),
     "takes no `scores`"),
    (lambda: sigmoid_focal_loss(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), normalizer=0), "positive"),
    (lambda: EqualizedFocalLoss(0), "num_classes"),
    (lambda: giou_loss(torch.zeros(3, 4), torch.zeros(2, 4)), "\\[P, 4\\]"),
])
def test_bad_input_raises_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_second_backward_through_non_leaf_logits_is_a_clear_error():
    logits, labels, _ = make_batch(16, 3)
    x = logits.clone().requires_grad_()
    loss = sigmoid_focal_loss(x * 2.0, labels)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="retain_graph"):
        loss.backward()


def test_reference_efl_agrees_with_module():
    logits, labels, _ = make_batch(64, 5)
    efl = seeded_statistics(EqualizedFocalLoss(5))
    torch.testing.assert_close(efl(logits, labels), reference_efl(logits, labels, efl.pos_neg_ratio))
