"""ONNX export of a detector (`DenseDetector`, or the original YOLOX's `YOLOXDetector`) and onnxruntime inference.

The exported graph takes `images` float32 [N, 3, H, W], already resized and normalised as `efldet predict` does
(`efldet.data.eval_transforms`: shorter side `test_short_side`, longer <= `max_size`, ImageNet mean / std; the
values are in the file's metadata), with N, H and W dynamic. Outputs:

- without NMS: `boxes` [N, K, 4] decoded xyxy pixels (not clipped), `scores` [N, K, C] the inference score
  (sigmoid(cls) x sigmoid(quality) with an IoU / centerness branch, sigmoid(cls) otherwise), and
  `level_sizes` int64 [L] (K_l, the priors of every level, for the per-level top-k of the post-processing);
- with NMS: the detector's post-processing in the graph (per-level top-k, boxes clipped to H x W, class-aware
  NMS as ONNX `NonMaxSuppression`, the `max_per_image` best of every image): `det_boxes` [D, 4],
  `det_scores` [D] (descending within an image), `det_labels` int64 [D] (0..C-1) and `det_batch` int64 [D]
  (the image of every detection), D summed over the batch.

Boxes are clipped to the input tensor's H x W: run one image per call, or clip a padded batch's boxes to each
image yourself. The graph is built by `torch.onnx.export` with the TorchScript tracer (`dynamo=False`): sizes
read from tensors are traced values there, so every shape stays dynamic, and a tiny detector exports in about
a second where the torch.export-based exporter's symbolic shapes took 30-50 s on 2 CPU cores (measured with
torch 2.14; that exporter also needs onnxscript). Shape letters: N images, K priors in all levels, K_l on level
l, C foreground classes, L levels, D candidates or detections, S boxes selected by NMS.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from efldet.errors import UserInputError
from efldet.models.anchors import AnchorGenerator, _grid_centers
from efldet.models.detector import DenseDetector
from efldet.models.postprocess import PAA_VOTING_MIN_IOU, score_voting
from efldet.models.yolox import YOLOXDetector

Detector = DenseDetector | YOLOXDetector  # what the graph supports: same features / predict_raw / decode split

OPSET = 18  # ONNX opset of the exported graph (NonMaxSuppression, TopK with a dynamic k)
NO_NMS_OUTPUTS = ("boxes", "scores", "level_sizes")
NMS_OUTPUTS = ("det_boxes", "det_scores", "det_labels", "det_batch")


def _require(module: str) -> Any:
    """Import `module` (onnx, onnxruntime), or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserInputError(f"ONNX export and inference need the `{module}` package: pip install 'efldet[export]'"
                             ) from None


# ------------------------------------------------------------------------------------------------ NMS op
def _reference_nms(boxes: Tensor, scores: Tensor, max_per_class: int, iou_threshold: float,
                   score_threshold: float) -> Tensor:
    """ONNX `NonMaxSuppression` in PyTorch: boxes [N, D, 4], scores [N, C', D] -> int64 [S, 3] rows
    (image, class, box): per (image, class) the boxes scoring > `score_threshold`, in descending score order, at
    most `max_per_class`."""
    from torchvision.ops import batched_nms

    rows = [boxes.new_zeros((0, 3), dtype=torch.int64)]
    for i in range(scores.shape[0]):
        cls, box = (scores[i] > score_threshold).nonzero(as_tuple=True)  # [P] each: (class, box) pairs
        kept = batched_nms(boxes[i, box], scores[i, cls, box], cls, iou_threshold)  # [P'], descending score
        kept = kept[torch.sort(cls[kept], stable=True).indices]  # grouped by class, still descending within
        kept_cls = cls[kept]  # [P'], ascending
        first = torch.searchsorted(kept_cls, kept_cls)  # [P'], where each one's class starts
        rank = torch.arange(len(kept), device=kept.device) - first  # place within its class
        kept = kept[rank < max_per_class]
        rows.append(torch.stack([torch.full_like(kept, i), cls[kept], box[kept]], dim=1))
    return torch.cat(rows)


