"""SimOTA (hand-made cases, a direct reference, properties) and the YOLOX detector's train/eval contract."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from efldet.errors import UserInputError
from efldet.losses import EqualizedFocalLoss, QualityFocalLoss
from efldet.models import DenseHead, TinyBackbone
from efldet.models.assigners.simota import (
    YOLOXScores,
    dynamic_k_matching,
    simota_assign,
    simota_candidates,
    simota_cost,
)
from efldet.models.yolox import SoftTargetBCELoss, YOLOXDetector

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster (conftest)


def grid(size: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell centres [size*size, 2] (y-major) of a size x size grid and their strides [size*size]."""
    centers = (torch.arange(size, dtype=torch.float32) + 0.5) * stride
    yy, xx = torch.meshgrid(centers, centers, indexing="ij")
    points = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)
    return points, torch.full((points.shape[0],), float(stride))


def boxes_around(points: torch.Tensor, half: float) -> torch.Tensor:
    """Square boxes of half side `half` centred on `points` [K, 2] -> [K, 4]."""
    return torch.cat([points - half, points + half], dim=1)


# ------------------------------------------------------------------------------------- dynamic-k matching
def test_dynamic_k_is_the_integer_part_of_the_top10_iou_sum_and_costs_choose():
    # IoUs 0.9 + 0.8 + 0.7 + 0.6 + 0.5 = 3.5 -> k = 3; the 3 cheapest win, not the 3 best IoUs.
    ious = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5, 0.0]])
    cost = torch.tensor([[5.0, 4.0, 3.0, 0.1, 0.2, 0.3]])
    assert dynamic_k_matching(cost, ious).tolist() == [-1, -1, -1, 0, 0, 0]
    # IoUs all 0 -> k = max(1, 0) = 1.
    assert dynamic_k_matching(cost, torch.zeros(1, 6)).tolist() == [-1, -1, -1, 0, -1, -1]
    # 12 candidates of IoU 0.95: only the top 10 count (9.5) -> k = 9, not 11.
    owner = dynamic_k_matching(torch.arange(12.0)[None], torch.full((1, 12), 0.95))
    assert owner.tolist() == [0] * 9 + [-1] * 3
    # fewer candidates than 10: 3 x 0.9 = 2.7 -> k = 2.
    assert dynamic_k_matching(torch.tensor([[2.0, 1.0, 3.0]]), torch.full((1, 3), 0.9)).tolist() == [0, 0, -1]


def test_a_point_claimed_by_two_gts_goes_to_the_cheaper():
    ious = torch.tensor([[0.9, 0.9, 0.1, 0.1], [0.6, 0.0, 0.0, 0.0]])  # k = 2 and k = 1
    cost = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.5, 5.0, 6.0, 7.0]])
    assert dynamic_k_matching(cost, ious).tolist() == [1, 0, -1, -1]
    cost[1, 0] = 1.5  # now GT 0 is cheaper on point 0
    assert dynamic_k_matching(cost, ious).tolist() == [0, 0, -1, -1]
    cost[1, 0] = 1.0  # equal costs: the lower GT index
    assert dynamic_k_matching(cost, ious).tolist() == [0, 0, -1, -1]


def test_equal_costs_pick_the_lower_index_and_nan_costs_come_last():
    assert dynamic_k_matching(torch.ones(1, 5), torch.full((1, 5), 0.5)).tolist() == [0, 0, -1, -1, -1]
    cost = torch.tensor([[float("nan"), 1.0, 2.0]])
    assert dynamic_k_matching(cost, torch.tensor([[0.6, 0.5, 0.0]])).tolist() == [-1, 0, -1]


# ------------------------------------------------------------------------------------- hand-made scenes
def test_one_gt_gets_its_obvious_best_points():
    points, strides = grid(8, 8)  # centres 4, 12, ..., 60
    gt = torch.tensor([[16.0, 16.0, 48.0, 48.0]])
    best = [3 * 8 + 3, 3 * 8 + 4, 4 * 8 + 3, 4 * 8 + 4]  # the four cells around the GT centre (32, 32)
    pred = boxes_around(points, 1.0)  # tiny boxes: IoU ~0 with the GT
    pred[best] = gt
    scores = torch.full((64, 3), 0.1)
    scores[best, 2] = 0.9
    assigned, iou = simota_assign(points, strides, pred, scores, gt, torch.tensor([2]))
    assert sorted((assigned >= 0).nonzero().squeeze(1).tolist()) == sorted(best)  # sum of IoUs 4 -> k = 4
    assert (assigned[best] == 0).all() and (assigned >= -1).all()
    assert torch.allclose(iou[best], torch.ones(4)) and iou.sum() == pytest.approx(4.0)


