"""Integrations: EFL inside other frameworks' detectors.

`efldet.integrations.torchvision.use_efldet_loss(model, loss)`: any efldet classification loss as the
classification loss of a `torchvision.models.detection` RetinaNet or FCOS, its statistics in the state dict.

`efldet.integrations.ultralytics` (optional extra `efldet[ultralytics]`; Ultralytics is AGPL-3.0 and is imported
only by that module): `efldet_trainer(YoloLossConfig(...))` trains a YOLOv8 / YOLO11 detector with EFL / EQFL as
its classification term, the statistics saved in the model and its checkpoints.
"""