class _OnnxNms(torch.autograd.Function):
    """`_reference_nms` when run, one ONNX `NonMaxSuppression` node when exported."""

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, max_per_class: int, iou_threshold: float,
                score_threshold: float) -> Tensor:
        return _reference_nms(boxes, scores, max_per_class, iou_threshold, score_threshold)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class: int, iou_threshold: float, score_threshold: float):
        return g.op(
            "NonMaxSuppression", boxes, scores,
            g.op("Constant", value_t=torch.tensor([max_per_class], dtype=torch.int64)),
            g.op("Constant", value_t=torch.tensor([iou_threshold], dtype=torch.float32)),
            g.op("Constant", value_t=torch.tensor([score_threshold], dtype=torch.float32)),
        )


def _at_most(size: int | Tensor, limit: int) -> int | Tensor:
    """min(size, limit) for a size that is an int when run and a traced 0-dim tensor while exporting (so that
    the graph keeps it dynamic instead of freezing the example's value)."""
    return torch.clamp(size, max=limit) if isinstance(size, Tensor) else min(size, limit)


# --------------------------------------------------------------------------------------- graph pieces
def traceable_priors(detector: Detector, feats: list[Tensor]) -> list[Tensor]:
    """The detector's priors (anchors [K_l, 4] or points [K_l, 2] per level) from the feature maps' sizes (traced
    values while exporting): the same values as `detector.priors`, without its cache keyed by Python sizes."""
    generator = detector.prior_generator
    out = []
    for feat, stride in zip(feats, generator.strides, strict=False):
        size = (feat.shape[-2], feat.shape[-1])
        centers = _grid_centers(size, stride, generator.offset, feat.device)  # [H*W, 2]
        if isinstance(generator, AnchorGenerator):
            cell = generator.cell_anchors(stride).to(feat.device)  # [A, 4]
            anchors = centers.repeat(1, 2)[:, None, :] + cell[None, :, :]  # [H*W, A, 4]
            out.append(anchors.reshape(-1, 4))  # [H*W*A, 4]
        else:
            out.append(centers)
    return out


