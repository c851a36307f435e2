"""The training loop: one explicit function, `train(cfg)`, from a resolved config to a trained run directory.

What it does, in order: distributed set-up (torchrun env vars), seeds, datasets and loaders, the detector (DDP when
world size > 1), SGD with per-group decay, the warm-up + epoch schedule, AMP, EMA, resume; then for every
optimizer step: `grad_accum` micro-batches forward/backward (a non-finite loss on any rank skips the step on all
ranks), gradient clipping, the step, EMA update, logging, checkpoints; evaluation at the end (and every
`train.eval_interval` epochs). SIGTERM / SIGINT stop at the next step boundary after writing `last.pt`.

Run directory (`output_dir`): config.yaml, metrics.jsonl, tensorboard/, iter_<N>.pt + last.pt, eval/.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from efldet.config import Config, dump_yaml, to_dict
from efldet.data import augment_loader_kwargs, build_train_loader, set_epoch, set_strong_aug_epochs
from efldet.engine.checkpoint import load_checkpoint, load_model_state, rng_state, save_checkpoint, set_rng_state
from efldet.engine.dist import get_rank, get_world_size, is_dist, is_main_process, reduce_mean
from efldet.engine.ema import ModelEMA
from efldet.engine.inference import autocast_context, evaluate_results, run_inference
from efldet.engine.logger import RunLogger
from efldet.engine.optim import LRSchedule, build_optimizer
from efldet.errors import UserInputError


class TrainingInterrupted(RuntimeError):
    """SIGTERM / SIGINT arrived; `last.pt` holds the state to resume from."""


class NonFiniteLossError(RuntimeError):
    """Too many non-finite losses in a row."""


# ----------------------------------------------------------------------------------------------- set-up
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda"):
        raise UserInputError(f"train.device must be 'auto', 'cpu' or 'cuda', got {name!r}")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserInputError("train.device=cuda but no CUDA device is available; use train.device=cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def init_distributed(device: torch.device) -> None:
    """Join the process group that `torchrun` describes in the environment (no-op for a single process)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_dist():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def check_amp(amp: str, device: torch.device) -> None:
    if amp not in ("none", "bf16", "fp16"):
        raise UserInputError(f"train.amp must be 'none', 'bf16' or 'fp16', got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise UserInputError("train.amp=fp16 needs CUDA; use train.amp=bf16 on the CPU")


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def data_path(root: str, path: str) -> str:
    return path if os.path.isabs(path) else os.path.join(root, path)


def build_datasets(cfg: Config) -> tuple[Any, Any]:
    """(train, val) `LVISDataset`s with the configured transforms; errors name the missing file and the key."""
    from efldet.data import LVISDataset, build_train_dataset, eval_transforms

    d = cfg.data
    for key, path in (("data.train_ann", d.train_ann), ("data.val_ann", d.val_ann)):
        full = data_path(d.root, path)
        if not os.path.isfile(full):
            raise UserInputError(f"{key}: annotation file {full} not found (data.root = {d.root!r}); generate the "
                                 "synthetic set with `efldet data synth --out DIR` and pass data.root=DIR")
    train_set = build_train_dataset(d, data_path(d.root, d.train_ann), data_path(d.root, d.train_images),
                                    seed=cfg.train.seed)
    val_set = LVISDataset(data_path(d.root, d.val_ann), data_path(d.root, d.val_images),
                          transforms=eval_transforms(d.test_short_side, d.max_size))
    if train_set.num_classes != cfg.model.num_classes:
        raise UserInputError(f"model.num_classes = {cfg.model.num_classes} but {d.train_ann} has "
                             f"{train_set.num_classes} categories; set model.num_classes={train_set.num_classes}")
    return train_set, val_set


def build_train_loader_for(cfg: Config, dataset: Any) -> torch.utils.data.DataLoader:
    """The training loader of `cfg` (per-rank batch = global batch / world size), resumable inside an epoch."""

    world = get_world_size()
    if cfg.train.batch_size % world:
        raise UserInputError(f"train.batch_size = {cfg.train.batch_size} (global) is not divisible by the "
                             f"{world} processes; choose a multiple of {world}")
    return build_train_loader(
        dataset, batch_size=cfg.train.batch_size // world, sampler=cfg.data.sampler,
        rfs_threshold=cfg.data.rfs_threshold, rfs_rounding=cfg.data.rfs_rounding,
        aspect_ratio_grouping=cfg.data.aspect_ratio_grouping, seed=cfg.train.seed,
        num_workers=cfg.data.num_workers, drop_last=True, **augment_loader_kwargs(cfg.data, epochs=cfg.train.epochs),
    )


def build_test_loader_for(cfg: Config, dataset: Any) -> torch.utils.data.DataLoader:
    from efldet.data import build_test_loader

    return build_test_loader(dataset, batch_size=cfg.eval.batch_size, num_workers=cfg.data.num_workers)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# ----------------------------------------------------------------------------------------------- EFL statistics
def loss_statistics(model: nn.Module, frequency: list[str]) -> dict[str, float]:
    """Per frequency group r/c/f: the mean of g_j (the clamped pos/neg gradient ratio the loss uses) and the mean
    log10 of the raw ratio (how far from 1 it is), when the classification loss keeps gradient statistics."""
    cls_loss = getattr(unwrap(model), "cls_loss", None)
    ratio = getattr(cls_loss, "pos_neg_ratio", None)
    if ratio is None:
        return {}
    ratio = ratio.detach().float().cpu()
    raw = cls_loss.raw_ratio().detach().float().cpu().clamp(min=1e-12)
    groups = np.asarray(frequency)
    stats = {}
    for group in ("r", "c", "f"):
        mask = torch.from_numpy(groups == group)
        if bool(mask.any()):
            stats[f"g_mean_{group}"] = float(ratio[mask].mean())
            stats[f"log10_ratio_{group}"] = float(raw[mask].log10().mean())
    return stats


# ----------------------------------------------------------------------------------------------- the loop
@dataclass
class TrainState:
    iteration: int = 0        # optimizer steps done
    epoch: int = 0            # current epoch (0-based)
    batch_in_epoch: int = 0   # micro-batches of the current epoch already consumed
    nonfinite_in_row: int = 0
    nonfinite_total: int = 0


def train(cfg: Config, *, resume: bool | str = "auto") -> dict[str, Any]:
    """Train as `cfg` says. resume: "auto" (continue from output_dir/last.pt if it exists), True (require it),
    False (start fresh), or a checkpoint path. Returns {"metrics": final eval metrics, "iteration": N,
    "nonfinite_total": skipped steps, "model": the trained detector, "ema": the ModelEMA or None}."""
    device = resolve_device(cfg.train.device)
    init_distributed(device)
    check_amp(cfg.train.amp, device)
    rank, world = get_rank(), get_world_size()
    seed_everything(cfg.train.seed + rank, cfg.train.deterministic)
    out = Path(cfg.output_dir)
    if is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(dump_yaml(cfg))

    from efldet.models import build_detector

    train_set, val_set = build_datasets(cfg)
    loader = build_train_loader_for(cfg, train_set)
    model = build_detector(cfg.model).to(device)
    model.train()
    optimizer = build_optimizer(model, cfg.optim)
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    scaler = torch.amp.GradScaler("cuda") if cfg.train.amp == "fp16" else None
    ema = ModelEMA(unwrap(model), cfg.train.ema_decay) if cfg.train.ema_decay else None

    accum = max(int(cfg.train.grad_accum), 1)
    batches_per_epoch = len(loader)
    iters_per_epoch = batches_per_epoch // accum
    if iters_per_epoch < 1:
        raise UserInputError(f"one epoch has {batches_per_epoch} batches of {cfg.train.batch_size} images, fewer "
                             f"than train.grad_accum = {accum}; lower train.batch_size or train.grad_accum")
    total_iters = cfg.train.max_iters if cfg.train.max_iters is not None else cfg.train.epochs * iters_per_epoch
    schedule = LRSchedule(cfg.optim, iters_per_epoch=iters_per_epoch, total_iters=total_iters)
    # YOLOX's last phase: the last data.no_aug_epochs epochs without Mosaic / MixUp and, for the original YOLOX,
    # with its L1 box loss (`YOLOXDetector.use_l1`); the epoch count follows train.max_iters when that is set.
    final_phase_start = math.ceil(total_iters / iters_per_epoch) - cfg.data.no_aug_epochs
    if cfg.data.strong_aug:
        set_strong_aug_epochs(loader, final_phase_start)
    state = TrainState()
    frequency = [str(f) for f in train_set.index.frequency]

    checkpoint_path = _resume_path(out, resume)
    if checkpoint_path is not None:
        _restore(checkpoint_path, model, optimizer, scaler, ema, loader, state)

    def payload() -> dict[str, Any]:
        return {
            "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler else None, "ema": ema.state_dict() if ema else None,
            "iteration": state.iteration, "epoch": state.epoch, "batch_in_epoch": state.batch_in_epoch,
            "nonfinite_total": state.nonfinite_total, "rng": rng_state(),
            "loader_generator": loader.generator.get_state() if loader.generator is not None else None,
            "config": to_dict(cfg), "class_names": [str(n) for n in train_set.class_names],
            "category_ids": [int(c) for c in train_set.index.cat_ids], "frequency": frequency,
            "world_size": world,
        }

    def checkpoint() -> None:
        if is_main_process():
            save_checkpoint(payload(), out, keep_last=cfg.train.keep_last)
        if is_dist():
            dist.barrier()

    logger = RunLogger(out, total_iters=total_iters, start_iter=state.iteration, enabled=is_main_process())
    logger.message(f"training {total_iters} iterations ({iters_per_epoch} per epoch, global batch "
                   f"{cfg.train.batch_size} x {accum} accumulation, {world} process(es) on {device}); "
                   f"lr {cfg.optim.lr} is the total lr for the global batch")
    stop = {"signal": None}
    previous_handlers = _install_signal_handlers(stop)
    metrics: dict[str, Any] = {}
    try:
        step_time, last_logged = time.perf_counter(), state.iteration
        while state.iteration < total_iters:
            set_epoch(loader, state.epoch)
            if hasattr(unwrap(model), "use_l1"):  # the original YOLOX: L1 loss in the final phase only
                unwrap(model).use_l1 = cfg.data.no_aug_epochs > 0 and state.epoch >= final_phase_start
            loader.batch_sampler.start_at(state.batch_in_epoch)   # resume inside an epoch: skip what was done
            batches = iter(loader)
            while state.batch_in_epoch + accum <= batches_per_epoch and state.iteration < total_iters:
                lr = schedule.apply(optimizer, state.iteration)
                losses, finite = _accumulate_step(model, batches, accum, device, cfg.train.amp, scaler)
                state.batch_in_epoch += accum
                if not finite:
                    optimizer.zero_grad(set_to_none=True)
                    state.nonfinite_in_row += 1
                    state.nonfinite_total += 1
                    logger.log({"kind": "nonfinite", "iteration": state.iteration, "in_row": state.nonfinite_in_row,
                                "total": state.nonfinite_total, **losses})
                    logger.message(f"iteration {state.iteration}: non-finite loss {losses}, step skipped "
                                   f"({state.nonfinite_in_row} in a row)")
                    if state.nonfinite_in_row >= cfg.train.max_nonfinite:
                        raise NonFiniteLossError(
                            f"{state.nonfinite_in_row} non-finite losses in a row at iteration {state.iteration}; "
                            "lower optim.lr, keep the warm-up (optim.warmup_iters) and clipping "
                            "(optim.clip_grad_norm), or check the data for broken boxes")
                    continue
                state.nonfinite_in_row = 0
                grad_norm = _optimizer_step(model, optimizer, scaler, cfg.optim.clip_grad_norm)
                if ema is not None:
                    ema.update(unwrap(model))
                state.iteration += 1
                logger.advance(1, {"loss": sum(losses.values()), "lr": lr})
                if state.iteration % cfg.train.log_interval == 0 or state.iteration == total_iters:
                    now = time.perf_counter()
                    record = {"kind": "train", "iteration": state.iteration, "epoch": state.epoch, "lr": lr,
                              "loss": sum(losses.values()), **losses, "grad_norm": grad_norm,
                              "time_per_iter": (now - step_time) / max(state.iteration - last_logged, 1),
                              **loss_statistics(model, frequency)}
                    step_time, last_logged = now, state.iteration
                    logger.log(record)
                if cfg.train.checkpoint_iters and state.iteration % cfg.train.checkpoint_iters == 0:
                    checkpoint()
                if _agreed_stop(stop, device):
                    checkpoint()
                    raise TrainingInterrupted(f"stopped by {stop['signal']} at iteration {state.iteration}; "
                                              f"resume with: efldet train CONFIG --resume (output_dir {out})")
            if state.batch_in_epoch + accum > batches_per_epoch:   # the epoch is complete
                state.epoch += 1
                state.batch_in_epoch = 0
                if state.epoch % max(cfg.train.checkpoint_interval, 1) == 0:
                    checkpoint()
                if cfg.train.eval_interval and state.epoch % cfg.train.eval_interval == 0 \
                        and state.iteration < total_iters:
                    metrics = evaluate(cfg, ema.module if ema else unwrap(model), val_set, device, logger,
                                       state.iteration, out / f"eval_epoch{state.epoch}")
        checkpoint()
        if cfg.eval.at_end:
            metrics = evaluate(cfg, ema.module if ema else unwrap(model), val_set, device, logger, state.iteration,
                               out / "eval")
    finally:
        _restore_signal_handlers(previous_handlers)
        logger.close()
    return {"metrics": metrics, "iteration": state.iteration, "nonfinite_total": state.nonfinite_total,
            "model": unwrap(model), "ema": ema}


def evaluate(cfg: Config, model: nn.Module, val_set: Any, device: torch.device, logger: RunLogger | None,
             iteration: int, out_dir: Path) -> dict[str, float]:
    loader = build_test_loader_for(cfg, val_set)
    category_ids = [int(c) for c in val_set.index.cat_ids]
    results = run_inference(model, loader, device=device, category_ids=category_ids, amp=cfg.train.amp)
    metrics: dict[str, float] = {}
    if is_main_process():
        metrics = evaluate_results(results, data_path(cfg.data.root, cfg.data.val_ann), protocol=cfg.eval.protocol,
                                   backend=cfg.eval.backend, fixed_ap=cfg.eval.fixed_ap, out_dir=out_dir)
        if logger is not None:
            logger.log({"kind": "eval", "iteration": iteration, **metrics})
            summary = ", ".join(f"{k} {100 * v:.1f}" for k, v in metrics.items()
                                if k in ("AP", "AP50", "APr", "APc", "APf") and v >= 0)
            logger.message(f"evaluation at iteration {iteration}: {summary} (results in {out_dir})")
    if is_dist():
        holder = [metrics]
        dist.broadcast_object_list(holder, src=0)
        metrics = holder[0]
    return metrics


# ----------------------------------------------------------------------------------------------- step pieces
def _accumulate_step(model: nn.Module, batches: Any, accum: int, device: torch.device, amp: str,
                     scaler: torch.amp.GradScaler | None) -> tuple[dict[str, float], bool]:
    """Forward/backward `accum` micro-batches. Returns (loss terms averaged over micro-batches and ranks,
    whether every loss on every rank was finite). A non-finite micro-batch stops the accumulation (no backward)."""
    totals: dict[str, float] = {}
    for micro in range(accum):
        images, batch_targets = next(batches)
        images = images.to(device, non_blocking=True)
        targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in batch_targets]
        sizes = [t["image_size"] for t in batch_targets]
        accumulate_only = micro < accum - 1 and isinstance(model, nn.parallel.DistributedDataParallel)
        with model.no_sync() if accumulate_only else contextlib.nullcontext():
            with autocast_context(device, amp):
                losses = model(images, targets, sizes)
            loss = sum(losses.values())
            finite = torch.isfinite(loss.detach()).float()
            if is_dist():
                dist.all_reduce(finite, op=dist.ReduceOp.MIN)
            if finite.item() < 1:
                for _ in range(accum - 1 - micro):   # the step is skipped: consume its other micro-batches too
                    next(batches)
                return {k: float(v.detach()) for k, v in losses.items()}, False
            scaled = loss / accum
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        for key, value in losses.items():
            totals[key] = totals.get(key, 0.0) + float(reduce_mean(value.detach())) / accum
    return totals, True


