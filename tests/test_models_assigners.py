"""ATSS, max-IoU and FCOS assignment on hand-placed boxes."""

import torch
import torchvision

from efldet.models import BACKGROUND, IGNORE, AnchorGenerator, atss_assign, fcos_assign, max_iou_assign

ROW = torch.tensor([[0.0, 0.0, 10.0, 10.0], [10.0, 0.0, 20.0, 10.0], [20.0, 0.0, 30.0, 10.0],
                    [30.0, 0.0, 40.0, 10.0]])  # four 10 x 10 anchors in a row, centres x = 5, 15, 25, 35


def test_atss_adaptive_threshold_hand_computed():
    # GT centre x = 7: the 3 closest anchors are 0, 1, 2 with IoU 80/120, 20/180, 0.
    # mean 0.2593, std (Bessel) 0.3572 -> threshold 0.6164: only anchor 0 passes.
    gt = torch.tensor([[2.0, 0.0, 12.0, 10.0]])
    assigned = atss_assign([ROW], gt, topk=3)
    assert assigned.dtype == torch.int64
    assert assigned.tolist() == [0, BACKGROUND, BACKGROUND, BACKGROUND]
    # with top-2 candidates (IoU 2/3 and 1/9) the threshold is 0.3889 + 0.3928: nobody passes
    assert atss_assign([ROW], gt, topk=2).tolist() == [-1, -1, -1, -1]


def test_atss_topk_is_per_level():
    # level 0: the row; level 1: one big anchor. top-2 per level: anchors 0, 1 (IoU 2/3, 1/9) and the
    # big one (IoU 100/400): 3 candidates, threshold 0.3426 + 0.2891 = 0.6317: only anchor 0 passes.
    big = torch.tensor([[-5.0, -5.0, 15.0, 15.0]])
    gt = torch.tensor([[2.0, 0.0, 12.0, 10.0]])
    assert atss_assign([ROW, big], gt, topk=2).tolist() == [0, -1, -1, -1, -1]
    # top-1 per level gives 2 candidates, and mean + std of two values exceeds both: nobody passes
    assert atss_assign([ROW, big], gt, topk=1).tolist() == [-1, -1, -1, -1, -1]
    # a GT equal to the big anchor: IoUs (0.25, 1/9, 1) -> threshold 0.4537 + 0.4782: the big one only
    gt_big = torch.tensor([[-5.0, -5.0, 15.0, 15.0]])
    assert atss_assign([ROW, big], gt_big, topk=2).tolist() == [-1, -1, -1, -1, 0]


def test_atss_ties():
    # equal distance (GT centre x = 10 is 5 px from anchors 0 and 1): the lower anchor index is the
    # candidate; one candidate -> std 0 -> threshold = its IoU (60/160) -> positive.
    gt = torch.tensor([[4.0, 0.0, 16.0, 10.0]])
    assert atss_assign([ROW[:2]], gt, topk=1).tolist() == [0, -1]
    # two GTs claim anchor 0 with equal IoU: the lower GT index wins
    twins = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    assert atss_assign([ROW[:2]], twins, topk=1).tolist() == [0, -1]
    # different IoU (1.0 vs 90/110): the higher IoU wins, whatever the GT order
    pair = torch.tensor([[1.0, 0.0, 11.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    assert atss_assign([ROW[:2]], pair, topk=1).tolist() == [1, -1]


def test_atss_gt_smaller_than_every_anchor():
    grid = torch.tensor([[0.0, 0.0, 8.0, 8.0], [8.0, 0.0, 16.0, 8.0], [0.0, 8.0, 8.0, 16.0],
                         [8.0, 8.0, 16.0, 16.0]])
    # 3 x 3 GT around anchor 0's centre (4, 4): IoUs (9/64, 0, 0, 0) -> threshold 3/4 * 9/64 -> anchor 0
    assert atss_assign([grid], torch.tensor([[2.0, 2.0, 5.0, 5.0]]), topk=4).tolist() == [0, -1, -1, -1]
    # 2 x 2 GT that contains no anchor centre: no positive at all (ATSS's centre-inside rule)
    assert atss_assign([grid], torch.tensor([[1.0, 1.0, 3.0, 3.0]]), topk=4).tolist() == [-1, -1, -1, -1]


def test_atss_no_gt():
    out = atss_assign([ROW, ROW[:1]], torch.zeros(0, 4), topk=9)
    assert out.tolist() == [-1] * 5 and out.dtype == torch.int64


def test_max_iou_thresholds_and_low_quality():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 20.0], [0.0, 0.0, 10.0, 22.0],
                            [20.0, 20.0, 30.0, 30.0]])  # IoU with the GT: 1, 0.5, 0.4545, 0
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    assert max_iou_assign([anchors[:2], anchors[2:]], gt).tolist() == [0, 0, IGNORE, BACKGROUND]
    tall = torch.tensor([[0.0, 0.0, 10.0, 30.0]])  # IoUs 1/3, 2/3, 22/30, 0
    assert max_iou_assign([anchors], tall).tolist() == [BACKGROUND, 0, 0, BACKGROUND]
    far = torch.tensor([[0.0, 0.0, 10.0, 40.0]])  # IoUs 0.25, 0.5, 0.55, 0
    assert max_iou_assign([anchors], far).tolist() == [BACKGROUND, 0, 0, BACKGROUND]
    # the best anchor of a GT (IoU 100/340 = 0.294 < 0.4) is still matched as a low-quality match
    lonely = torch.tensor([[0.0, 0.0, 10.0, 34.0]])
    assert max_iou_assign([anchors[:1]], lonely).tolist() == [0]
    assert max_iou_assign([anchors[:1]], lonely, allow_low_quality=False).tolist() == [BACKGROUND]
    assert max_iou_assign([anchors], torch.zeros(0, 4)).tolist() == [-1, -1, -1, -1]