def top_candidates(scores: Tensor, boxes: Tensor, level_sizes: Sequence[int], pre_nms_topk: int
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """Per level the `pre_nms_topk` best (prior, class) pairs of every image, batched.

    scores [N, K, C], boxes [N, K, 4] -> scores [N, D], labels int64 [N, D], boxes [N, D, 4]; the same pairs
    as `efldet.models.postprocess_detections` (which ranks priors by their best class first, then pairs).
    """
    n, _, c = scores.shape
    out_scores, out_labels, out_boxes = [], [], []
    start = 0
    for count in level_sizes:
        level_scores = scores[:, start : start + count]  # [N, K_l, C]
        level_boxes = boxes[:, start : start + count]  # [N, K_l, 4]
        start = start + count
        k = _at_most(count, pre_nms_topk)
        top_priors = level_scores.max(dim=2).values.topk(k, dim=1).indices  # [N, k]
        pair_scores = level_scores.gather(1, top_priors[:, :, None].expand(-1, -1, c))  # [N, k, C]
        pair_scores = pair_scores.reshape(n, -1)  # [N, k*C], (prior, class) pairs
        best, flat = pair_scores.topk(_at_most(k * c, pre_nms_topk), dim=1)  # [N, d] each
        prior = top_priors.gather(1, flat // c)  # [N, d]
        out_scores.append(best)
        out_labels.append(flat % c)
        out_boxes.append(level_boxes.gather(1, prior[:, :, None].expand(-1, -1, 4)))  # [N, d, 4]
    return torch.cat(out_scores, 1), torch.cat(out_labels, 1), torch.cat(out_boxes, 1)


class ExportableDetector(nn.Module):
    """A detector as a graph of traceable ops: images [N, 3, H, W] -> the outputs in the module docstring.

    Args:
        detector: the trained detector (its test settings `test_*` drive the post-processing).
        with_nms: include the post-processing and NMS (`NMS_OUTPUTS`) or stop at scores and boxes
            (`NO_NMS_OUTPUTS`).
    """

    def __init__(self, detector: Detector, *, with_nms: bool = False) -> None:
        super().__init__()
        self.detector = detector
        self.with_nms = with_nms

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        det = self.detector
        feats = det.features(images)
        cls, box_reg, quality = det.predict_raw(feats)  # [N, K, C], [N, K, 4], [N, K] or None
        priors = traceable_priors(det, feats)
        strides = torch.cat([torch.full_like(p[:, 0], float(s)) for p, s in zip(priors, det.prior_generator.strides,
                                                                                 strict=False)])  # [K]
        boxes = det.decode(torch.cat(priors), box_reg, strides)  # [N, K, 4]
        scores = torch.sigmoid(cls.float())  # [N, K, C]
        if quality is not None and det.head.quality != "none":
            scores = scores * torch.sigmoid(quality.float())[:, :, None]
        level_sizes = [p.shape[0] for p in priors]
        if not self.with_nms:
            sizes = torch.stack([torch.full((), k, dtype=torch.int64) for k in level_sizes])  # [L]
            return boxes, scores, sizes
        return self._postprocess(images, scores, boxes, level_sizes)

    def _postprocess(self, images: Tensor, scores: Tensor, boxes: Tensor, level_sizes: list[int]
                     ) -> tuple[Tensor, ...]:
        det = self.detector
        num_classes = scores.shape[2]
        cand_scores, cand_labels, cand_boxes = top_candidates(scores, boxes, level_sizes,
                                                              det.test_pre_nms_topk)  # [N, D], [N, D], [N, D, 4]
        height, width = images.shape[-2], images.shape[-1]
        x = cand_boxes[..., 0::2].clamp(min=0.0, max=width)  # [N, D, 2]: x1, x2
        y = cand_boxes[..., 1::2].clamp(min=0.0, max=height)  # [N, D, 2]: y1, y2
        cand_boxes = torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=2)  # [N, D, 4]
        # Class-aware NMS: every class sees only its own candidates (others score -1, below the threshold).
        classes = torch.arange(num_classes, device=scores.device)  # [C]
        per_class = torch.where(cand_labels[:, None, :] == classes[None, :, None], cand_scores[:, None, :],
                                torch.full_like(cand_scores[:, None, :], -1.0))  # [N, C, D]
        threshold = det.test_score_thresh if det.test_score_thresh > 0 else -0.5
        selected = _OnnxNms.apply(cand_boxes, per_class, det.test_max_per_image, det.test_nms_iou, threshold)  # [S, 3]
        batch, box = selected[:, 0], selected[:, 2]  # [S] each
        # The max_per_image best kept candidates of every image: kept scores in an [N, D] grid (-1 elsewhere) and
        # one top-k per row, so the order is by image, then descending score.
        kept = torch.full_like(cand_scores, -1.0).index_put((batch, box), cand_scores[batch, box])  # [N, D]
        top_scores, top_box = kept.topk(_at_most(kept.shape[1], det.test_max_per_image), dim=1)  # [N, m] each
        valid = top_scores > -0.5  # [N, m]: slots holding a kept candidate
        image = torch.arange(kept.shape[0], device=kept.device)[:, None].expand_as(top_box)[valid]  # [D']
        box = top_box[valid]  # [D']
        det_boxes, det_labels = cand_boxes[image, box], cand_labels[image, box]  # [D', 4], [D']
        voting_sigma = getattr(det, "voting_sigma", None)  # PAA's score voting after NMS
        if voting_sigma is not None:
            weight = cand_scores[image] * (cand_scores[image] > det.test_score_thresh)  # [D', D]: candidates
            det_boxes = _vote(det_boxes, det_labels, cand_boxes[image], weight, cand_labels[image], voting_sigma)
            x = det_boxes[:, 0::2].clamp(min=0.0, max=width)  # [D', 2]
            y = det_boxes[:, 1::2].clamp(min=0.0, max=height)  # [D', 2]
            det_boxes = torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)  # [D', 4]
        return det_boxes, top_scores[valid], det_labels, image


