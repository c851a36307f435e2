"""PAA: the batched EM against scikit-learn, the assignment against a per-GT loop, hand cases, score voting, and
the PAADetector's train / eval contract with focal loss and EFL."""

import math
import warnings

import numpy as np
import pytest
import torch
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from efldet.errors import UserInputError
from efldet.losses import EqualizedFocalLoss, FocalLoss
from efldet.models import AnchorGenerator, DenseHead, TinyBackbone, max_iou_assign, postprocess_detections
from efldet.models.assigners.paa import fit_two_component_gmm, gmm_predict, paa_anchor_scores, paa_assign
from efldet.models.necks import FPN
from efldet.models.paa import PAADetector
from efldet.models.postprocess import score_voting

skm = pytest.importorskip("sklearn.mixture")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster (conftest)


def sklearn_gmm(samples: np.ndarray):
    """PAA's reference fit: sklearn's GaussianMixture initialised at (min, max), weights 0.5, precisions 1."""
    gmm = skm.GaussianMixture(
        2, means_init=[[samples.min()], [samples.max()]], weights_init=[0.5, 0.5],
        precisions_init=[[[1.0]], [[1.0]]], init_params="random_from_data", random_state=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning on degenerate rows
        gmm.fit(samples[:, None])
    return gmm


def padded(rows: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    values = torch.full((len(rows), width), float("nan"), dtype=torch.float64)  # padding never read
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        values[i, : len(r)] = torch.from_numpy(r)
        mask[i, : len(r)] = True
    return values, mask


def random_rows(seed: int) -> list[np.ndarray]:
    """36 GTs with 2..45 candidates: bimodal, skewed (gamma), tight clusters, two samples, equal samples."""
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(36):
        t = int(rng.integers(2, 46))
        kind = g % 4
        if kind == 0:
            low = int(rng.integers(1, t))
            r = np.concatenate([rng.normal(0.4, 0.1, low), rng.normal(2.5, 0.7, t - low)])
        elif kind == 1:
            r = rng.gamma(2.0, 1.0, t)
        elif kind == 2:
            r = rng.uniform(0.0, 30.0, t)  # scores of an untrained model: spread far beyond variance 1
        else:
            r = rng.exponential(0.05, t) + 1.0
        rows.append(r)
    rows[3] = np.array([0.7, 2.9])  # two candidates
    rows[7] = np.full(9, 1.25)  # all scores equal
    return rows


@pytest.mark.parametrize("seed", [0, 1])
def test_batched_em_matches_sklearn(seed):
    rows = random_rows(seed)
    values, mask = padded(rows)
    mix = fit_two_component_gmm(values, mask)
    component, density = gmm_predict(torch.nan_to_num(values), mix)
    assert mix.means.dtype == torch.float64 and mix.means.shape == (len(rows), 2)
    assert mix.converged.all()
    for i, r in enumerate(rows):
        ref = sklearn_gmm(r)
        np.testing.assert_allclose(mix.means[i].numpy(), ref.means_[:, 0], rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(mix.variances[i].numpy(), ref.covariances_[:, 0, 0], rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(mix.weights[i].numpy(), ref.weights_, rtol=1e-7, atol=1e-9)
        assert int(mix.n_iter[i]) == ref.n_iter_
        n = len(r)
        assert component[i, :n].tolist() == ref.predict(r[:, None]).tolist()
        np.testing.assert_allclose(density[i, :n].numpy(), ref.score_samples(r[:, None]), rtol=1e-7, atol=1e-7)
    # degenerate rows stay finite: equal samples -> both variances at reg_covar
    assert torch.isfinite(mix.means).all() and torch.isfinite(mix.variances).all()
    assert mix.variances[7].tolist() == pytest.approx([1e-6, 1e-6])


def test_em_single_sample_and_bad_input():
    mix = fit_two_component_gmm(torch.tensor([[3.0, 0.0]]), torch.tensor([[True, False]]))
    assert mix.means[0].tolist() == pytest.approx([3.0, 3.0]) and torch.isfinite(mix.variances).all()
    with pytest.raises(UserInputError, match="at least one sample"):
        fit_two_component_gmm(torch.zeros(2, 3), torch.tensor([[True, False, False], [False, False, False]]))
    with pytest.raises(UserInputError, match=r"\[G, T\]"):
        fit_two_component_gmm(torch.zeros(2, 3), torch.ones(2, 2, dtype=torch.bool))


def reference_paa(initial: torch.Tensor, scores: torch.Tensor, num_per_level: list[int], topk: int) -> torch.Tensor:
    """The reference's loop: per image, per GT, per level the topk lowest scores; sklearn's fit; positives =
    the sorted candidates up to the component-0 candidate of highest density (all when none is in 0)."""
    out = torch.full_like(initial, -1)
    bounds = np.cumsum([0, *num_per_level])
    for i in range(initial.shape[0]):
        for gt in range(int(initial[i].max()) + 1 if (initial[i] >= 0).any() else 0):
            cand = []
            for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
                idx = torch.nonzero(initial[i, lo:hi] == gt)[:, 0] + int(lo)
                best = scores[i, idx].topk(min(topk, idx.numel()), largest=False).indices
                cand.append(idx[best])
            cand = torch.cat(cand)
            if cand.numel() == 0:
                continue
            if cand.numel() == 1:
                out[i, cand] = gt
                continue
            s, order = scores[i, cand].double().sort()
            cand = cand[order]
            gmm = sklearn_gmm(s.numpy())
            fg = gmm.predict(s.numpy()[:, None]) == 0
            if not fg.any():
                out[i, cand] = gt
                continue
            dens = gmm.score_samples(s.numpy()[:, None])
            last = int(np.nonzero(fg & (dens == dens[fg].max()))[0].min())
            out[i, cand[: last + 1]] = gt
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_paa_assign_matches_a_per_gt_loop(seed):
    gen = torch.Generator().manual_seed(seed)
    num_per_level = [300, 80, 20]
    k = sum(num_per_level)
    num_gt = [7, 0, 4]  # the middle image has no GT
    initial = torch.full((3, k), -1, dtype=torch.int64)
    for i, m in enumerate(num_gt):
        if m:
            take = torch.rand(k, generator=gen) < 0.5
            initial[i, take] = torch.randint(0, m, (int(take.sum()),), generator=gen)
    # continuous random scores (no ties), bimodal so that the split matters
    scores = torch.where(torch.rand(3, k, generator=gen) < 0.3, torch.rand(3, k, generator=gen) * 0.5,
                         1.5 + torch.rand(3, k, generator=gen) * 2)
    got = paa_assign(initial, scores, num_per_level, topk=9)
    assert got.dtype == torch.int64 and got.shape == initial.shape
    assert torch.equal(got, reference_paa(initial, scores, num_per_level, topk=9))
    assert (got[1] == -1).all()
    # positives are a subset of the initial matches, with the same GT
    pos = got >= 0
    assert torch.equal(got[pos], initial[pos])
    # at most topk candidates per (GT, level), hence per GT at most L x topk positives
    for i, m in enumerate(num_gt):
        for g in range(m):
            assert 1 <= int((got[i] == g).sum()) <= 9 * len(num_per_level)
    # the batch is assigned as its images would be one by one
    for i in range(3):
        assert torch.equal(got[i : i + 1], paa_assign(initial[i : i + 1], scores[i : i + 1], num_per_level))


def test_paa_hand_cases():
    # one GT, one level, 8 matched anchors: 4 good (scores 0.10, 0.12, 0.15, 0.11) and 4 bad (about 2)
    initial = torch.tensor([[0, 0, 0, 0, 0, 0, 0, 0, -1, -2]])
    scores = torch.tensor([[0.10, 2.20, 0.12, 2.00, 0.15, 2.30, 0.11, 1.90, 0.0, 0.0]])
    # component 0 settles on the good four (mean 0.12); its densest sample is 0.12, and PAA's scheme (Fig. 3 c)
    # makes the candidates with scores <= 0.12 positive: 0.10, 0.12, 0.11 (0.15 lies beyond the mode)
    assert paa_assign(initial, scores, [10]).tolist() == [[0, -1, 0, -1, -1, -1, 0, -1, -1, -2]]
    # two candidates (topk 2: 0.10 and 0.11): one component on each, the lower one is positive
    assert paa_assign(initial, scores, [10], topk=2).tolist() == [[0, -1, -1, -1, -1, -1, -1, -1, -1, -2]]
    # top-k is per level: levels of 5 + 5 anchors, topk 2 -> {0.10, 0.12} and {0.11, 1.90}; mode 0.11
    assert paa_assign(initial, scores, [5, 5], topk=2).tolist() == [[0, -1, -1, -1, -1, -1, 0, -1, -1, -2]]
    # GT 1 has a single candidate (a bad one, 7.5): positive all the same; GT 0 keeps its good anchor only
    initial = torch.tensor([[-1, 1, 0, 0, 0]])
    scores = torch.tensor([[9.0, 7.5, 0.2, 3.0, 3.1]])
    assert paa_assign(initial, scores, [5]).tolist() == [[-1, 1, 0, -1, -1]]
    # equal scores: no NaN, and (the "<=" rule) every candidate is positive
    initial = torch.zeros(1, 6, dtype=torch.int64)
    assert paa_assign(initial, torch.full((1, 6), 0.7), [6]).tolist() == [[0] * 6]
    # nothing matched: all background, bad sizes raise
    assert paa_assign(torch.full((2, 4), -1), torch.zeros(2, 4), [4]).tolist() == [[-1] * 4] * 2
    with pytest.raises(UserInputError, match="num_per_level"):
        paa_assign(initial, torch.zeros(1, 6), [5])


def test_prior_claimed_by_two_gts_goes_to_the_higher_iou():
    # anchor 1 = [10, 0, 20, 10] overlaps GT 0 (IoU 50/150) and GT 1 (IoU 80/120): the initial matching gives it
    # to GT 1, so it is never a candidate of GT 0 even though it has the lowest score of all
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [10.0, 0.0, 20.0, 10.0], [20.0, 0.0, 30.0, 10.0]])
    gts = torch.tensor([[0.0, 0.0, 15.0, 10.0], [12.0, 0.0, 22.0, 10.0]])
    initial = max_iou_assign([anchors], gts, fg_iou=0.1, bg_iou=0.1)[None]  # [1, 3]
    assert initial.tolist() == [[0, 1, 1]]
    got = paa_assign(initial, torch.tensor([[0.5, 0.1, 3.0]]), [3])
    assert got[0, 1] == 1 and got[0, 0] == 0


def test_anchor_scores_are_row_focal_plus_weighted_giou():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 7, generator=gen) * 3
    labels = torch.randint(0, 7, (50,), generator=gen)
    gt = torch.tensor([[10.0, 10.0, 50.0, 40.0]]).repeat(50, 1)
    pred = gt + torch.randn(50, 4, generator=gen) * 5
    pred[:, 2:] = torch.maximum(pred[:, 2:], pred[:, :2] + 1)
    one_hot = torch.nn.functional.one_hot(labels, 7).float()
    expected = sigmoid_focal_loss(logits, one_hot, alpha=0.25, gamma=2.0, reduction="none").sum(1)
    expected = expected + 1.3 * generalized_box_iou_loss(pred, gt, reduction="none")
    got = paa_anchor_scores(logits, labels, pred, gt, box_weight=1.3)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert paa_anchor_scores(logits[:0], labels[:0], pred[:0], gt[:0]).shape == (0,)


def test_score_voting_hand_case():
    det = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    cand = torch.tensor([[0.0, 0.0, 10.0, 10.0],  # the detection itself: IoU 1, weight = its score 0.9
                         [1.0, 0.0, 11.0, 10.0],  # IoU 90/110, weight 0.5 exp(-(2/11)^2 / 0.025) = 0.1333
                         [5.0, 0.0, 15.0, 10.0],  # another class: ignored
                         [50.0, 50.0, 60.0, 60.0]])  # no overlap: ignored
    scores = torch.tensor([0.9, 0.5, 0.99, 0.99])
    labels = torch.tensor([1, 1, 2, 1])
    w = 0.5 * math.exp(-((1 - 90 / 110) ** 2) / 0.025)
    expected = torch.tensor([[w / (0.9 + w), 0.0, 10 + w / (0.9 + w), 10.0]])
    voted = score_voting(det, torch.tensor([1]), cand, scores, labels)
    torch.testing.assert_close(voted, expected)
    assert 0.12 < float(voted[0, 0]) < 0.14
    # no candidate of that class: the box is kept
    assert torch.equal(score_voting(det, torch.tensor([3]), cand, scores, labels), det)


def test_voting_postprocess_without_voting_equals_postprocess():
    gen = torch.Generator().manual_seed(0)
    num_per_level = [64, 16, 4]
    k = sum(num_per_level)
    cls = torch.randn(2, k, 5, generator=gen) * 2
    quality = torch.randn(2, k, generator=gen)
    xy = torch.rand(2, k, 2, generator=gen) * 80
    boxes = torch.cat([xy, xy + 5 + torch.rand(2, k, 2, generator=gen) * 30], dim=2)
    sizes = [(90, 100), (70, 60)]
    kwargs = {"pre_nms_topk": 50, "score_thresh": 0.05, "nms_iou": 0.5, "max_per_image": 40}
    plain = postprocess_detections(cls, boxes, quality, num_per_level, sizes, **kwargs)
    same = postprocess_detections(cls, boxes, quality, num_per_level, sizes, voting_sigma=None, **kwargs)
    voted = postprocess_detections(cls, boxes, quality, num_per_level, sizes, voting_sigma=0.025, **kwargs)
    for a, b, c, (h, w) in zip(plain, same, voted, sizes, strict=True):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(a[key], b[key])
        assert torch.equal(a["scores"], c["scores"]) and torch.equal(a["labels"], c["labels"])
        assert not torch.equal(a["boxes"], c["boxes"])  # overlapping candidates moved some boxes
        assert c["boxes"][:, 0::2].min() >= 0 and c["boxes"][:, 0::2].max() <= w
        assert c["boxes"][:, 1::2].min() >= 0 and c["boxes"][:, 1::2].max() <= h


def tiny_paa(cls_loss: torch.nn.Module, num_classes: int = 3, **kwargs) -> PAADetector:
    backbone = TinyBackbone(widths=(8, 8, 8, 8, 8))
    neck = FPN(in_channels=backbone.out_channels, out_channels=8)
    head = DenseHead(in_channels=8, num_classes=num_classes, num_anchors=1, num_convs=1, norm_groups=4,
                     quality="iou", prior_prob=0.01)
    return PAADetector(backbone=backbone, neck=neck, head=head,
                       prior_generator=AnchorGenerator(scales=(8.0,), ratios=(1.0,)), cls_loss=cls_loss,
                       num_classes=num_classes, box_loss_weight=1.3, **kwargs)


def target(boxes, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64)}


