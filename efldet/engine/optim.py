"""SGD with per-parameter-group weight decay, and the learning-rate schedule (warm-up + multi-step / cosine).

The schedule is a pure function of the iteration, so resuming needs nothing but the iteration count.
`lr` is always the total learning rate for the global batch; nothing rescales it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from efldet.config import OptimConfig
from efldet.errors import UserInputError

_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm)


def parameter_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Group trainable parameters by weight decay: conv/linear weights, norm layers, other biases, and the last
    classification layer's bias (its own decay only when `cls_bias_weight_decay` is set, as in YOLOX-IP)."""
    cls_biases: set[int] = set()
    if cfg.cls_bias_weight_decay is not None:
        cls_biases = {id(p) for p in _classification_biases(model)}
    groups: dict[str, list[nn.Parameter]] = {"weights": [], "norm": [], "bias": [], "cls_bias": []}
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if isinstance(module, _NORM_TYPES):
                groups["norm"].append(param)
            elif id(param) in cls_biases:
                groups["cls_bias"].append(param)
            elif name == "bias" or param.dim() <= 1:
                groups["bias"].append(param)
            else:
                groups["weights"].append(param)
    decay = {"weights": cfg.weight_decay, "norm": cfg.norm_weight_decay, "bias": cfg.bias_weight_decay,
             "cls_bias": cfg.cls_bias_weight_decay}
    return [{"params": params, "weight_decay": decay[name], "name": name}
            for name, params in groups.items() if params]


def _classification_biases(model: nn.Module) -> list[nn.Parameter]:
    """The biases of the head's final classification conv(s), by contract `model.head.classification_biases()`
    (one per level for YOLOX's unshared head, one for the shared dense head)."""
    head = getattr(model, "head", None)
    biases = head.classification_biases() if hasattr(head, "classification_biases") else []
    if not biases or not all(isinstance(b, nn.Parameter) for b in biases):
        raise UserInputError("optim.cls_bias_weight_decay is set but the model's head has no classification "
                             "biases (head.classification_biases()); leave it unset for this detector")
    return list(biases)


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.SGD:
    if not cfg.lr > 0:
        raise UserInputError(f"optim.lr must be > 0, got {cfg.lr}")
    return torch.optim.SGD(parameter_groups(model, cfg), lr=cfg.lr, momentum=cfg.momentum)


class LRSchedule:
    """lr(iteration) = lr * warm-up factor * schedule factor.

    Warm-up: linear from warmup_ratio to 1 over `warmup_iters` iterations (`warmup_epochs` epochs when set).
    Schedule by epoch (fractional epochs = iteration / iters_per_epoch): multistep multiplies by gamma after each
    milestone epoch; cosine decays from 1 to min_lr_ratio over the whole run.
    """

    def __init__(self, cfg: OptimConfig, *, iters_per_epoch: int, total_iters: int) -> None:
        if cfg.schedule not in ("multistep", "cosine"):
            raise UserInputError(f"optim.schedule must be 'multistep' or 'cosine', got {cfg.schedule!r}")
        if iters_per_epoch < 1 or total_iters < 1:
            raise UserInputError(f"the training set gives {iters_per_epoch} iterations per epoch and {total_iters} "
                                 "in all; it needs at least one batch (check data.train_ann and train.batch_size)")
        self.cfg = cfg
        self.iters_per_epoch = iters_per_epoch
        self.total_iters = total_iters
        self.warmup_iters = (cfg.warmup_iters if cfg.warmup_epochs is None
                             else round(cfg.warmup_epochs * iters_per_epoch))  # in iterations

    def factor(self, iteration: int) -> float:
        cfg = self.cfg
        warmup = 1.0
        if iteration < self.warmup_iters:
            alpha = iteration / self.warmup_iters
            warmup = cfg.warmup_ratio * (1 - alpha) + alpha
        if cfg.schedule == "multistep":
            epoch = iteration / self.iters_per_epoch
            steps = sum(1 for milestone in cfg.milestones if epoch >= milestone)
            return warmup * cfg.gamma**steps
        progress = min(iteration / self.total_iters, 1.0)
        cosine = cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        return warmup * cosine

    def apply(self, optimizer: torch.optim.Optimizer, iteration: int) -> float:
        """Set every group's lr for `iteration`; returns the lr of the first group."""
        lr = self.cfg.lr * self.factor(iteration)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr
