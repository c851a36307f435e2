"""`efldet data export-yolo` against hand-computed label files and its errors; EFL / EQFL inside Ultralytics YOLO
(skipped when the `ultralytics` extra is not installed): QFL(beta=0) through the integration equals the host's BCE,
2-iteration trainings with EQFL and EFL use efldet's loss and keep its statistics (float32) in the checkpoint."""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from efldet.cli import main as cli_main
from efldet.data.yolo_export import export_yolo, yolo_label_lines
from efldet.errors import UserInputError
from efldet.losses import EqualizedFocalLoss, EqualizedQualityFocalLoss

os.environ.setdefault("YOLO_OFFLINE", "1")  # read when ultralytics is first imported: no analytics, no update checks


# ----------------------------------------------------------------------------------------------- export-yolo
def write_coco(root: Path) -> None:
    """Two images (100 x 50 and 40 x 40 PNG); categories listed with ids 7 and 3 (so label 0 = id 3)."""
    (root / "imgs").mkdir(parents=True)
    Image.new("RGB", (100, 50), (10, 20, 30)).save(root / "imgs" / "a.png")
    Image.new("RGB", (40, 40), (40, 50, 60)).save(root / "imgs" / "b.png")
    coco = {
        "images": [{"id": 5, "file_name": "imgs/a.png", "width": 100, "height": 50},
                   {"id": 9, "file_name": "imgs/b.png", "width": 40, "height": 40}],
        "categories": [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 7, "bbox": [10, 5, 20, 10]},
            {"id": 2, "image_id": 5, "category_id": 3, "bbox": [90, 40, 20, 20]},   # leaves the image: clipped
            {"id": 3, "image_id": 5, "category_id": 3, "bbox": [0, 0, 5, 5], "iscrowd": 1},  # crowd: left out
        ],
    }
    for split in ("train", "val"):
        (root / f"{split}.json").write_text(json.dumps(coco))


def test_export_yolo_writes_hand_computed_labels_linked_images_and_yaml(tmp_path):
    write_coco(tmp_path / "src")
    result = export_yolo(tmp_path / "src", tmp_path / "out")
    labels = (tmp_path / "out" / "labels" / "train" / "a.txt").read_text().splitlines()
    # id 7 -> class 1: centre (20, 10) / (100, 50), size (20, 10) / (100, 50); id 3 -> class 0, clipped to
    # x 90..100, y 40..50: centre (95, 45), size (10, 10)
    assert labels == ["1 0.200000 0.200000 0.200000 0.200000", "0 0.950000 0.900000 0.100000 0.200000"]
    assert (tmp_path / "out" / "labels" / "val" / "b.txt").read_text() == ""  # no boxes: a background image
    image = tmp_path / "out" / "images" / "train" / "a.png"
    assert image.read_bytes() == (tmp_path / "src" / "imgs" / "a.png").read_bytes()
    assert result.link_modes["train"] in ("hardlink", "symlink")  # linked, not re-encoded
    yaml_text = result.yaml_path.read_text()
    assert f'path: "{(tmp_path / "out").resolve()}"' in yaml_text
    assert "train: images/train\nval: images/val\nnames:\n  0: \"three\"\n  1: \"seven\"\n" in yaml_text
    assert result.images == {"train": 2, "val": 2} and result.boxes == {"train": 2, "val": 2}


def test_export_yolo_repeat_factor_list(tmp_path, capsys):
    write_coco(tmp_path / "src")
    # train: image a holds both classes, b none: f_c = 1/2, so with t = 1, power 2: r_a = (1 / 0.5)^2 = 4, r_b = 1
    result = export_yolo(tmp_path / "src", tmp_path / "out", rfs_threshold=1.0, rfs_power=2.0)
    assert result.train_list == tmp_path / "out" / "train_rfs.txt" and result.train_epoch_images == 5
    assert result.train_list.read_text().splitlines() == ["./images/train/a.png"] * 4 + ["./images/train/b.png"]
    assert "train: train_rfs.txt\nval: images/val\n" in result.yaml_path.read_text()
    # t = 0.5, power 0.5: r_a = 1 (no class below the threshold): every image once
    result = export_yolo(tmp_path / "src", tmp_path / "out", rfs_threshold=0.5, overwrite=True)
    assert result.train_list.read_text().splitlines() == ["./images/train/a.png", "./images/train/b.png"]
    result = export_yolo(tmp_path / "src", tmp_path / "out", overwrite=True)  # no RFS: the stale list goes
    assert result.train_list is None and not (tmp_path / "out" / "train_rfs.txt").exists()
    assert "train: images/train\n" in result.yaml_path.read_text()
    for bad, match in (({"rfs_threshold": 0.0}, "rfs-threshold must be in"), ({"rfs_threshold": 0.1, "rfs_power": 0},
                                                                            "rfs-power must be > 0")):
        with pytest.raises(UserInputError, match=match):
            export_yolo(tmp_path / "src", tmp_path / "bad", **bad)
    assert cli_main(["data", "export-yolo", "--data", str(tmp_path / "src"), "--out", str(tmp_path / "cli"),
                     "--rfs-threshold", "1", "--rfs-power", "2"]) == 0
    assert "lists 5 training images per epoch (2 distinct)" in capsys.readouterr().out