def test_fcos_centre_sampling_scale_ranges_and_smallest_area():
    p3 = torch.tensor([[4.0, 4.0], [12.0, 4.0], [4.0, 12.0], [12.0, 12.0]])  # stride 8
    p4 = torch.tensor([[8.0, 8.0]])  # stride 16
    gt = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    # radius 1.5 x 8 = 12 around (8, 8) covers the whole GT: the 4 P3 points (max distance 12 <= 64);
    # the P4 point's max distance 8 is below its range [64, 128]
    assert fcos_assign([p3, p4], gt).tolist() == [0, 0, 0, 0, -1]
    # radius 0.25 x 8 = 2: region [6, 10]^2 holds no P3 point
    assert fcos_assign([p3, p4], gt, center_radius=0.25).tolist() == [-1] * 5
    # other ranges: P3 [0, 10] rejects max distance 12, P4 [0, 10] accepts 8 (its region is 8 +- 24)
    ranges = ((0.0, 10.0), (0.0, 10.0))
    assert fcos_assign([p3, p4], gt, size_ranges=ranges).tolist() == [-1, -1, -1, -1, 0]
    # two GTs contain the P3 points: the smaller one wins
    two = torch.tensor([[0.0, 0.0, 16.0, 16.0], [2.0, 2.0, 14.0, 14.0]])
    assert fcos_assign([p3, p4], two).tolist() == [1, 1, 1, 1, -1]
    assert fcos_assign([p3, p4], torch.zeros(0, 4)).tolist() == [-1] * 5


def _atss_reference(anchors_per_level, gt_boxes, topk):
    """ATSS written directly, one GT and one anchor at a time (slow, obviously right)."""
    anchors = torch.cat(anchors_per_level)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    ious = torchvision.ops.box_iou(gt_boxes, anchors)  # [M, K]
    best = {}  # anchor -> (iou, gt)
    for m, gt in enumerate(gt_boxes):
        gt_centre = (gt[:2] + gt[2:]) / 2
        cand, start = [], 0
        for level in anchors_per_level:
            dists = [float(((centres[start + i] - gt_centre) ** 2).sum().sqrt()) for i in range(len(level))]
            order = sorted(range(len(level)), key=lambda i, d=dists: (d[i], i))
            cand += [start + i for i in order[:topk]]
            start += len(level)
        values = torch.tensor([float(ious[m, a]) for a in cand], dtype=torch.float64)
        threshold = values.mean() + (values.std() if len(cand) > 1 else 0.0)
        for a in cand:
            cx, cy = centres[a].tolist()
            inside = min(cx - gt[0], cy - gt[1], gt[2] - cx, gt[3] - cy) > 0.01
            if float(ious[m, a]) >= threshold - 1e-6 and inside:
                if a not in best or float(ious[m, a]) > best[a][0]:
                    best[a] = (float(ious[m, a]), m)
    out = [-1] * anchors.shape[0]
    for a, (_, m) in best.items():
        out[a] = m
    return out


def test_atss_matches_a_direct_implementation():
    generator = torch.Generator().manual_seed(0)
    gen = AnchorGenerator(strides=(8, 16, 32), scales=(6.0, 8.0))
    anchors = gen([(8, 10), (4, 5), (2, 3)])
    for _ in range(3):
        wh = torch.rand(7, 2, generator=generator) * 50 + 4
        xy = torch.rand(7, 2, generator=generator) * 60
        gt = torch.cat([xy, xy + wh], dim=1)
        expected = _atss_reference(anchors, gt, topk=9)
        assert sum(a >= 0 for a in expected) >= 7  # every GT got anchors: the comparison is not vacuous
        assert atss_assign(anchors, gt, topk=9).tolist() == expected