@pytest.mark.parametrize("loss", ["focal", "efl"])
def test_paa_detector_train_step_and_eval(loss):
    torch.manual_seed(0)
    cls_loss = FocalLoss() if loss == "focal" else EqualizedFocalLoss(num_classes=3)
    model = tiny_paa(cls_loss).train()
    images = torch.randn(2, 3, 96, 128)
    targets = [target([[10, 20, 60, 80], [70, 5, 126, 40], [30, 30, 50, 50]], [1, 2, 0]),
               target([[3, 3, 40, 50]], [0])]
    losses = model(images, targets, image_sizes=[(96, 128), (90, 120)])
    assert set(losses) == {"loss_cls", "loss_box", "loss_quality"}
    for value in losses.values():
        assert value.dim() == 0 and torch.isfinite(value) and value > 0
    sum(losses.values()).backward()
    for param in (model.head.cls_logits.weight, model.head.box_reg.weight, model.head.quality_logits.weight):
        assert torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0
    if loss == "efl":  # the EFL statistics come from the model's own cls_loss
        assert (model.cls_loss.pos_grad > 0).all()
    # the PAA assignment: every GT with initial matches keeps >= 1 positive, a subset of its initial matches
    with torch.no_grad():
        feats = model.features(images)
        cls, box_reg, _ = model.predict_raw(feats)
        priors = model.priors(feats)
        initial = model.assign(priors, targets)
        assigned = model.paa_reassign(cls, box_reg, priors, initial, targets)
    pos = assigned >= 0
    assert torch.equal(assigned[pos], initial[pos]) and pos.sum() < (initial >= 0).sum()
    for i in range(2):
        assert set(assigned[i][pos[i]].tolist()) == set(initial[i][initial[i] >= 0].tolist())
    # the 20 px GT overlaps no 64 px anchor by 0.1 and its best anchor prefers GT 0: no candidates (as in PAA)
    assert set(initial[0][initial[0] >= 0].tolist()) == {0, 1} and set(initial[1][initial[1] >= 0].tolist()) == {0}

    model.eval()
    with torch.no_grad():
        detections = model(images, image_sizes=[(96, 128), (60, 50)])
    assert len(detections) == 2
    for det, (h, w) in zip(detections, [(96, 128), (60, 50)], strict=True):
        assert set(det) == {"boxes", "scores", "labels"}
        assert det["boxes"].dtype == torch.float32 and det["labels"].dtype == torch.int64
        assert 0 < det["boxes"].shape[0] <= 300
        assert det["boxes"][:, 0::2].min() >= 0 and det["boxes"][:, 0::2].max() <= w
        assert det["boxes"][:, 1::2].min() >= 0 and det["boxes"][:, 1::2].max() <= h
        assert ((det["labels"] >= 0) & (det["labels"] < 3)).all()
        assert (det["scores"][:-1] >= det["scores"][1:]).all()


def test_paa_detector_empty_targets_and_bad_priors():
    model = tiny_paa(FocalLoss()).train()
    empty = target([], [])
    losses = model(torch.randn(1, 3, 64, 64), [empty])
    assert losses["loss_box"].item() == 0.0 and torch.isfinite(losses["loss_cls"])
    from efldet.models import PointGenerator

    with pytest.raises(UserInputError, match="AnchorGenerator"):
        PAADetector(backbone=model.backbone, neck=model.neck, head=model.head, prior_generator=PointGenerator(),
                    cls_loss=FocalLoss(), num_classes=3)
