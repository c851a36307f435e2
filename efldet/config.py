"""Run configuration: nested dataclasses with the paper's defaults, strict YAML loading and `key=value` overrides.

A YAML file holds only deltas from these defaults; `base: other.yaml` (relative to the file) inherits from
another file first. Unknown keys and wrong types are errors that name the key (and the file) and suggest the
closest valid key. `efldet config CONFIG [overrides]` prints the resolved configuration.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from efldet.errors import UserInputError
from efldet.models.build import DetectorConfig


@dataclass
class DataConfig:
    root: str = "data/lvis_v1"  # dataset root; relative annotation / image paths below are resolved against it
    train_ann: str = "annotations/lvis_v1_train.json"  # training annotations (LVIS / COCO json)
    val_ann: str = "annotations/lvis_v1_val.json"  # validation annotations (LVIS / COCO json)
    train_images: str = "."  # image root of the training set (LVIS: <root>/train2017/... resolved from coco_url)
    val_images: str = "."  # image root of the validation set
    train_short_sides: tuple[int, ...] = (640, 672, 704, 736, 768, 800)  # multi-scale train: shorter side choices
    test_short_side: int = 800  # test-time shorter side (pixels)
    max_size: int = 1333  # longer side cap (pixels), train and test
    flip_prob: float = 0.5  # horizontal flip probability in training
    sampler: str = "repeat_factor"  # training sampler: "repeat_factor" (RFS) | "random" | "class_balanced"
    rfs_threshold: float = 0.001  # RFS threshold t
    rfs_rounding: str = "ceil"  # RFS rounding: ceil (paper) | stochastic | floor | round
    aspect_ratio_grouping: bool = True  # batch images of the same orientation together
    num_workers: int = 2  # DataLoader worker processes per rank
    # YOLOX strong augmentation (Appendix A, YOLOX-IP). Off by default; every field below needs strong_aug.
    strong_aug: bool = False  # Mosaic + random affine + MixUp + HSV + flip on square images (train_short_sides unused)
    input_size: int = 640  # side of the square training images (pixels) when multiscale_range is unset
    multiscale_range: tuple[int, int] | None = None  # [low, high] sides (pixels, step 32) per batch (YOLOX: [448, 832])
    multiscale_interval: int = 10  # batches between two multi-scale size draws (YOLOX: 10 iterations)
    mosaic_prob: float = 1.0  # probability that an image is a Mosaic (with random affine and maybe MixUp)
    mixup_prob: float = 1.0  # probability of MixUp after a Mosaic
    mosaic_scale: tuple[float, float] = (0.1, 2.0)  # [low, high] scale of the Mosaic's random affine
    mixup_scale: tuple[float, float] = (0.5, 1.5)  # [low, high] scale of the MixUp partner image
    affine_degrees: float = 10.0  # random affine rotation range, +- degrees
    affine_translate: float = 0.1  # random affine translation range, +- fraction of the side
    affine_shear: float = 2.0  # random affine shear range, +- degrees on each axis
    hsv_gains: tuple[float, float, float] = (5.0, 30.0, 30.0)  # hue / saturation / value jitter (OpenCV 8-bit units)
    no_aug_epochs: int = 0  # last epochs without Mosaic / MixUp, on plain resized images (YOLOX: 15)


@dataclass
class OptimConfig:
    lr: float = 0.02  # total learning rate for the global batch (the paper: 0.02 at batch 16); never rescaled
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 1e-4  # weight decay of conv / linear weights
    norm_weight_decay: float = 0.0  # weight decay of normalisation-layer weights and biases
    bias_weight_decay: float = 1e-4  # weight decay of the other biases
    cls_bias_weight_decay: float | None = None  # decay of the last classification layer's bias (YOLOX-IP: 1e-4)
    warmup_iters: int = 6000  # linear warm-up length in iterations (stabilized setting)
    warmup_epochs: float | None = None  # warm-up length in epochs instead (YOLOX: 5); overrides warmup_iters when set
    warmup_ratio: float = 0.001  # warm-up starts at warmup_ratio x lr
    schedule: str = "multistep"  # "multistep" (x gamma at each milestone epoch) | "cosine" (to min_lr_ratio)
    milestones: tuple[int, ...] = (16, 22)  # multistep: epochs after which lr is multiplied by gamma
    gamma: float = 0.1  # multistep factor
    min_lr_ratio: float = 0.0  # cosine: final lr as a fraction of lr
    clip_grad_norm: float | None = 35.0  # gradient clipping max-norm (stabilized setting); None = off


@dataclass
class TrainConfig:
    epochs: int = 24  # training length in epochs (2x schedule); an epoch is one pass of the sampler
    max_iters: int | None = None  # stop after this many iterations (overrides the epoch count when set)
    batch_size: int = 16  # global batch: images per optimizer step over all ranks (before accumulation)
    grad_accum: int = 1  # micro-batches accumulated per optimizer step (each of batch_size images)
    amp: str = "none"  # mixed precision: "none" | "bf16" (CPU or CUDA) | "fp16" (CUDA, with loss scaling)
    ema_decay: float | None = None  # exponential moving average of the weights (e.g. 0.9998); None = off
    seed: int = 0  # base seed (each rank adds its rank)
    deterministic: bool = False  # torch deterministic algorithms (slower; used by the resume tests)
    log_interval: int = 20  # iterations between log lines / metrics records
    checkpoint_interval: int = 1  # epochs between checkpoints (the last one is always written)
    checkpoint_iters: int | None = None  # also write a checkpoint every N iterations when set
    keep_last: int = 3  # periodic checkpoints kept (last.pt is always kept)
    eval_interval: int = 0  # epochs between evaluations on the val set; 0 = only at the end
    max_nonfinite: int = 20  # stop after this many non-finite losses in a row (each one skips its step)
    device: str = "auto"  # "auto" (CUDA when available) | "cpu" | "cuda"


@dataclass
class EvalConfig:
    protocol: str = "lvis"  # "lvis" (AP, APr, APc, APf; needs an LVIS-format val json) | "coco" (12 COCO metrics)
    backend: str = "fast"  # LVIS evaluation backend: "fast" (efldet's arrays) | "faster" | "lvis" (official)
    batch_size: int = 1  # images per rank per forward at test time
    at_end: bool = True  # evaluate on the val set when training ends (results in output_dir/eval)
    fixed_ap: bool = False  # also report the "fixed AP" (10,000 detections per class over the dataset)


@dataclass
class Config:
    output_dir: str = "runs/default"  # run directory: config, metrics.jsonl, checkpoints, results
    model: DetectorConfig = field(default_factory=DetectorConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# ----------------------------------------------------------------------------------------------- loading
def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Defaults <- YAML file (with its `base:` chain) <- `key.path=value` overrides, checked strictly."""
    data: dict[str, Any] = {}
    if path is not None:
        data = _read_yaml_chain(Path(path), seen=())
    for override in overrides:
        key, value = _parse_override(override)
        _set_dotted(data, key, value)
    where = str(path) if path is not None else "command-line overrides"
    if path is not None and overrides:
        where += " + command-line overrides"
    return from_dict(Config, data, where=where)