def test_label_lines_drop_boxes_outside_the_image():
    lines = yolo_label_lines(np.array([[-10.0, -10.0, -1.0, 5.0], [0.0, 0.0, 8.0, 4.0]]), np.array([2, 4]), 8.0, 8.0)
    assert lines == ["4 0.500000 0.250000 1.000000 0.500000"]


def test_export_yolo_errors_and_the_command_line(tmp_path, capsys):
    write_coco(tmp_path / "src")
    with pytest.raises(UserInputError, match="does not exist"):
        export_yolo(tmp_path / "nothing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="must hold train.json and val.json"):
        export_yolo(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(UserInputError, match="link mode"):
        export_yolo(tmp_path / "src", tmp_path / "out", link="move")
    # one json file: exported as train, used as val too
    result = export_yolo(tmp_path / "src" / "train.json", tmp_path / "one", link="copy")
    assert result.images == {"train": 2} and "val: images/train" in result.yaml_path.read_text()
    with pytest.raises(UserInputError, match="not empty"):
        export_yolo(tmp_path / "src" / "train.json", tmp_path / "one")
    export_yolo(tmp_path / "src" / "train.json", tmp_path / "one", overwrite=True)
    (tmp_path / "src" / "imgs" / "b.png").unlink()
    assert cli_main(["data", "export-yolo", "--data", str(tmp_path / "src"), "--out", str(tmp_path / "cli")]) == 2
    assert "image file(s) listed in 'images' do not exist" in capsys.readouterr().err


def test_missing_extra_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "ultralytics.models.yolo.detect", None)  # import fails as if not installed
    monkeypatch.delitem(sys.modules, "efldet.integrations.ultralytics", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'efldet\[ultralytics\]'"):
        importlib.import_module("efldet.integrations.ultralytics")
    monkeypatch.delitem(sys.modules, "efldet.integrations.ultralytics", raising=False)


# ----------------------------------------------------------------------------------------------- Ultralytics
@pytest.fixture(scope="module")
def yolo():
    """The integration module; skips the Ultralytics tests when the extra is absent. One torch thread."""
    pytest.importorskip("ultralytics", reason="the Ultralytics extra is not installed: pip install "
                        "'efldet[ultralytics]'")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield importlib.import_module("efldet.integrations.ultralytics")
    torch.set_num_threads(threads)  # Ultralytics sets its own count on the CPU


@pytest.fixture(scope="module")
def yolo_dataset(tiny_dataset, tmp_path_factory):
    return export_yolo(tiny_dataset, tmp_path_factory.mktemp("yolo")).yaml_path


def test_quality_focal_with_beta_0_through_the_integration_equals_ultralytics_bce(yolo):
    from ultralytics.cfg import get_cfg
    from ultralytics.utils.loss import v8DetectionLoss

    torch.manual_seed(0)
    config = yolo.YoloLossConfig(loss="qfl", gamma_b=0.0, normalizer="target_scores_sum")
    model = yolo.detection_model("yolov8n.yaml", num_classes=6, loss_config=config)
    model.args = get_cfg()  # the default hyperparameters (box, cls, dfl gains)
    model.model[-1].bias_init()
    with torch.no_grad():  # classification logits near 0, so that the BCE differs from any focal-like loss
        for branch in model.model[-1].cv3:
            branch[-1].bias.fill_(-0.5)
    batch = {"img": torch.rand(2, 3, 64, 64), "batch_idx": torch.tensor([0.0, 0.0, 1.0]),
             "cls": torch.tensor([[1.0], [4.0], [2.0]]),
             "bboxes": torch.tensor([[0.3, 0.3, 0.4, 0.5], [0.7, 0.6, 0.3, 0.4], [0.5, 0.5, 0.6, 0.6]])}
    preds = model(batch["img"])
    ours, our_items = yolo.EfldetDetectionLoss(model)(preds, batch)
    host, host_items = v8DetectionLoss(model)(preds, batch)
    assert float(host_items["cls_loss"]) > 0.1
    torch.testing.assert_close(ours, host, rtol=1e-5, atol=1e-6)
    for key in host_items:
        torch.testing.assert_close(our_items[key], host_items[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loss", ["eqfl", "efl"])
def test_two_iterations_train_with_the_efldet_loss_and_save_its_statistics(yolo, yolo_dataset, tmp_path, loss):
    config = yolo.YoloLossConfig(loss=loss, scale_factor=4.0)
    trainer_cls = yolo.efldet_trainer(config)
    overrides = dict(model="yolov8n.yaml", data=str(yolo_dataset), epochs=1, imgsz=64, batch=4, fraction=8,
                     workers=0, device="cpu", amp=False, plots=False, val=False, project=str(tmp_path), name="run",
                     exist_ok=True, verbose=False, seed=0)
    trainer = trainer_cls(overrides=overrides)
    trainer.train()
    torch.set_num_threads(1)
    model = trainer.model
    cls_loss = model.cls_loss
    expected = EqualizedQualityFocalLoss if loss == "eqfl" else EqualizedFocalLoss
    assert isinstance(cls_loss.loss, expected) and cls_loss.soft_targets == (loss == "eqfl")
    assert int(cls_loss.iterations) == 2  # 8 images, batch 4: the efldet loss ran in both training steps
    assert (cls_loss.loss.neg_grad > 0).all() and (cls_loss.loss.pos_grad > 0).any()  # accumulated in backward
    assert all(torch.isfinite(torch.as_tensor(v)) for v in trainer.tloss.values())
    checkpoint = torch.load(trainer.last, map_location="cpu", weights_only=False)
    state = checkpoint["model"].state_dict()
    for name in ("pos_grad", "neg_grad"):
        saved = state[f"cls_loss.loss.{name}"]
        assert saved.dtype == torch.float32  # not the fp16 of the rest of the checkpoint
        torch.testing.assert_close(saved, getattr(cls_loss.loss, name))  # exact, not an EMA average
    assert int(state["cls_loss.iterations"]) == 2


def test_ultralytics_reads_every_line_of_the_repeat_factor_list(yolo, tmp_path):
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    write_coco(tmp_path / "src")
    result = export_yolo(tmp_path / "src", tmp_path / "out", rfs_threshold=1.0, rfs_power=2.0)
    data = check_det_dataset(str(result.yaml_path))
    dataset = YOLODataset(img_path=data["train"], data=data, imgsz=64, augment=False)
    assert [Path(f).name for f in dataset.im_files] == ["a.png"] * 4 + ["b.png"]  # duplicates kept: 4 draws of a


def test_configuration_errors(yolo):
    with pytest.raises(UserInputError, match="choose one of"):
        yolo.YoloLossConfig(loss="softmax")
    with pytest.raises(UserInputError, match="normalizer"):
        yolo.YoloLossConfig(loss="efl", normalizer="batch")
    with pytest.raises(UserInputError, match="end-to-end heads"):
        yolo.detection_model("yolo26n.yaml", num_classes=3, loss_config=yolo.YoloLossConfig(loss="efl"))
    with pytest.raises(UserInputError, match="no default"):  # no setting helped on our benchmark: no silent default
        yolo.efldet_trainer(None)


def test_tal_targets_become_efldet_labels_scores_and_normalizers(yolo):
    targets = torch.zeros(2, 5, 3)  # [N, A, C]: TAL scores, one non-zero class per foreground anchor
    targets[0, 1, 2], targets[1, 4, 0], targets[1, 0, 1] = 0.5, 0.25, 0.125
    logits = torch.randn(2, 5, 3)
    labels = torch.tensor([3, 2, 3, 3, 3, 1, 3, 3, 3, 0])  # row k = image k // 5, anchor k % 5; 3 = background
    scores = targets.reshape(10, 3).amax(dim=1)
    efl = yolo.TALClassificationLoss(EqualizedFocalLoss(num_classes=3), normalizer="foreground")
    torch.testing.assert_close(efl(logits, targets), EqualizedFocalLoss(num_classes=3)(
        logits.reshape(10, 3), labels, normalizer=3.0))
    eqfl = yolo.TALClassificationLoss(EqualizedQualityFocalLoss(num_classes=3), normalizer="target_scores_sum")
    assert eqfl.soft_targets and not efl.soft_targets
    torch.testing.assert_close(eqfl(logits, targets), EqualizedQualityFocalLoss(num_classes=3)(
        logits.reshape(10, 3), labels, scores, normalizer=1.0))  # 0.875 < 1: clamped to 1 as the host does


def test_scale_factor_warms_up_while_statistics_accumulate(yolo):
    term = yolo.TALClassificationLoss(EqualizedFocalLoss(num_classes=3, scale_factor=4.0), warmup_iters=4)
    targets = torch.zeros(1, 6, 3)
    targets[0, 0, 0] = 0.5
    seen = []
    for _ in range(6):
        logits = torch.randn(1, 6, 3, requires_grad=True)
        term(logits, targets).backward()
        seen.append(term.loss.scale_factor)
    assert seen == [0.0, 1.0, 2.0, 3.0, 4.0, 4.0] and int(term.iterations) == 6
    assert term.loss.neg_grad.sum() > 0 and term.loss.pos_grad[0] > 0