def test_dynamic_k_is_capped_at_10_and_prefers_points_in_box_and_centre():
    points, strides = grid(10, 8)
    gt = torch.tensor([[4.0, 4.0, 76.0, 76.0]])  # centre (40, 40): centre region |x - 40| < 20
    pred = gt.expand(100, 4).clone()  # every prediction is the GT: IoU 1 -> top-10 sum 10 -> k = 10
    scores = torch.full((100, 2), 0.5)
    assigned, iou = simota_assign(points, strides, pred, scores, gt, torch.tensor([0]))
    positive = assigned == 0
    assert int(positive.sum()) == 10
    in_box, in_center = simota_candidates(points, strides, gt)
    assert (in_box[0] & in_center[0])[positive].all()
    # equal costs: the lowest point indices of the in-box-and-centre set win
    both = (in_box[0] & in_center[0]).nonzero().squeeze(1)
    assert positive.nonzero().squeeze(1).tolist() == both[:10].tolist()
    assert torch.allclose(iou[positive], torch.ones(10))


def test_two_overlapping_gts_share_a_point_by_class_score():
    points, strides = grid(8, 8)
    gts = torch.tensor([[8.0, 8.0, 40.0, 40.0], [24.0, 24.0, 56.0, 56.0]])
    labels = torch.tensor([0, 1])
    shared = 3 * 8 + 3  # centre (28, 28): inside both boxes and both centre regions
    pred = boxes_around(points, 1.0)
    pred[shared] = torch.tensor([16.0, 16.0, 48.0, 48.0])  # same IoU (9/23... ) with both GTs
    scores = torch.full((64, 2), 0.5)
    scores[shared] = torch.tensor([0.05, 0.95])  # class 1 much cheaper
    assigned, _ = simota_assign(points, strides, pred, scores, gts, labels)
    assert assigned[shared] == 1
    scores[shared] = torch.tensor([0.95, 0.05])
    assigned, _ = simota_assign(points, strides, pred, scores, gts, labels)
    assert assigned[shared] == 0


def test_no_gt_means_all_background():
    points, strides = grid(4, 8)
    assigned, iou = simota_assign(points, strides, boxes_around(points, 4.0), torch.rand(16, 5),
                                  torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))
    assert assigned.dtype == torch.int64 and (assigned == -1).all() and (iou == 0).all()


def test_gt_smaller_than_a_stride_still_gets_a_positive():
    points, strides = grid(8, 8)
    gt = torch.tensor([[29.0, 29.0, 31.0, 31.0]])  # 2 px: no cell centre inside it
    in_box, in_center = simota_candidates(points, strides, gt)
    assert not in_box.any() and in_center.any()
    assigned, _ = simota_assign(points, strides, boxes_around(points, 2.0), torch.full((64, 1), 0.3), gt,
                                torch.tensor([0]))
    positive = (assigned == 0).nonzero().squeeze(1)
    assert positive.numel() == 1  # IoUs are ~0 -> k = 1
    assert in_center[0, positive].all()


def test_fewer_than_10_candidates():
    points, strides = grid(2, 8)  # 4 points
    gt = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    assigned, iou = simota_assign(points, strides, gt.expand(4, 4), torch.full((4, 3), 0.5), gt,
                                  torch.tensor([1]))
    assert assigned.tolist() == [0, 0, 0, 0] and torch.allclose(iou, torch.ones(4))  # IoU sum 4 -> k = 4


def test_gt_outside_every_candidate_region_gets_nothing():
    points, strides = grid(4, 8)
    gt = torch.tensor([[200.0, 200.0, 220.0, 220.0]])
    assigned, _ = simota_assign(points, strides, boxes_around(points, 4.0), torch.rand(16, 2), gt,
                                torch.tensor([0]))
    assert (assigned == -1).all()


def test_bad_shapes_raise_user_input_error():
    points, strides = grid(2, 8)
    with pytest.raises(UserInputError, match="pred_boxes"):
        simota_assign(points, strides, torch.zeros(3, 4), torch.rand(4, 2), torch.zeros(1, 4), torch.tensor([0]))
    with pytest.raises(UserInputError, match="gt_labels"):
        simota_assign(points, strides, torch.zeros(4, 4), torch.rand(4, 2), torch.zeros(2, 4), torch.tensor([0]))


