"""ONNX export: onnxruntime agrees with PyTorch for every detector family, before and after NMS, at sizes other
than the traced one; `efldet export` + `efldet predict --onnx` give the PyTorch path's outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import REPO, tiny_overrides

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from efldet.cli import _ONNX_OPSET, main  # noqa: E402
from efldet.config import load_config, to_dict  # noqa: E402
from efldet.engine.checkpoint import save_atomic  # noqa: E402
from efldet.export import OPSET, ExportableDetector, OnnxDetector, export_onnx  # noqa: E402
from efldet.models import DetectorConfig, build_detector  # noqa: E402
from efldet.models.build import BackboneConfig, HeadConfig, NeckConfig  # noqa: E402

FAMILIES = ("atss_iou", "atss", "retinanet", "fcos", "paa", "yolox_ip", "yolox")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster (conftest)


def tiny_detector(name: str, seed: int = 0) -> torch.nn.Module:
    """A small detector whose scores are spread out (no near-ties that could reorder NMS): a few thousand
    parameters for the FPN families, YOLOX-Nano's network for the YOLOX ones."""
    torch.manual_seed(seed)
    if name.startswith("yolox"):
        cfg = DetectorConfig(name=name, num_classes=5, backbone=BackboneConfig(name="cspdarknet", size="nano"))
    else:
        cfg = DetectorConfig(name=name, num_classes=5,
                             backbone=BackboneConfig(name="tiny", tiny_widths=(8, 8, 16, 16, 16)),
                             neck=NeckConfig(channels=16), head=HeadConfig(num_convs=0, norm_groups=4))
    model = build_detector(cfg).eval()
    if name.startswith("yolox"):
        _condition_yolox(model)
        return model
    head = model.head
    for layer in (head.cls_logits, head.quality_logits):
        if layer is not None:
            torch.nn.init.normal_(layer.weight, std=0.3)
    return model


def _condition_yolox(model: torch.nn.Module) -> None:
    """An untrained conv-BN network in eval mode (BN = identity) shrinks its features to ~0 and every score to the
    prior. Give the BNs the statistics of one random batch, then scale every prediction conv so that its outputs
    have a fixed spread on that batch (classification / quality logits std 2, box regression std 0.05): spread
    scores, moderate boxes, and logits small enough for a float32 comparison."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: one batch sets the statistics
    images = torch.randn(8, 3, 256, 256, generator=torch.Generator().manual_seed(5))  # enough pixels at stride 32
    head = model.head
    with torch.no_grad():
        model.train()
        head(model.features(images))
        model.eval()
        for level, feat in enumerate(model.features(images)):
            stem = head.stems[level](feat)
            cls_feat, reg_feat = head.cls_convs[level](stem), head.reg_convs[level](stem)
            head.obj_preds[level].bias.zero_()  # objectness / IoU around 0.5, not at YOLOX's prior of 0.01
            preds = ((head.cls_preds[level], cls_feat, 2.0), (head.obj_preds[level], reg_feat, 2.0),
                     (head.reg_preds[level], reg_feat, 0.05))
            for layer, inputs, spread in preds:
                torch.nn.init.normal_(layer.weight)
                layer.weight.mul_(spread / (layer(inputs) - layer.bias[:, None, None]).std())


def detection_rows(det: dict[str, torch.Tensor]) -> np.ndarray:
    """Detections as rows (label, x1, y1, x2, y2, score) sorted by label then box, to compare kept sets."""
    rows = torch.cat([det["labels"][:, None].double(), det["boxes"].double(), det["scores"][:, None].double()], 1)
    rows = rows.numpy()
    return rows[np.lexsort(rows[:, ::-1][:, 1:].T)] if len(rows) else rows


@pytest.mark.parametrize(("name", "max_per_image", "score_thresh"),
                         [("atss_iou", 7, 0.2), ("atss", 300, 0.0), ("retinanet", 300, 0.0), ("fcos", 300, 0.0),
                          ("paa", 300, 0.0), ("paa", 20, 0.3), ("yolox_ip", 300, 0.0), ("yolox", 50, 0.05)])
def test_onnxruntime_matches_pytorch_before_and_after_nms(name, max_per_image, score_thresh, tmp_path):
    model = tiny_detector(name)
    model.test_max_per_image, model.test_score_thresh = max_per_image, score_thresh
    raw = OnnxDetector(export_onnx(model, tmp_path / "raw.onnx", input_size=(96, 128)))
    nms = OnnxDetector(export_onnx(model, tmp_path / "nms.onnx", input_size=(96, 128), with_nms=True))
    assert not raw.with_nms and nms.with_nms and raw.metadata["opset"] == OPSET == _ONNX_OPSET
    assert nms.metadata["max_per_image"] == max_per_image and nms.metadata["score_thresh"] == score_thresh
    generator = torch.Generator().manual_seed(1)
    for shape in [(2, 3, 96, 128), (1, 3, 160, 72)]:  # the traced size, then another batch and size
        images = torch.randn(*shape, generator=generator)
        with torch.no_grad():
            boxes, scores, level_sizes = ExportableDetector(model)(images)
            reference = model(images)
        out = raw.run(images)
        assert out["scores"].shape == scores.shape == (shape[0], level_sizes.sum(), 5)
        torch.testing.assert_close(out["scores"], scores, rtol=0, atol=1e-4)
        # 1e-4 px, and float32 resolution (~1e-7 relative) for the coordinates of the large P7 anchors
        torch.testing.assert_close(out["boxes"], boxes, rtol=1e-6, atol=1e-4)
        assert out["level_sizes"].tolist() == level_sizes.tolist()
        # score = sigmoid(cls) x sigmoid(quality) with a quality branch, sigmoid(cls) without
        with torch.no_grad():
            cls, _, quality = model.predict_raw(model.features(images))
        expected = cls.sigmoid() * (quality.sigmoid()[..., None] if name != "retinanet" else 1.0)
        torch.testing.assert_close(scores, expected)
        for graph in (nms, raw):  # NMS in the graph, and the PyTorch post-processing of the raw outputs
            detections = graph(images)
            assert len(detections) == shape[0]
            for det, ref in zip(detections, reference, strict=True):
                assert 0 < len(ref["boxes"]) <= max_per_image and det["boxes"].shape == ref["boxes"].shape
                assert (det["scores"] > score_thresh).all() or score_thresh == 0
                assert (det["scores"][:-1] >= det["scores"][1:]).all()
                if name == "paa":
                    # Score voting weights candidates by exp(-(1 - IoU)^2 / 0.025), which magnifies the 1e-4 px
                    # differences of the boxes it averages (measured here: up to 0.05 px): same detections, coordinates
                    # to 0.2 px. (The PyTorch graph and the detector agree exactly; see the raw outputs above.)
                    got, want = detection_rows(det), detection_rows(ref)
                    np.testing.assert_array_equal(got[:, 0], want[:, 0])
                    np.testing.assert_allclose(got[:, 5], want[:, 5], rtol=1e-6, atol=1e-4)
                    np.testing.assert_allclose(got[:, 1:5], want[:, 1:5], atol=0.2)
                    continue
                np.testing.assert_allclose(detection_rows(det), detection_rows(ref), rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("name", ["retinanet", "paa"])
def test_graph_with_nms_run_by_pytorch_gives_the_detector_output(name):
    model = tiny_detector(name, seed=2)
    model.test_max_per_image = 40
    images = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        boxes, scores, labels, image = ExportableDetector(model, with_nms=True)(images)
        reference = model(images)
    for i, ref in enumerate(reference):
        det = {"boxes": boxes[image == i], "scores": scores[image == i], "labels": labels[image == i]}
        assert len(ref["scores"]) == 40 and torch.equal(det["scores"], ref["scores"])
        np.testing.assert_allclose(detection_rows(det), detection_rows(ref), rtol=0, atol=1e-6)


def test_export_rejects_a_tiny_input_size(tmp_path):
    from efldet.errors import UserInputError

    with pytest.raises(UserInputError, match="at least 32 pixels"):
        export_onnx(tiny_detector("fcos"), tmp_path / "m.onnx", input_size=(16, 64))


def test_command_line_export_and_predict_onnx_match_the_pytorch_path(tiny_dataset, tmp_path, capsys):
    cfg = load_config(str(REPO / "configs" / "synthetic" / "tiny.yaml"), tiny_overrides(tiny_dataset, tmp_path))
    torch.manual_seed(0)
    model = build_detector(cfg.model)
    torch.nn.init.normal_(model.head.cls_logits.weight, std=0.3)
    names = [f"class{i}" for i in range(cfg.model.num_classes)]
    weights = save_atomic({"model": model.state_dict(), "config": to_dict(cfg), "class_names": names,
                           "category_ids": list(range(11, 11 + cfg.model.num_classes))}, tmp_path / "ckpt.pt")
    images = sorted((tiny_dataset / "images").glob("*.png"))[:2]
    assert main(["predict", "--weights", str(weights), *map(str, images), "--out", str(tmp_path / "torch"),
                 "--score-threshold", "0.0", "--device", "cpu"]) == 0
    reference = json.loads((tmp_path / "torch" / "detections.json").read_text())
    assert reference and {d["category_name"] for d in reference} <= set(names)
    # (the file without NMS runs the same post-processing as the parity tests check; here the one with NMS)
    onnx_path = tmp_path / "model.onnx"
    assert main(["export", "--weights", str(weights), "--format", "onnx", "--out", str(onnx_path), "--with-nms"]) == 0
    assert f"opset {OPSET}" in capsys.readouterr().out
    assert main(["predict", "--onnx", str(onnx_path), *map(str, images), "--out", str(tmp_path / "onnx"),
                 "--score-threshold", "0.0"]) == 0
    assert sorted(p.name for p in (tmp_path / "onnx").glob("*.png")) == sorted(p.name for p in images)
    detections = json.loads((tmp_path / "onnx" / "detections.json").read_text())
    key = lambda d: (d["image_id"], d["category_id"], d["bbox"])  # noqa: E731
    assert len(detections) == len(reference)
    for got, want in zip(sorted(detections, key=key), sorted(reference, key=key), strict=True):
        assert (got["file_name"], got["category_id"], got["category_name"]) == (
            want["file_name"], want["category_id"], want["category_name"])
        np.testing.assert_allclose(got["bbox"], want["bbox"], atol=0.02)
        assert abs(got["score"] - want["score"]) <= 2e-5
    metadata = OnnxDetector(onnx_path).metadata
    assert metadata["class_names"] == names and metadata["test_short_side"] == cfg.data.test_short_side


def test_command_line_export_and_predict_errors_exit_2(tmp_path, capsys):
    assert main(["export", "--weights", str(tmp_path / "none.pt"), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    assert main(["predict", "--onnx", str(tmp_path / "bad.onnx"), str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "not an ONNX model" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --weights and --onnx are exclusive
        main(["predict", "--weights", "a.pt", "--onnx", "b.onnx", str(tmp_path), "--out", str(tmp_path)])
