"""EFL / EQFL as the classification loss of Ultralytics YOLO detectors (YOLOv8, YOLO11): optional extra.

    pip install 'efldet[ultralytics]'          # Ultralytics is AGPL-3.0: an optional dependency, never vendored
    from ultralytics import YOLO
    from efldet.integrations.ultralytics import YoloLossConfig, efldet_trainer
    YOLO("yolov8n.yaml").train(data="dataset.yaml", trainer=efldet_trainer(YoloLossConfig(loss="efl")), ...)

What changes. Ultralytics' `v8DetectionLoss` computes its classification term inline (ultralytics/utils/loss.py,
`v8DetectionLoss.get_assigned_targets_and_loss`): `self.bce(pred_scores, target_scores)` with `self.bce =
nn.BCEWithLogitsLoss(reduction="none")`, optionally times `class_weights`, summed and divided by
`target_scores.sum().clamp(min=1)`, then times the `cls` gain. `target_scores` [N, A, C] are the
TaskAlignedAssigner's soft targets: at a foreground anchor, its class holds the normalised alignment metric
(score^0.5 IoU^6, rescaled so that each object's best anchor gets that object's best IoU), every other entry is 0.
There is no method for that term alone, so the loss subclass here puts its own callable into the `bce` slot (a
public attribute): it turns (pred_scores, target_scores) into efldet's inputs, evaluates the efldet loss and hands
back a value whose sum divided by `target_scores.sum().clamp(min=1)` is that loss. Assignment, box and DFL losses,
gains, AMP, EMA and inference stay Ultralytics'. Public extension points used: `DetectionTrainer.get_model` and
`BaseTrainer.optimizer_step` (trainer subclass), `DetectionModel.init_criterion` (model subclass) and the
`v8DetectionLoss.bce` attribute (loss subclass). The missing one: a `v8DetectionLoss` method for the
classification term, e.g. `cls_loss(pred_scores, target_scores, target_scores_sum, fg_mask)`.

How TAL's targets become efldet's. An anchor is foreground when its target row is non-zero (an anchor TAL marks
foreground with a 0 target gets no box loss and a 0 classification target, so the host treats it as background in
every term too); its label is the class of that entry (efldet label = YOLO class index). Losses with soft targets
(EQFL, QFL: `needs_scores`) get the TAL score as y'; hard-target losses (EFL, focal) get one-hot labels. Normalizer:
`"target_scores_sum"` (the host's) or `"foreground"` (the number of foreground anchors, as the paper's focal loss
and EFL), both at least 1.

Statistics. The efldet loss is a submodule of the model (`cls_loss.loss`), so its `pos_grad` / `neg_grad` are in
`model.state_dict()` and in Ultralytics checkpoints, kept float32 and exact: the trainer copies them into the EMA
model after each step (the EMA would otherwise average them) and the model's `half()` (Ultralytics saves
`ema.half()`) leaves them float32 (fp16 would clamp long accumulations at 65504). `warmup_iters` > 0 ramps the
scale factor s linearly from 0 over that many training iterations while the statistics accumulate from the first.

Offline. A model built from a yaml (`yolov8n.yaml`) downloads no weights; `amp=False` (AMP is off on the CPU
anyway) skips the AMP check, which downloads yolo26n.pt; `plots=False` draws nothing (plots need Arial.ttf);
`YOLO_OFFLINE=1` (set before importing ultralytics) turns off the analytics events and update checks. The
dataset check still looks for Arial.ttf: found in `$YOLO_CONFIG_DIR` (or matplotlib's font list) it stops there,
else it tries one HEAD request with a 3 s timeout that fails harmlessly offline.

Shape letters: N images, A anchor points of all levels, C classes, K = N * A rows of the efldet loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from efldet.errors import UserInputError
from efldet.losses import EqualizedFocalLoss, EqualizedQualityFocalLoss, FocalLoss, QualityFocalLoss
from efldet.losses.grad_stats import GradientStatistics

INSTALL_HINT = "pip install 'efldet[ultralytics]'"
try:  # imported only when this module is: efldet itself never needs Ultralytics
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils import DEFAULT_CFG, RANK
    from ultralytics.utils.loss import v8DetectionLoss
    from ultralytics.utils.torch_utils import unwrap_model
except ImportError as _err:
    raise ImportError(f"efldet.integrations.ultralytics needs the `ultralytics` package: {INSTALL_HINT} "
                      f"(Ultralytics is AGPL-3.0, an optional extra of efldet); the import failed: {_err}") from _err

LOSSES = ("efl", "eqfl", "focal", "qfl")
NORMALIZERS = ("target_scores_sum", "foreground")


@dataclass(frozen=True)
class YoloLossConfig:
    """The efldet classification loss of a YOLO detector. `loss` has no default on purpose: on our benchmark no
    setting beat the host's BCE (README, "Use EFL in your own detector"), so the choice is the user's."""

    loss: str  # efl | eqfl | focal | qfl (efl/focal: TAL positives as hard labels; eqfl/qfl: TAL scores)
    scale_factor: float = 4.0  # s of EFL / EQFL (the paper's YOLOX-IP value)
    gamma_b: float = 2.0  # gamma_b of EFL / EQFL, gamma of focal loss, beta of QFL
    alpha: float | None = None  # alpha of EFL / focal loss; None: no alpha balancing (EQFL and QFL have none)
    normalizer: str = "foreground"  # foreground | target_scores_sum (the host BCE's normalizer)
    warmup_iters: int = 0  # iterations over which s ramps linearly from 0 (statistics accumulate from the start)

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise UserInputError(f"YoloLossConfig.loss={self.loss!r}: choose one of {', '.join(LOSSES)}")
        if self.normalizer not in NORMALIZERS:
            raise UserInputError(f"YoloLossConfig.normalizer={self.normalizer!r}: choose one of "
                                 f"{', '.join(NORMALIZERS)}")
        if self.warmup_iters < 0:
            raise UserInputError(f"YoloLossConfig.warmup_iters must be >= 0, got {self.warmup_iters}")

    def build(self, num_classes: int) -> nn.Module:
        """The efldet loss module for `num_classes` classes."""
        if self.loss == "efl":
            return EqualizedFocalLoss(num_classes=num_classes, gamma_b=self.gamma_b, scale_factor=self.scale_factor,
                                      alpha=self.alpha)
        if self.loss == "eqfl":
            return EqualizedQualityFocalLoss(num_classes=num_classes, gamma_b=self.gamma_b,
                                             scale_factor=self.scale_factor)
        if self.loss == "focal":
            return FocalLoss(alpha=self.alpha, gamma=self.gamma_b)
        return QualityFocalLoss(beta=self.gamma_b)


class TALClassificationLoss(nn.Module):
    """An efldet classification loss fed with TaskAlignedAssigner targets.

    `forward(pred_logits [N, A, C], target_scores [N, A, C]) -> scalar` (the efldet loss / the normalizer). Holds
    the loss as submodule `loss` (its statistics buffers are saved with the model) and `iterations` (int64 buffer:
    training calls so far, for the s warm-up).
    """

    def __init__(self, loss: nn.Module, *, normalizer: str = "foreground", warmup_iters: int = 0) -> None:
        super().__init__()
        if normalizer not in NORMALIZERS:
            raise UserInputError(f"normalizer={normalizer!r}: choose one of {', '.join(NORMALIZERS)}")
        self.loss = loss
        self.normalizer = normalizer
        self.warmup_iters = int(warmup_iters)
        self.base_scale_factor = float(getattr(loss, "scale_factor", 0.0))
        self.register_buffer("iterations", torch.zeros((), dtype=torch.int64))

    @property
    def soft_targets(self) -> bool:
        """True when the loss takes TAL's scores as quality targets (EQFL, QFL), False for one-hot labels."""
        return bool(getattr(self.loss, "needs_scores", False))

    def forward(self, pred_logits: Tensor, target_scores: Tensor) -> Tensor:
        num_classes = pred_logits.shape[-1]
        logits = pred_logits.reshape(-1, num_classes)  # [N, A, C] -> [K, C]
        targets = target_scores.detach().reshape(-1, num_classes).float()  # [N, A, C] -> [K, C]
        score, label = targets.max(dim=1)  # [K] each: the TAL score and class of each row
        foreground = score > 0
        labels = torch.where(foreground, label, torch.full_like(label, num_classes))  # [K], C = background
        if self.normalizer == "foreground":
            normalizer = max(float(foreground.sum()), 1.0)
        else:
            normalizer = max(float(targets.sum()), 1.0)
        if torch.is_grad_enabled() and self.training:
            if self.warmup_iters > 0 and hasattr(self.loss, "scale_factor"):
                ramp = min(1.0, float(self.iterations) / self.warmup_iters)
                self.loss.scale_factor = self.base_scale_factor * ramp
            self.iterations += 1
        scores = score.clamp(0.0, 1.0) if self.soft_targets else None
        return self.loss(logits, labels, scores=scores, normalizer=normalizer)

    def extra_repr(self) -> str:
        return f"normalizer={self.normalizer!r}, warmup_iters={self.warmup_iters}"