# ------------------------------------------------------------------------------------- references
def yolox_style_cost(points, strides, pred, scores, gts, labels, radius=2.5):
    """The cost written out directly: full [M, K, C] BCE over all points, float64, in-box / in-centre by loops."""
    m, k = gts.shape[0], points.shape[0]
    in_box = torch.zeros(m, k, dtype=torch.bool)
    in_center = torch.zeros(m, k, dtype=torch.bool)
    for i in range(m):
        x1, y1, x2, y2 = gts[i].tolist()
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        for j in range(k):
            x, y, r = points[j, 0].item(), points[j, 1].item(), radius * strides[j].item()
            in_box[i, j] = min(x - x1, y - y1, x2 - x, y2 - y) > 0
            in_center[i, j] = cx - r < x < cx + r and cy - r < y < cy + r
    cand = (in_box | in_center).any(0).nonzero().squeeze(1)
    one_hot = F.one_hot(labels, scores.shape[1]).double()  # [M, C]
    probs = scores[cand].double()  # [Q, C]
    bce = F.binary_cross_entropy(probs[None].expand(m, -1, -1), one_hot[:, None].expand(-1, cand.numel(), -1),
                                 reduction="none").sum(-1)  # [M, Q]
    lt = torch.maximum(gts[:, None, :2], pred[cand][None, :, :2]).double()
    rb = torch.minimum(gts[:, None, 2:], pred[cand][None, :, 2:]).double()
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_g = (gts[:, 2:] - gts[:, :2]).prod(-1).double()[:, None]
    area_p = (pred[cand, 2:] - pred[cand, :2]).prod(-1).double()[None, :]
    ious = inter / (area_g + area_p - inter)
    both = in_box[:, cand] & in_center[:, cand]
    cost = bce + 3.0 * -torch.log(ious + 1e-8) + 1e5 * (~both).double()
    return cand, cost, ious


def reference_matching(cost, ious, topk=10):
    """Dynamic-k matching one GT at a time (stable sort: equal costs -> lower index). Returns (owner [Q], the
    points each GT selected before conflicts were resolved)."""
    m, q = cost.shape
    selected = []
    for i in range(m):
        k = max(1, int(ious[i].sort(descending=True).values[: min(topk, q)].sum()))
        selected.append(set(torch.sort(cost[i], stable=True).indices[:k].tolist()))
    owner = [-1] * q
    for j in range(q):
        selectors = [i for i in range(m) if j in selected[i]]
        if len(selectors) == 1:
            owner[j] = selectors[0]
        elif len(selectors) > 1:
            owner[j] = min(range(m), key=lambda i: (cost[i, j].item(), i))
    return owner, selected


def random_scene(seed: int, num_gt: int, num_classes: int = 4):
    """Two levels (strides 8 and 16) over a 64 px image, random predictions and GT boxes."""
    gen = torch.Generator().manual_seed(seed)
    p8, s8 = grid(8, 8)
    p16, s16 = grid(4, 16)
    points, strides = torch.cat([p8, p16]), torch.cat([s8, s16])
    k = points.shape[0]
    half = 0.5 * strides[:, None] * torch.exp(torch.randn(k, 2, generator=gen) * 0.7)
    shift = torch.randn(k, 2, generator=gen) * strides[:, None] * 0.5
    pred = torch.cat([points + shift - half, points + shift + half], dim=1)
    scores = torch.rand(k, num_classes, generator=gen) * 0.98 + 0.01
    xy = torch.rand(num_gt, 2, generator=gen) * 56
    wh = torch.rand(num_gt, 2, generator=gen) * 40 + 1
    gts = torch.cat([xy, xy + wh], dim=1)
    labels = torch.randint(num_classes, (num_gt,), generator=gen)
    # many points near a GT predict it well (jittered), so that dynamic k spans 1..10
    for i in range(num_gt):
        near = ((points - (gts[i, :2] + gts[i, 2:]) / 2).abs().amax(1) < 2.5 * strides)
        near &= torch.rand(k, generator=gen) < 0.7
        pred[near] = gts[i] + torch.randn(int(near.sum()), 4, generator=gen) * 2
    return points, strides, pred, scores, gts, labels