def _optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
                    max_norm: float | None) -> float:
    if scaler is not None:
        scaler.unscale_(optimizer)
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if max_norm is not None:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    else:
        grad_norm = float(torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in params])))
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def _resume_path(out: Path, resume: bool | str) -> Path | None:
    last = out / "last.pt"
    if resume is False:
        return None
    if resume == "auto":
        return last if last.is_file() else None
    if resume is True:
        if not last.is_file():
            raise UserInputError(f"--resume: no checkpoint at {last}; train without --resume to start this run")
        return last
    return Path(resume)


def _restore(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any, ema: Any,
             loader: torch.utils.data.DataLoader, state: TrainState) -> None:
    ckpt = load_checkpoint(path)
    load_model_state(unwrap(model), ckpt["model"], source=str(path))
    optimizer.load_state_dict(ckpt["optimizer"])
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    if ema is not None and ckpt.get("ema"):
        ema.load_state_dict(ckpt["ema"])
    state.iteration, state.epoch = int(ckpt["iteration"]), int(ckpt["epoch"])
    state.batch_in_epoch = int(ckpt["batch_in_epoch"])
    state.nonfinite_total = int(ckpt.get("nonfinite_total", 0))
    if ckpt.get("world_size", 1) == get_world_size():
        set_rng_state(ckpt["rng"])
        if ckpt.get("loader_generator") is not None and loader.generator is not None:
            loader.generator.set_state(ckpt["loader_generator"])
    if is_main_process():
        print(f"resumed from {path} at iteration {state.iteration} (epoch {state.epoch}, "
              f"batch {state.batch_in_epoch})", flush=True)


# ----------------------------------------------------------------------------------------------- signals
def _install_signal_handlers(stop: dict[str, Any]) -> dict[int, Any]:
    def handler(signum: int, frame: Any) -> None:
        stop["signal"] = signal.Signals(signum).name

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:     # not the main thread (e.g. called from a worker thread): leave signals alone
            pass
    return previous


def _restore_signal_handlers(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def _agreed_stop(stop: dict[str, Any], device: torch.device) -> bool:
    """All ranks stop together when any rank got a signal."""
    flag = torch.tensor(1.0 if stop["signal"] else 0.0, device=device)
    if is_dist():
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() > 0 and not stop["signal"]:
            stop["signal"] = "a signal on another rank"
    return flag.item() > 0