def _statistics_modules(module: nn.Module) -> dict[str, GradientStatistics]:
    return {name: m for name, m in module.named_modules() if isinstance(m, GradientStatistics)}


class EfldetDetectionLoss(v8DetectionLoss):
    """`v8DetectionLoss` whose classification term is the model's `cls_loss` (see the module docstring)."""

    def __init__(self, model: nn.Module, tal_topk: int = 10, tal_topk2: int | None = None) -> None:
        super().__init__(model, tal_topk=tal_topk, tal_topk2=tal_topk2)
        if self.class_weights is not None:
            raise UserInputError("cls_pw > 0 (Ultralytics' class weights) cannot be combined with an efldet loss: "
                                 "the equalization is the class balancing; train with cls_pw=0")
        self.cls_loss = model.cls_loss
        self.bce = self._efldet_classification

    def _efldet_classification(self, pred_scores: Tensor, target_scores: Tensor) -> Tensor:
        """The host's `bce` slot: a [1, 1, 1] tensor whose sum / target_scores.sum().clamp(min=1) is the efldet loss
        (the host divides by that sum next)."""
        value = self.cls_loss(pred_scores, target_scores)
        host_normalizer = target_scores.detach().float().sum().clamp(min=1.0)
        return (value * host_normalizer).reshape(1, 1, 1)  # [] -> [1, 1, 1]