def test_cost_matches_the_direct_yolox_formula():
    points, strides, pred, scores, gts, labels = random_scene(3, num_gt=4)
    cand, cost, ious = simota_cost(points, strides, pred, scores, gts, labels)
    ref_cand, ref_cost, ref_ious = yolox_style_cost(points, strides, pred, scores, gts, labels)
    assert cand.tolist() == ref_cand.tolist() and cand.numel() > 10
    assert torch.allclose(ious.double(), ref_ious, atol=1e-6)
    inside = ref_cost < 1e4  # the in-box-and-centre pairs; the others carry 1e5 (float32 steps of 1/128)
    assert inside.any() and (~inside).any()
    assert torch.allclose(cost.double()[inside], ref_cost[inside], rtol=1e-5, atol=1e-3)
    assert torch.allclose(cost.double()[~inside], ref_cost[~inside], rtol=1e-6, atol=0.02)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), num_gt=st.integers(0, 6))
def test_simota_properties(seed, num_gt):
    points, strides, pred, scores, gts, labels = random_scene(seed, num_gt)
    assigned, iou = simota_assign(points, strides, pred, scores, gts, labels)
    assert assigned.shape == (points.shape[0],) and assigned.dtype == torch.int64
    assert ((assigned >= -1) & (assigned < num_gt)).all()  # one GT (or none) per point by construction
    if num_gt == 0:
        assert (assigned == -1).all()
        return
    cand, cost, ious = simota_cost(points, strides, pred, scores, gts, labels)
    positive = (assigned >= 0).nonzero().squeeze(1)
    assert set(positive.tolist()) <= set(cand.tolist())  # positives are candidates
    assert (iou[assigned < 0] == 0).all()
    for j in positive.tolist():
        x1 = torch.maximum(pred[j, :2], gts[assigned[j], :2])
        x2 = torch.minimum(pred[j, 2:], gts[assigned[j], 2:])
        inter = (x2 - x1).clamp(min=0).prod()
        union = (pred[j, 2:] - pred[j, :2]).prod() + (gts[assigned[j], 2:] - gts[assigned[j], :2]).prod() - inter
        assert iou[j].item() == pytest.approx((inter / union).item(), abs=1e-5)
    owner, selected = reference_matching(cost, ious)
    slot = {p: s for s, p in enumerate(cand.tolist())}
    assert [assigned[p].item() for p in cand.tolist()] == owner  # same result as the direct loop
    shared = set()
    for i in range(num_gt):
        for other in range(i + 1, num_gt):
            shared |= selected[i] & selected[other]
    if cand.numel() > 0:
        assert positive.numel() >= 1
    for i in range(num_gt):
        assert 1 <= len(selected[i]) <= min(10, cand.numel())  # dynamic k in [1, 10]
        if not (selected[i] & shared):  # nothing contested: the GT keeps all its k points
            won = {slot[p] for p in (assigned == i).nonzero().squeeze(1).tolist()}
            assert selected[i] <= won and 1 <= len(selected[i]) <= 10
    for j in shared:  # contested points go to the cheapest GT
        assert owner[j] == int(torch.argmin(cost[:, j]))


def test_lazy_yolox_scores_give_the_same_assignment(monkeypatch):
    points, strides, pred, _, gts, labels = random_scene(7, num_gt=5, num_classes=6)
    gen = torch.Generator().manual_seed(1)
    cls, obj = torch.randn(points.shape[0], 6, generator=gen), torch.randn(points.shape[0], generator=gen)
    dense = (torch.sigmoid(cls) * torch.sigmoid(obj)[:, None]).sqrt()
    lazy = YOLOXScores(cls, obj)
    assert torch.allclose(lazy[torch.tensor([3, 0, 70])], dense[[3, 0, 70]])
    expected = simota_assign(points, strides, pred, dense, gts, labels)
    # tiny row chunks: the chunked cost must not depend on the chunk size
    monkeypatch.setattr("efldet.losses.common.CHUNK_ELEMENTS", 6 * 7)
    result = simota_assign(points, strides, pred, lazy, gts, labels)
    assert torch.equal(result[0], expected[0]) and torch.allclose(result[1], expected[1])
    assert (expected[0] >= 0).sum() > 5


# ------------------------------------------------------------------------------------- the detector
class TinyNeck(nn.Module):
    """[C3, C4, C5] -> three maps of `channels` (1x1 convs), strides 8, 16, 32 like YOLOX's PAFPN."""

    def __init__(self, in_channels, channels):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)

    def forward(self, feats):
        return [conv(f) for conv, f in zip(self.convs, feats, strict=True)]