def _vote(boxes: Tensor, labels: Tensor, cand_boxes: Tensor, cand_scores: Tensor, cand_labels: Tensor,
          sigma: float) -> Tensor:
    """`efldet.models.postprocess.score_voting` batched over detections, each with its own image's candidates:
    boxes [D', 4], labels [D'], cand_boxes [D', D, 4], cand_scores [D', D] (0 for non-candidates), cand_labels
    [D', D] -> voted boxes [D', 4]. In float64, as `score_voting`: the exp(-(1 - IoU)^2 / sigma) weights magnify
    float32 rounding of the IoUs, and the weighted mean runs over up to thousands of candidates."""
    out_dtype = boxes.dtype
    boxes, cand_boxes, cand_scores = boxes.double(), cand_boxes.double(), cand_scores.double()
    top_left = torch.maximum(boxes[:, None, :2], cand_boxes[..., :2])  # [D', D, 2]
    bottom_right = torch.minimum(boxes[:, None, 2:], cand_boxes[..., 2:])  # [D', D, 2]
    inter = (bottom_right - top_left).clamp(min=0.0).prod(dim=2)  # [D', D]
    area = (boxes[:, 2:] - boxes[:, :2]).prod(dim=1)  # [D']
    cand_area = (cand_boxes[..., 2:] - cand_boxes[..., :2]).prod(dim=2)  # [D', D]
    iou = inter / (area[:, None] + cand_area - inter).clamp(min=1e-12)  # [D', D]
    weight = torch.exp(-((1.0 - iou) ** 2) / sigma) * cand_scores  # [D', D]
    weight = weight * ((cand_labels == labels[:, None]) & (iou > PAA_VOTING_MIN_IOU))  # [D', D]
    total = weight.sum(dim=1, keepdim=True)  # [D', 1]
    voted = (weight[:, :, None] * cand_boxes).sum(dim=1) / total.clamp(min=1e-300)  # [D', 4]
    return torch.where(total > 0, voted, boxes).to(out_dtype)


# --------------------------------------------------------------------------------------------- export
def export_onnx(model: Detector, out: str | Path, *, input_size: tuple[int, int] = (800, 1333),
                with_nms: bool = False, metadata: dict[str, Any] | None = None) -> Path:
    """Export `model` (in eval mode) to the ONNX file `out` (opset `OPSET`, dynamic batch / height / width; the
    outputs in the module docstring) and write `metadata` (plus opset, outputs, score formula and the test
    settings) into the file's `metadata_props`, json-encoded. `input_size` (H, W): the example traced. Returns
    the path."""
    onnx = _require("onnx")
    height, width = input_size
    if height < 32 or width < 32:
        raise UserInputError(f"--input-size {height} {width}: both sides must be at least 32 pixels")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    wrapper = ExportableDetector(model, with_nms=with_nms).eval()
    example = torch.zeros(2, 3, height, width, device=next(model.parameters()).device)
    output_names = list(NMS_OUTPUTS if with_nms else NO_NMS_OUTPUTS)
    dynamic_axes = {"images": {0: "batch", 2: "height", 3: "width"}}
    if with_nms:
        dynamic_axes.update({name: {0: "detections"} for name in output_names})
    else:
        dynamic_axes.update({"boxes": {0: "batch", 1: "priors"}, "scores": {0: "batch", 1: "priors"}})
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter: seconds where torch.export's symbolic shapes take minutes on a CPU. Sizes
        # read from tensors are traced values, so every shape stays dynamic; the warnings about tracing are
        # about Python values that are constants of the model (classes, strides, levels).
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")  # our indices are >= 0
        torch.onnx.export(wrapper, (example,), os.fspath(out), dynamo=False, opset_version=OPSET,
                          input_names=["images"], output_names=output_names, dynamic_axes=dynamic_axes)
    model.train(was_training)
    proto = onnx.load(os.fspath(out))
    meta = {
        "opset": str(OPSET), "with_nms": json.dumps(with_nms), "outputs": json.dumps(output_names),
        "score": "sigmoid(cls) * sigmoid(quality)" if model.head.quality != "none" else "sigmoid(cls)",
        "input": "images float32 [N,3,H,W], resized and normalised (mean/std)",
        "pre_nms_topk": str(model.test_pre_nms_topk), "score_thresh": str(float(model.test_score_thresh)),
        "nms_iou": str(float(model.test_nms_iou)), "max_per_image": str(model.test_max_per_image),
        "voting_sigma": json.dumps(getattr(model, "voting_sigma", None)),
        **{key: value if isinstance(value, str) else json.dumps(value) for key, value in (metadata or {}).items()},
    }
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, os.fspath(out))
    return out