class EfldetDetectionModel(DetectionModel):
    """`DetectionModel` with an efldet classification loss as submodule `cls_loss` (TALClassificationLoss)."""

    def __init__(self, cfg: str | dict = "yolov8n.yaml", ch: int = 3, nc: int | None = None, verbose: bool = True,
                 *, loss_config: YoloLossConfig | None = None) -> None:
        super().__init__(cfg, ch=ch, nc=nc, verbose=verbose)
        if getattr(self.model[-1], "one2one_cv2", None) is not None:
            raise UserInputError(f"{cfg}: end-to-end heads (YOLO26, YOLOv10) train two assignments with one loss; "
                                 "the efldet integration supports YOLOv8 / YOLO11-style Detect heads")
        config = _required(loss_config)
        self.cls_loss = TALClassificationLoss(config.build(int(self.model[-1].nc)), normalizer=config.normalizer,
                                              warmup_iters=config.warmup_iters)

    def init_criterion(self) -> EfldetDetectionLoss:
        return EfldetDetectionLoss(self)

    def half(self) -> EfldetDetectionModel:
        """Half precision for everything but the gradient statistics, which stay float32 (exact sums)."""
        kept = {name: (m.pos_grad.clone(), m.neg_grad.clone()) for name, m in _statistics_modules(self).items()}
        super().half()
        for name, (pos, neg) in kept.items():
            stats = self.get_submodule(name)
            stats.pos_grad, stats.neg_grad = pos, neg
        return self


class EfldetDetectionTrainer(DetectionTrainer):
    """`DetectionTrainer` that trains an `EfldetDetectionModel` with the loss `loss_config` describes.

    `YOLO(...).train(trainer=...)` passes no extra arguments: use `efldet_trainer(config)` there.
    """

    loss_config: YoloLossConfig | None = None  # set by `efldet_trainer(config)` or the constructor

    def __init__(self, cfg: Any = DEFAULT_CFG, overrides: dict[str, Any] | None = None,
                 _callbacks: dict | None = None, *, loss_config: YoloLossConfig | None = None) -> None:
        if loss_config is not None:
            self.loss_config = loss_config
        super().__init__(cfg, overrides, _callbacks)

    def get_model(self, cfg: str | dict | None = None, weights: nn.Module | None = None,
                  verbose: bool = True) -> EfldetDetectionModel:
        model = EfldetDetectionModel(cfg, nc=self.data["nc"], ch=self.data["channels"],
                                     verbose=verbose and RANK == -1, loss_config=self.loss_config)
        model = self.set_model_names_for_load(model)
        if weights:
            model.load(weights)
        return model

    def optimizer_step(self) -> None:
        """The host's step and EMA update; then the EMA model gets the loss's exact buffers (statistics, iteration
        count), not their moving average."""
        super().optimizer_step()
        if self.ema:
            ema_buffers = dict(self.ema.ema.cls_loss.named_buffers())
            for name, value in unwrap_model(self.model).cls_loss.named_buffers():
                ema_buffers[name].copy_(value)


def efldet_trainer(loss_config: YoloLossConfig) -> type[EfldetDetectionTrainer]:
    """An `EfldetDetectionTrainer` subclass training with `loss_config`, for
    `YOLO("yolov8n.yaml").train(data=..., trainer=efldet_trainer(...))`. (Ultralytics' multi-GPU launcher re-imports
    the trainer class by name: for DDP, define such a subclass at module level in your own file.)"""
    config = _required(loss_config)
    return type("EfldetDetectionTrainer", (EfldetDetectionTrainer,), {"loss_config": config, "__module__": __name__})


def _required(loss_config: YoloLossConfig | None) -> YoloLossConfig:
    if not isinstance(loss_config, YoloLossConfig):
        raise UserInputError("the efldet YOLO integration needs an explicit YoloLossConfig(loss='efl' | 'eqfl' | "
                             "'focal' | 'qfl', ...): there is no default, because no setting beat Ultralytics' own "
                             "BCE on our benchmark (README, 'Use EFL in your own detector')")
    return loss_config


def statistics(model: nn.Module) -> dict[str, tuple[Tensor, Tensor]]:
    """{submodule name: (pos_grad [C], neg_grad [C])} of every gradient-statistics loss in `model`."""
    return {name: (m.pos_grad, m.neg_grad) for name, m in _statistics_modules(model).items()}


def detection_model(cfg: str | dict = "yolov8n.yaml", *, num_classes: int, loss_config: YoloLossConfig | None = None,
                    verbose: bool = False) -> EfldetDetectionModel:
    """A YOLO detection model built from a model yaml (no download) with the efldet loss as classification term."""
    return EfldetDetectionModel(cfg, nc=num_classes, verbose=verbose, loss_config=loss_config)