def tiny_yolox(num_classes: int = 3, **kwargs) -> YOLOXDetector:
    backbone = TinyBackbone(widths=(8, 8, 8, 8, 8))
    head = DenseHead(in_channels=8, num_classes=num_classes, num_anchors=1, num_convs=1, norm_groups=0,
                     quality="iou", prior_prob=0.01, num_levels=3)
    return YOLOXDetector(backbone=backbone, neck=TinyNeck(backbone.out_channels, 8), head=head,
                         num_classes=num_classes, strides=(8, 16, 32), **kwargs)


def target(boxes, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64)}


TARGETS = [target([[10, 20, 60, 80], [70, 5, 120, 40]], [1, 2]), target([[3, 3, 40, 50]], [0])]


@pytest.mark.parametrize("use_l1", [False, True])
def test_yolox_training_step(use_l1):
    torch.manual_seed(0)
    model = tiny_yolox(use_l1=use_l1).train()
    losses = model(torch.randn(2, 3, 96, 128), TARGETS, image_sizes=[(96, 128), (90, 120)])
    assert set(losses) == {"loss_cls", "loss_obj", "loss_iou", "loss_l1"}
    for value in losses.values():
        assert value.dim() == 0 and torch.isfinite(value) and value.requires_grad
    assert losses["loss_cls"] > 0 and losses["loss_obj"] > 0 and losses["loss_iou"] > 0
    assert (losses["loss_l1"] > 0) == use_l1
    sum(losses.values()).backward()
    for param in (model.head.cls_logits.weight, model.head.box_reg.weight, model.head.quality_logits.weight,
                  model.backbone.stages[0][0][0].weight):
        assert torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0


def test_yolox_losses_by_hand():
    """Objectness BCE over all points, cls BCE with target IoU on positives, 5 (1 - IoU^2), L1 on raw outputs."""
    torch.manual_seed(1)
    model = tiny_yolox(use_l1=True).train()
    images = torch.randn(1, 3, 64, 64)
    targets = [target([[8, 8, 40, 48]], [2])]
    feats = model.features(images)
    cls, box_reg, obj = model.predict_raw(feats)
    priors = model.priors(feats)
    matched, matched_iou = model.assign(priors, targets, cls, box_reg, obj)
    losses = model.compute_losses(cls, box_reg, obj, priors, matched, matched_iou, targets)
    pos = (matched[0] >= 0).nonzero().squeeze(1)
    p = pos.numel()
    assert p >= 1
    strides = torch.cat([torch.full((pr.shape[0],), float(s)) for pr, s in zip(priors, (8, 16, 32), strict=True)])
    corners = torch.cat(priors)
    gt = targets[0]["boxes"][0]
    obj_ref = F.binary_cross_entropy_with_logits(obj[0], (matched[0] >= 0).float(), reduction="sum") / p
    cls_target = torch.zeros(p, 3)
    cls_target[:, 2] = matched_iou[0, pos]
    cls_ref = F.binary_cross_entropy_with_logits(cls[0, pos], cls_target, reduction="sum") / p
    reg = box_reg[0, pos]
    ctr = corners[pos] + reg[:, :2] * strides[pos, None]
    wh = torch.exp(reg[:, 2:]) * strides[pos, None]
    boxes = torch.cat([ctr - wh / 2, ctr + wh / 2], 1)
    lt, rb = torch.maximum(boxes[:, :2], gt[:2]), torch.minimum(boxes[:, 2:], gt[2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    ious = inter / ((boxes[:, 2:] - boxes[:, :2]).prod(1) + (gt[2:] - gt[:2]).prod() - inter)
    iou_ref = 5 * (1 - ious**2).sum() / p
    assert torch.allclose(matched_iou[0, pos], ious.detach(), atol=1e-5)  # SimOTA's IoU = this step's IoU
    gt_ctr, gt_wh = (gt[:2] + gt[2:]) / 2, gt[2:] - gt[:2]
    l1_target = torch.cat([(gt_ctr - corners[pos]) / strides[pos, None],
                           torch.log(gt_wh / strides[pos, None] + 1e-8)], 1)
    l1_ref = (reg - l1_target).abs().sum() / p
    for name, ref in [("loss_obj", obj_ref), ("loss_cls", cls_ref), ("loss_iou", iou_ref), ("loss_l1", l1_ref)]:
        assert losses[name].item() == pytest.approx(ref.item(), rel=1e-5), name


def test_yolox_with_pluggable_cls_losses_and_empty_targets():
    images = torch.randn(2, 3, 64, 64)
    empty = target([], [])
    for cls_loss, positives_only in [(EqualizedFocalLoss(num_classes=3, scale_factor=4.0), False),
                                     (EqualizedFocalLoss(num_classes=3, scale_factor=4.0), True),
                                     (QualityFocalLoss(beta=2.0), True), (SoftTargetBCELoss(), False)]:
        torch.manual_seed(0)
        model = tiny_yolox(cls_loss=cls_loss, cls_positives_only=positives_only).train()
        assert model.cls_loss is cls_loss
        for targets in ([TARGETS[1], empty], [empty, empty]):
            losses = model(images, targets)
            assert all(torch.isfinite(v) for v in losses.values())
            sum(losses.values()).backward()
            assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
            model.zero_grad()
        assert losses["loss_iou"].item() == 0.0 and losses["loss_obj"] > 0
    efl = EqualizedFocalLoss(num_classes=3)
    model = tiny_yolox(cls_loss=efl, cls_positives_only=False).train()
    sum(model(images, [TARGETS[1], empty]).values()).backward()
    assert efl.neg_grad.sum() > 0 and efl.pos_grad[0] > 0  # statistics collected through model.cls_loss


def test_soft_target_bce_equals_quality_focal_loss_with_beta_0():
    torch.manual_seed(0)
    logits = torch.randn(6, 4)
    labels = torch.tensor([0, 3, 4, 2, -1, 4])
    scores = torch.rand(6)
    ours = SoftTargetBCELoss()(logits, labels, scores=scores, normalizer=3.0)
    qfl = QualityFocalLoss(beta=0.0)(logits, labels, scores=scores, normalizer=3.0)
    assert ours.item() == pytest.approx(qfl.item(), rel=1e-6)
    # a probability equal to its target has a finite gradient here
    x = torch.zeros(1, 2, requires_grad=True)
    SoftTargetBCELoss()(x, torch.tensor([0]), scores=torch.tensor([0.5])).backward()
    assert torch.isfinite(x.grad).all() and x.grad[0, 0] == 0


def test_yolox_eval_contract():
    torch.manual_seed(0)
    model = tiny_yolox().eval()
    model.test_score_thresh = 0.0
    with torch.no_grad():
        detections = model(torch.randn(2, 3, 97, 131), image_sizes=[(97, 131), (60, 50)])
    assert len(detections) == 2
    for det, (h, w) in zip(detections, [(97, 131), (60, 50)], strict=True):
        assert set(det) == {"boxes", "scores", "labels"}
        assert det["boxes"].dtype == torch.float32 and det["labels"].dtype == torch.int64
        assert 0 < det["boxes"].shape[0] <= 300
        assert det["boxes"][:, 0::2].min() >= 0 and det["boxes"][:, 0::2].max() <= w
        assert det["boxes"][:, 1::2].min() >= 0 and det["boxes"][:, 1::2].max() <= h
        assert ((det["labels"] >= 0) & (det["labels"] < 3)).all()
        assert (det["scores"][:-1] >= det["scores"][1:]).all()


def test_yolox_decoding():
    model = tiny_yolox()
    corners = torch.tensor([[16.0, 8.0]])
    box = model.decode(corners, torch.tensor([[0.5, 0.25, 0.0, math.log(2.0)]]), torch.tensor([8.0]))
    # centre (16 + 0.5 x 8, 8 + 0.25 x 8) = (20, 10), size (8, 16)
    assert torch.allclose(box, torch.tensor([[16.0, 2.0, 24.0, 18.0]]))


def test_yolox_input_errors():
    model = tiny_yolox().train()
    with pytest.raises(UserInputError, match="needs targets"):
        model(torch.randn(1, 3, 64, 64))
    with pytest.raises(UserInputError, match="outside 0..2"):
        model(torch.randn(1, 3, 64, 64), [target([[1, 1, 5, 5]], [3])])
    with pytest.raises(UserInputError, match="predictions"):
        model.assign(model.priors(model.features(torch.randn(1, 3, 64, 64))), [target([], [])])
    head = DenseHead(in_channels=8, num_classes=3, num_convs=1, quality="none", num_levels=3)
    with pytest.raises(UserInputError, match="objectness"):
        YOLOXDetector(backbone=nn.Identity(), neck=nn.Identity(), head=head, num_classes=3)