def export_checkpoint(weights: str | Path, out: str | Path, *, input_size: tuple[int, int] | None = None,
                      with_nms: bool = False) -> Path:
    """`efldet export`: the detector of a checkpoint (EMA weights when present) to ONNX, with what prediction
    needs in the file's metadata (category names and ids, resize and normalisation). `input_size` (H, W) of
    the tracing example defaults to the checkpoint's test shorter side, square."""
    from efldet.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from efldet.engine.predict import model_from_checkpoint

    model, cfg, ckpt = model_from_checkpoint(weights, device=torch.device("cpu"))
    num_classes = cfg.model.num_classes
    size = tuple(input_size) if input_size is not None else (cfg.data.test_short_side, cfg.data.test_short_side)
    metadata = {
        "detector": cfg.model.name, "num_classes": num_classes, "source": str(weights),
        "class_names": list(ckpt.get("class_names") or [str(i) for i in range(num_classes)]),
        "category_ids": [int(c) for c in (ckpt.get("category_ids") or range(1, num_classes + 1))],
        "test_short_side": cfg.data.test_short_side, "max_size": cfg.data.max_size,
        "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
    }
    return export_onnx(model, out, input_size=size, with_nms=with_nms, metadata=metadata)


# ------------------------------------------------------------------------------------------ onnxruntime
def detections_from_scores(scores: Tensor, boxes: Tensor, level_sizes: Sequence[int],
                           image_sizes: Sequence[tuple[int, int]], *, pre_nms_topk: int = 1000,
                           score_thresh: float = 0.0, nms_iou: float = 0.5, max_per_image: int = 300,
                           voting_sigma: float | None = None) -> list[dict[str, Tensor]]:
    """The detector's post-processing on the outputs of a graph exported without NMS: scores [N, K, C] and boxes
    [N, K, 4] -> N dicts of `boxes` [D, 4] (clipped), `scores` [D] (descending) and `labels` [D], the same
    detections as `efldet.models.postprocess_detections` on the logits (PAA's score voting with `voting_sigma`)."""
    from torchvision.ops import batched_nms, clip_boxes_to_image

    cand_scores, cand_labels, cand_boxes = top_candidates(scores, boxes, level_sizes, pre_nms_topk)  # [N, D]...
    results = []
    for i, (height, width) in enumerate(image_sizes):
        det_scores, det_labels = cand_scores[i], cand_labels[i]  # [D] each
        det_boxes = clip_boxes_to_image(cand_boxes[i].float(), (height, width))  # [D, 4]
        if score_thresh > 0:
            above = det_scores > score_thresh
            det_scores, det_labels, det_boxes = det_scores[above], det_labels[above], det_boxes[above]
        kept = batched_nms(det_boxes, det_scores, det_labels, nms_iou)[:max_per_image]
        kept_boxes = det_boxes[kept]  # [D', 4]
        if voting_sigma is not None:  # PAA
            kept_boxes = score_voting(kept_boxes, det_labels[kept], det_boxes, det_scores, det_labels,
                                      sigma=voting_sigma)
            kept_boxes = clip_boxes_to_image(kept_boxes, (height, width))
        results.append({"boxes": kept_boxes, "scores": det_scores[kept], "labels": det_labels[kept]})
    return results


