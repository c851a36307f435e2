"""Integrations: EFL inside other frameworks' detectors.

`efldet.integrations.torchvision.use_efldet_loss(model, loss)`: any efldet classification loss as the
classification loss of a `torchvision.models.detection` RetinaNet or FCOS, its statistics in the state dict.
"""