def from_dict(cls: type, data: Any, *, where: str, prefix: str = "") -> Any:
    """Build dataclass `cls` from a (partial) dict, checking keys and types; missing keys keep defaults."""
    if not isinstance(data, dict):
        raise UserInputError(f"{where}: {prefix or 'the config'} must be a mapping of keys to values, "
                             f"got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(fields)}"
            raise UserInputError(f"{where}: unknown config key '{dotted}'{hint}")
        kwargs[key] = _convert(value, hints[key], where=where, key=dotted)
    return cls(**kwargs)


def to_dict(config: Any) -> Any:
    """Plain nested dicts / lists (tuples become lists) for YAML / JSON / checkpoints."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    return config


def dump_yaml(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False, default_flow_style=None)


def _read_yaml_chain(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    resolved = path.resolve()
    if resolved in seen:
        chain = " -> ".join(str(p) for p in (*seen, resolved))
        raise UserInputError(f"config files inherit from each other in a loop: {chain}")
    if not path.is_file():
        raise UserInputError(f"config file not found: {path}; pass a YAML file such as "
                             "configs/synthetic/tiny.yaml")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserInputError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise UserInputError(f"{path}: a config file must be a mapping of keys to values")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise UserInputError(f"{path}: 'base' must be a path to another YAML file, got {base!r}")
    merged = _read_yaml_chain(path.parent / base, seen=(*seen, resolved))
    _deep_merge(merged, data)
    return merged


def _deep_merge(into: dict[str, Any], delta: dict[str, Any]) -> None:
    for key, value in delta.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UserInputError(f"override '{text}' must look like key.path=value (e.g. train.max_iters=100)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserInputError(f"override '{key}': '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def _convert(value: Any, hint: Any, *, where: str, key: str) -> Any:
    """Check / coerce `value` against the type annotation `hint` (dataclass, Optional, tuple, scalar)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _convert(value, option, where=where, key=key)
            except UserInputError as err:
                errors.append(str(err))
        raise UserInputError(errors[0] if len(errors) == 1 else f"{where}: {key} = {value!r} has the wrong type")
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where=where, prefix=f"{key}.")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            value = [value] if isinstance(value, (int, float, str)) and not isinstance(value, bool) else value
        if not isinstance(value, (list, tuple)):
            raise UserInputError(f"{where}: {key} must be a list, got {value!r}")
        item = typing.get_args(hint)[0] if typing.get_args(hint) else Any
        items = [_convert(v, item, where=where, key=f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    else:
        return value
    expected = getattr(hint, "__name__", str(hint))
    raise UserInputError(f"{where}: {key} must be of type {expected}, got {value!r} ({type(value).__name__})")