class OnnxDetector:
    """A file written by `export_onnx`, run by onnxruntime: `detector(images [N, 3, H, W])` returns what a
    `DenseDetector` returns in eval mode (N dicts of boxes, scores, labels; boxes clipped to H x W).

    `metadata` holds the file's metadata (json-decoded). Files exported without NMS get the post-processing in
    PyTorch with the exported model's test settings; with NMS it ran in the graph. `providers`: onnxruntime
    execution providers (default the CPU); `threads`: its intra-op threads (default onnxruntime's choice).
    """

    def __init__(self, path: str | Path, *, providers: Sequence[str] | None = None, threads: int | None = None
                 ) -> None:
        ort = _require("onnxruntime")
        path = Path(path)
        if not path.is_file():
            raise UserInputError(f"ONNX model {path} does not exist (write one with `efldet export`)")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(os.fspath(path), sess_options=options,
                                                providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as err:  # onnxruntime raises its own exception types for unreadable files
            raise UserInputError(f"{path} is not an ONNX model onnxruntime can load: {err}") from None
        raw = self.session.get_modelmeta().custom_metadata_map
        if "with_nms" not in raw:
            raise UserInputError(f"{path} was not written by efldet's exporter (no efldet metadata): export the "
                                 "checkpoint with `efldet export`")
        self.metadata = {key: _decode(value) for key, value in raw.items()}
        self.path = path
        self.with_nms = bool(self.metadata["with_nms"])

    def run(self, images: Tensor) -> dict[str, Tensor]:
        """The graph's raw outputs by name for images [N, 3, H, W]."""
        outputs = self.session.run(None, {"images": images.detach().float().cpu().numpy()})
        names = [o.name for o in self.session.get_outputs()]
        return {name: torch.from_numpy(value) for name, value in zip(names, outputs, strict=True)}

    def __call__(self, images: Tensor) -> list[dict[str, Tensor]]:
        out = self.run(images)
        n, height, width = images.shape[0], images.shape[-2], images.shape[-1]
        if self.with_nms:
            batch = out["det_batch"]  # [D]
            return [{"boxes": out["det_boxes"][batch == i], "scores": out["det_scores"][batch == i],
                     "labels": out["det_labels"][batch == i]} for i in range(n)]
        meta = self.metadata
        return detections_from_scores(
            out["scores"], out["boxes"], out["level_sizes"].tolist(), [(height, width)] * n,
            pre_nms_topk=meta["pre_nms_topk"], score_thresh=meta["score_thresh"], nms_iou=meta["nms_iou"],
            max_per_image=meta["max_per_image"], voting_sigma=meta.get("voting_sigma"))


def _decode(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def predict_onnx(model_path: str | Path, inputs: Sequence[str], out_dir: str | Path, *,
                 score_threshold: float = 0.3, max_drawn: int = 50) -> Path:
    """`efldet predict --onnx`: the same drawn PNGs and detections.json as `efldet.engine.predict_images`, with
    the exported model run by onnxruntime on the CPU. Returns the json path."""
    from efldet.engine.predict import write_predictions

    detector = OnnxDetector(model_path)
    meta = detector.metadata
    missing = [key for key in ("test_short_side", "max_size", "class_names", "category_ids") if key not in meta]
    if missing:
        raise UserInputError(f"{model_path} lacks the metadata {missing} that prediction needs: export it from a "
                             "checkpoint with `efldet export --weights CKPT`")
    return write_predictions(lambda tensor: detector(tensor[None])[0], inputs, out_dir,
                             short_side=meta["test_short_side"], max_size=meta["max_size"],
                             names=meta["class_names"], category_ids=meta["category_ids"],
                             score_threshold=score_threshold, max_drawn=max_drawn)
