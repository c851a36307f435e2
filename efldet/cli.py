"""The `efldet` command. Each subcommand is a pair of functions here: `_add_<name>` (arguments) and
`_run_<name>` (work). Exit codes: 0 success, 2 bad usage / config / input, 1 runtime failure."""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Sequence

from efldet.errors import UserInputError


# ----------------------------------------------------------------------------------------------- plot-loss
def _add_plot_loss(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plot-loss",
        help="draw the paper's Fig. 3 (a)/(b) and Fig. 5 (EFL loss and derivative curves) as PNG files",
        description="Draw EFL loss curves vs x_t without / with the weighting factor (Fig. 3 a, b) and the "
        "derivative of Eq. 6 (Fig. 5) for several focusing factors gamma_j.",
    )
    p.add_argument("--out", required=True, help="output directory for the PNG files (created if absent)")
    p.add_argument("--gamma-b", type=float, default=2.0, help="base focusing factor gamma_b (default 2)")
    p.add_argument(
        "--gammas", type=float, nargs="+", default=[2.0, 4.0, 6.0, 8.0, 10.0],
        help="focusing factors gamma_j to draw, one curve each (default 2 4 6 8 10)",
    )


def _run_plot_loss(args: argparse.Namespace) -> int:
    from efldet.losses.plots import plot_loss_figures

    paths = plot_loss_figures(args.out, gamma_b=args.gamma_b, gammas=args.gammas)
    for path in paths:
        print(f"wrote {path}")
    return 0


# ----------------------------------------------------------------------------------------------- info
def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="print a detector's architecture summary, parameter count and FLOPs estimate",
        description="Build the detector a YAML file describes (a run config's `model:` section, or a file "
        "whose keys are the fields of efldet.models.DetectorConfig; no file = the paper's improved "
        "baseline, ATSS-IoU R-50-FPN, LVIS) "
        "without loading weights, and print its components, parameters and FLOPs of one forward of "
        "backbone + neck + head (torch.utils.flop_counter; assignment, losses, NMS not counted).",
    )
    p.add_argument("config", nargs="?", default=None,
                   help="run config, e.g. configs/lvis_v1/atss_r50_fpn_efl_2x_rfs.yaml (default: the improved "
                   "baseline, ATSS-IoU R-50-FPN with 1203 classes)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. model.num_classes=80")
    p.add_argument("--input-size", type=int, nargs=2, default=[800, 1333], metavar=("H", "W"),
                   help="input image size for the FLOPs estimate (default 800 1333)")
    p.add_argument("--json", action="store_true", help="print one json object (params, flops, ...) instead")


def _run_info(args: argparse.Namespace) -> int:
    import json

    from efldet.config import load_config
    from efldet.models import DetectorConfig
    from efldet.models.summary import detector_summary

    height, width = args.input_size
    if height < 32 or width < 32:
        raise UserInputError(f"--input-size {height} {width}: both sides must be at least 32 pixels")
    cfg = load_config(args.config, args.overrides).model if args.config else DetectorConfig()
    info = detector_summary(cfg, (height, width))
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"detector      {info['name']}  ({info['num_classes']} classes, {info['priors_per_location']} "
          f"priors per location, quality branch: {info['quality']}, loss: {info['cls_loss']})")
    for name, part in info["components"].items():
        print(f"  {name:<11} {part['class']:<14} {part['params'] / 1e6:9.3f} M parameters "
              f"({part['trainable_params'] / 1e6:.3f} M trainable)")
    print(f"parameters    {info['params']:,} ({info['trainable_params']:,} trainable)")
    print(f"FLOPs         {info['flops'] / 1e9:.1f} G at {height} x {width} (backbone + neck + head, "
          "2 FLOPs per multiply-add)")
    return 0


# ----------------------------------------------------------------------------------------------- data
def _add_data(sub: argparse._SubParsersAction) -> None:
    from efldet.data.synthetic import (  # numpy + PIL only: keeps `efldet --help` fast
        DEFAULT_CLASSES,
        DEFAULT_IMAGE_SIZE,
        DEFAULT_TRAIN_IMAGES,
        DEFAULT_VAL_IMAGES,
        MAX_CLASSES,
    )

    p = sub.add_parser("data", help="make the synthetic long-tailed dataset, describe an annotation file, or "
                       "export a dataset to the YOLO layout",
                       description="Data tools: `synth` writes the synthetic long-tailed benchmark, `stats` "
                       "describes a COCO/LVIS annotation file, `export-yolo` writes the Ultralytics YOLO layout.")
    data_sub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    s = data_sub.add_parser(
        "synth", help="write the synthetic long-tailed detection benchmark (PNG images + LVIS-format json)",
        description="Write DIR/train.json, DIR/val.json and DIR/images/: drawn shapes whose category is a "
        "combination of shape, colour and texture; training image counts per category follow the shape of "
        "the LVIS v1 distribution, so rare (1-10 images), common (11-100) and frequent (>100) categories all "
        "exist; every category has at least 5 instances in val. Same seed, same files. Use DIR as the image "
        "root (file names are relative to it).",
    )
    s.add_argument("--out", required=True, metavar="DIR", help="output directory (created if absent)")
    s.add_argument("--classes", type=int, default=DEFAULT_CLASSES,
                   help=f"number of categories, 1-{MAX_CLASSES} (default {DEFAULT_CLASSES})")
    s.add_argument("--train-images", type=int, default=DEFAULT_TRAIN_IMAGES,
                   help=f"training images (default {DEFAULT_TRAIN_IMAGES}); frequent categories need > 340")
    s.add_argument("--val-images", type=int, default=DEFAULT_VAL_IMAGES,
                   help=f"validation images (default {DEFAULT_VAL_IMAGES})")
    s.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE,
                   help=f"side of the square images in pixels (default {DEFAULT_IMAGE_SIZE})")
    s.add_argument("--max-objects", type=int, default=6, help="most objects drawn in one image (default 6)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    t = data_sub.add_parser(
        "stats", help="print images, annotations, categories per frequency group and the RFS epoch length",
        description="Describe a COCO/LVIS detection json: images, annotations, categories per LVIS "
        "frequency group (r/c/f, from the file's `frequency` field or, when absent, from its training image "
        "counts), and the epoch length under repeat factor sampling.",
    )
    t.add_argument("annotation_json", help="COCO or LVIS json file (.json or .json.gz)")
    t.add_argument("--rfs-threshold", type=float, default=0.001, help="RFS threshold t (default 0.001)")
    t.add_argument("--rfs-power", type=float, default=0.5, help="RFS power (default 0.5)")
    t.add_argument("--rfs-rounding", choices=("ceil", "stochastic", "floor", "round"), default="ceil",
                   help="rounding of r_i (default ceil)")
    t.add_argument("--json", action="store_true", help="print one json object instead")
    y = data_sub.add_parser(
        "export-yolo", help="convert a COCO/LVIS-format dataset to the Ultralytics YOLO layout (images, labels, yaml)",
        description="Write OUT/images/{train,val} (image files linked, not re-encoded), OUT/labels/{train,val} "
        "(one `class cx cy w h` line per box, normalised) and OUT/dataset.yaml (path, train, val, names). The class "
        "index is efldet's label: categories sorted by json id. --data is a directory with train.json and val.json "
        "(the layout of `efldet data synth`) or one json file (exported as train, and used as val too).",
    )
    y.add_argument("--data", required=True, metavar="DIR_OR_JSON",
                   help="dataset directory (train.json, val.json, file names relative to it) or one json file")
    y.add_argument("--out", required=True, metavar="DIR", help="output directory (created if absent)")
    y.add_argument("--image-root", metavar="DIR", help="directory the json file names are relative to (default: "
                   "the dataset directory, or the json file's folder)")
    y.add_argument("--link", choices=("auto", "hardlink", "symlink", "copy"), default="auto",
                   help="how images are placed (default auto: hard link, else symbolic link, else copy)")
    y.add_argument("--overwrite", action="store_true", help="replace the images/labels of an earlier export in OUT")
    y.add_argument("--rfs-threshold", type=float, metavar="T",
                   help="repeat factor sampling for Ultralytics: write OUT/train_rfs.txt listing training image i "
                   "ceil(r_i) times, r_i = max(1, max over its classes of (T / f_c)^power), and train on it (LVIS: "
                   "0.001; a small set: 100 / its number of images)")
    y.add_argument("--rfs-power", type=float, default=0.5, metavar="P", help="power of the repeat factor "
                   "(default 0.5)")


def _run_data(args: argparse.Namespace) -> int:
    if args.data_command == "synth":
        from efldet.data.synthetic import generate

        print(f"writing the synthetic long-tailed benchmark to {args.out} ...", flush=True)
        summary = generate(args.out, num_classes=args.classes, train_images=args.train_images,
                           val_images=args.val_images, image_size=args.image_size, seed=args.seed,
                           max_objects=args.max_objects)
        g = summary["groups"]
        print(f"train: {args.out}/train.json ({summary['train']['images']} images, "
              f"{summary['train']['annotations']} boxes)")
        print(f"val:   {args.out}/val.json ({summary['val']['images']} images, "
              f"{summary['val']['annotations']} boxes; every category >= {summary['min_val_instances']} "
              "instances)")
        print(f"categories: {args.classes} (rare {g['r']}, common {g['c']}, frequent {g['f']}); image root: "
              f"{args.out}; {summary['seconds']:.1f} s")
        print(f"repeat factor sampling: threshold {100 / args.train_images:.3g} here repeats the categories "
              "under 100 training images, as t=0.001 does on LVIS v1 (100,170 images)")
        missing = [name for name, key in (("rare", "r"), ("common", "c"), ("frequent", "f")) if g[key] == 0]
        if missing:
            print(f"note: no {' / '.join(missing)} categories at this size; more --train-images (> 340 for "
                  "frequent) or --classes bring all three LVIS groups", file=sys.stderr)
        return 0
    if args.data_command == "stats":
        import json

        import numpy as np

        from efldet.data.lvis import LVISIndex
        from efldet.data.samplers import repeat_factors, round_repeat_factors

        index = LVISIndex.from_json(args.annotation_json)
        offsets, labels = index.image_labels()
        factors = repeat_factors(offsets, labels, index.num_classes, args.rfs_threshold, args.rfs_power)
        if args.rfs_rounding == "stochastic":
            epoch = float(factors.sum())  # the expectation
        else:
            epoch = int(round_repeat_factors(factors, args.rfs_rounding, np.random.default_rng(0)).sum())
        ann_groups = index.frequency[index.ann_labels]
        stats = {
            "file": index.path, "images": len(index),
            "images_without_boxes": int((np.diff(offsets) == 0).sum()),
            "annotations": index.num_annotations, "crowd_annotations": int(index.ann_iscrowd.sum()),
            "skipped_annotations": index.num_skipped_boxes, "categories": index.num_classes,
            "frequency_source": "file" if index.frequency_from_file else "image counts",
            "groups": {g: {"categories": int((index.frequency == g).sum()),
                           "annotations": int((ann_groups == g).sum())} for g in ("r", "c", "f")},
            "rfs": {"threshold": args.rfs_threshold, "power": args.rfs_power, "rounding": args.rfs_rounding,
                    "epoch_length": epoch, "max_repeat_factor": float(factors.max(initial=1.0)),
                    "images_repeated": int((factors > 1.0).sum())},
        }
        if args.json:
            print(json.dumps(stats))
            return 0
        n = max(len(index), 1)
        print(f"file          {stats['file']}")
        print(f"images        {stats['images']:,} ({stats['images_without_boxes']:,} without boxes)")
        print(f"annotations   {stats['annotations']:,} ({stats['crowd_annotations']:,} crowd; "
              f"{stats['skipped_annotations']:,} skipped for a non-positive width or height)")
        print(f"categories    {stats['categories']:,} "
              f"(frequency groups from the {stats['frequency_source']})")
        for name, key in (("rare", "r"), ("common", "c"), ("frequent", "f")):
            grp = stats["groups"][key]
            print(f"  {name:<10}  {grp['categories']:>6,} categories {grp['annotations']:>12,} annotations")
        rfs = stats["rfs"]
        kind = "expected " if args.rfs_rounding == "stochastic" else ""
        print(f"RFS           t={rfs['threshold']:g}, power {rfs['power']:g}, rounding {rfs['rounding']}: "
              f"{kind}epoch length {epoch:,.0f} images ({epoch / n:.2f} x), {rfs['images_repeated']:,} "
              f"images repeated, max r_i {rfs['max_repeat_factor']:.2f}")
        return 0
    if args.data_command == "export-yolo":
        from efldet.data.yolo_export import export_yolo

        result = export_yolo(args.data, args.out, image_root=args.image_root, link=args.link,
                             overwrite=args.overwrite, rfs_threshold=args.rfs_threshold, rfs_power=args.rfs_power)
        for split, count in result.images.items():
            print(f"{split}: {count} images ({result.link_modes[split]}), {result.boxes[split]} boxes")
        if result.train_list is not None:
            print(f"repeat factor sampling: {result.train_list} lists {result.train_epoch_images} training images "
                  f"per epoch ({result.images['train']} distinct)")
        print(f"wrote {result.yaml_path} ({len(result.names)} classes); train with e.g. "
              f"yolo detect train data={result.yaml_path} model=yolov8n.yaml")
        return 0
    raise UserInputError("efldet data needs a subcommand: synth, stats or export-yolo (see efldet data --help)")


# ----------------------------------------------------------------------------------------------- analyze
def _add_analyze(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze",
        help="the paper's analysis figures (margins, gradient ratios, AP per category) as PNG + CSV",
        description="Analysis figures, each written as PNG + CSV into --out. Categories are sorted by "
        "training image count (frequent -> rare) and coloured rare/common/frequent the same way in every "
        "figure.",
    )
    a_sub = p.add_subparsers(dest="analyze_command", metavar="ANALYZE_COMMAND")
    m = a_sub.add_parser(
        "margins", help="Fig. 4: per-category margin (mean positive score - mean negative score), 1-2 runs",
        description="Plot per-category margins of one or two runs (e.g. focal loss vs EFL), from checkpoints "
        "(--weights: scores every anchor of the checkpoint's val set, labelled by its own assigner) or from "
        "margin CSV files written earlier (--csv).",
    )
    m.add_argument("--weights", action="append", metavar="CKPT",
                   help="checkpoint of one run (repeat for a second run); its embedded config names the val set")
    m.add_argument("--data-root", metavar="DIR", help="with --weights: the dataset root, if it moved since training")
    m.add_argument("--csv", action="append", metavar="FILE",
                   help="margins CSV of one run (repeat for a second run)")
    m.add_argument("--label", action="append", metavar="NAME",
                   help="run label, one per --weights / --csv (default: file or folder name)")
    m.add_argument("--out", required=True, metavar="DIR", help="output directory (created if absent)")
    g = a_sub.add_parser(
        "grad-ratio",
        help="Fig. 2 style: accumulated positive/negative gradient ratio per category (log scale)",
        description="Read the pos_grad / neg_grad buffers of the EFL (or EQLv2) loss from a checkpoint and "
        "plot their ratio per category, coloured by frequency group.",
    )
    g.add_argument("--weights", required=True, metavar="CKPT",
                   help="checkpoint (.pt) of an EFL-trained model")
    g.add_argument("--ann", metavar="FILE", default=None,
                   help="training annotation json giving category frequencies (default: the LVIS v1 list)")
    g.add_argument("--out", required=True, metavar="DIR", help="output directory (created if absent)")
    ap = a_sub.add_parser(
        "ap", help="AP per category vs training image count, and APr/APc/APf of several runs side by side",
        description="From per-category AP CSV files (per_category_ap.csv, written next to an LVIS "
        "evaluation): a scatter of AP against training image count and bars of AP/APr/APc/APf per run.",
    )
    ap.add_argument("--per-category", action="append", required=True, metavar="FILE",
                    help="per_category_ap.csv of one run (repeat for more runs)")
    ap.add_argument("--label", action="append", metavar="NAME",
                    help="run label, one per file (default: folder)")
    ap.add_argument("--ann", metavar="FILE", default=None,
                    help="training annotation json whose image counts replace the CSV's (optional)")
    ap.add_argument("--out", required=True, metavar="DIR", help="output directory (created if absent)")


def _labels(files: list[str], labels: list[str] | None, use_parent: bool) -> list[str]:
    from pathlib import Path

    if labels is None:
        names = [Path(f).parent.name if use_parent else Path(f).stem for f in files]
        return names if len(set(names)) == len(names) else [f"run{i + 1}" for i in range(len(files))]
    if len(labels) != len(files):
        raise UserInputError(f"give one --label per file: {len(files)} files, {len(labels)} labels")
    return labels


def _run_analyze(args: argparse.Namespace) -> int:
    from efldet.evaluation import analysis

    if args.analyze_command == "margins":
        if bool(args.weights) == bool(args.csv):
            raise UserInputError("efldet analyze margins needs --weights CKPT (one or two) or --csv FILE "
                                 "(one or two), not both")
        files = args.weights or args.csv
        if len(files) > 2:
            raise UserInputError("efldet analyze margins compares one or two runs")
        labels = _labels(files, args.label, use_parent=bool(args.weights))
        if args.weights:
            from pathlib import Path

            from efldet.engine.predict import checkpoint_margins

            files = [checkpoint_margins(w, Path(args.out) / f"margins_{lab}.csv", data_root=args.data_root)
                     for lab, w in zip(labels, args.weights, strict=True)]
        runs = {lab: analysis.read_margin_csv(f) for lab, f in zip(labels, files, strict=True)}
        paths = analysis.plot_margins(runs, args.out)
    elif args.analyze_command == "grad-ratio":
        cats = analysis.category_table(args.ann)
        paths = []
        for prefix, (pos, neg) in analysis.load_grad_stats(args.weights).items():
            name = "grad_ratio" if prefix in ("loss", "") else "grad_ratio_" + prefix.replace(".", "_")
            paths += analysis.plot_gradient_ratio(pos, neg, cats, args.out, name=name,
                                                  title=f"Positive / negative gradient ratio ({prefix})")
    elif args.analyze_command == "ap":
        from efldet.evaluation.report import read_per_category_ap

        labels = _labels(args.per_category, args.label, use_parent=True)
        runs = {lab: read_per_category_ap(f) for lab, f in zip(labels, args.per_category, strict=True)}
        if args.ann:
            counts = {r["category_id"]: r for r in analysis.category_table(args.ann)}
            for rows in runs.values():
                for r in rows:
                    if r["category_id"] in counts:
                        r["image_count"] = counts[r["category_id"]]["image_count"]
                        r["frequency"] = counts[r["category_id"]]["frequency"]
        paths = list(analysis.plot_ap_vs_count(runs, args.out))
        groups = {lab: analysis.ap_by_frequency(rows) for lab, rows in runs.items()}
        paths += analysis.plot_ap_by_group(groups, args.out)
        from efldet.evaluation.report import format_markdown_table

        print(format_markdown_table(groups, ["AP", "APr", "APc", "APf"]), end="")
    else:
        raise UserInputError("efldet analyze needs a subcommand: margins, grad-ratio or ap (see --help)")
    for path in paths:
        print(f"wrote {path}")
    return 0


# ----------------------------------------------------------------------------------- config / train / eval / predict
def _add_config_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config (deltas from the defaults; `base:` inherits), e.g. "
                   "configs/synthetic/tiny.yaml")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides such as train.max_iters=100 data.root=DIR output_dir=DIR")


def _add_config(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="print the resolved configuration (defaults + file + overrides)",
                       description="Print the resolved configuration as YAML: the defaults, the file with its "
                       "`base:` chain, then KEY=VALUE overrides. Unknown keys and wrong types are errors.")
    _add_config_arguments(p)


def _run_config(args: argparse.Namespace) -> int:
    from efldet.config import dump_yaml, load_config

    print(dump_yaml(load_config(args.config, args.overrides)), end="")
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a detector (one process, or many through torchrun)",
        description="Train the detector a config describes. Writes config.yaml, metrics.jsonl, TensorBoard files, "
        "checkpoints (iter_<N>.pt and last.pt) and the final evaluation under output_dir. A run whose output_dir "
        "holds last.pt continues from it (auto-resume) unless --no-resume is given. Multi-GPU / multi-node: "
        "torchrun --nproc_per_node=G -m efldet train CONFIG ... (train.batch_size is the global batch).")
    _add_config_arguments(p)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", nargs="?", const=True, default="auto", metavar="CKPT",
                       help="resume from output_dir/last.pt (required to exist), or from the checkpoint CKPT")
    group.add_argument("--no-resume", action="store_true", help="start from scratch even if last.pt exists")


def _run_train(args: argparse.Namespace) -> int:
    from efldet.config import load_config
    from efldet.engine.trainer import NonFiniteLossError, TrainingInterrupted, train

    cfg = load_config(args.config, args.overrides)
    resume = False if args.no_resume else args.resume
    try:
        result = train(cfg, resume=resume)
    except TrainingInterrupted as err:
        print(f"efldet train: {err}", file=sys.stderr)
        return 130
    except NonFiniteLossError as err:
        print(f"efldet train: error: {err}", file=sys.stderr)
        return 1
    from efldet.engine.dist import is_dist, is_main_process

    main_process = is_main_process()
    if is_dist():   # torchrun: leave the process group cleanly
        import torch.distributed as dist

        dist.destroy_process_group()
    metrics = result["metrics"]
    if metrics and main_process:   # under torchrun every rank holds the metrics; print them once
        print(json.dumps({k: round(v, 6) for k, v in metrics.items()}))
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint on the config's validation set",
                       description="Run the checkpoint on data.val_ann of CONFIG and compute the metrics "
                       "(LVIS: AP, AP50, AP75, APs, APm, APl, APr, APc, APf; eval.protocol=coco: COCO's 12).")
    _add_config_arguments(p)
    p.add_argument("--weights", required=True, help="checkpoint (.pt) written by efldet train")
    p.add_argument("--out", help="write the metrics dict here as JSON (detections and tables go next to it)")


def _run_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from efldet.config import load_config
    from efldet.engine.predict import model_from_checkpoint
    from efldet.engine.trainer import build_datasets, evaluate, init_distributed, resolve_device

    cfg = load_config(args.config, args.overrides)
    device = resolve_device(cfg.train.device)
    init_distributed(device)
    model, _, _ = model_from_checkpoint(args.weights, device=device, cfg=cfg)
    _, val_set = build_datasets(cfg)
    out_dir = Path(args.out).parent / "eval" if args.out else Path(cfg.output_dir) / "eval"
    metrics = evaluate(cfg, model, val_set, device, None, 0, out_dir)
    if metrics:
        text = json.dumps(metrics, indent=2)
        print(text)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(text + "\n")
    return 0


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="detect objects in images with a checkpoint; draw and save them",
                       description="Run a checkpoint (it embeds its config and category names) on image files "
                       "or directories; write one PNG per image with boxes and names drawn, and "
                       "detections.json (COCO-style, every detection) into --out.")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or directories of images")
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--weights", help="checkpoint (.pt) written by efldet train")
    model.add_argument("--onnx", metavar="MODEL", help="ONNX file written by efldet export, run by onnxruntime on "
                       "the CPU instead of PyTorch (same outputs; needs the `export` extra)")
    p.add_argument("--out", required=True, help="output directory (created if absent)")
    p.add_argument("--score-threshold", type=float, default=0.3,
                   help="draw detections scoring at least this (default 0.3; the json keeps all)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto; --onnx runs on the CPU)")


def _run_predict(args: argparse.Namespace) -> int:
    from efldet.engine.predict import predict_images

    if args.onnx:
        from efldet.export import predict_onnx

        path = predict_onnx(args.onnx, args.inputs, args.out, score_threshold=args.score_threshold)
    else:
        path = predict_images(args.weights, args.inputs, args.out, score_threshold=args.score_threshold,
                              device_name=args.device)
    print(f"wrote {path} and the drawn images in {args.out}")
    return 0


_ONNX_OPSET = 18  # efldet.export.OPSET, written here so that `efldet --help` does not import torch (a test checks)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help=f"export a checkpoint's detector to ONNX (opset {_ONNX_OPSET}) for onnxruntime",
        description=f"Write the detector of a checkpoint as an ONNX file (opset {_ONNX_OPSET}, built with "
        "torch.onnx.export; batch, height and width are dynamic). Input `images` float32 [N,3,H,W], resized and "
        "normalised as `efldet predict` does. Outputs: decoded boxes [N,K,4] and scores [N,K,C] (the model's "
        "inference score: sigmoid(cls) x sigmoid(quality) with an IoU/centerness branch, else sigmoid(cls)) and "
        "level_sizes [L]; with --with-nms the post-processing and class-aware NMS (ONNX NonMaxSuppression) run "
        "in the graph and the outputs are det_boxes [D,4], det_scores [D], det_labels [D] and det_batch [D]. "
        "Category names, ids, resize and normalisation go into the file's metadata; run it with "
        "`efldet predict --onnx MODEL`.")
    p.add_argument("--weights", required=True, help="checkpoint (.pt) written by efldet train (EMA weights if any)")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="output format (default onnx)")
    p.add_argument("--out", required=True, metavar="FILE", help="output file, e.g. model.onnx")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                   help="size of the example image traced (default: the checkpoint's test shorter side, square); "
                   "the exported model accepts any size")
    p.add_argument("--with-nms", action="store_true",
                   help="include the post-processing with NMS (ONNX NonMaxSuppression) in the graph")


def _run_export(args: argparse.Namespace) -> int:
    from efldet.export import OPSET, export_checkpoint

    path = export_checkpoint(args.weights, args.out, input_size=args.input_size, with_nms=args.with_nms)
    print(f"wrote {path} (ONNX opset {OPSET}, {'with' if args.with_nms else 'without'} NMS); run it with: "
          f"efldet predict --onnx {path} IMAGES... --out DIR")
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="the method on a laptop: synthetic long-tailed data, focal loss vs EFL, table and plots",
        description="Generate the synthetic long-tailed set, train the improved baseline's structure with focal "
        "loss and with EFL, evaluate both, print AP / APr / APc / APf side by side and write the table "
        "(results.json, results.md), the AP-per-group chart, the margin plot (Fig. 4), the gradient-ratio plot, "
        "the loss plots (Fig. 3, 5) and prediction images into --out.")
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument("--quick", action="store_true", help="tiny data and a few iterations: checks the pipeline only")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the training runs (default 0)")
    p.add_argument("--max-iters", type=int, help="iterations per loss (default: configs/synthetic/demo.yaml)")


def _run_demo(args: argparse.Namespace) -> int:
    from efldet.demo import run_demo

    run_demo(args.out, quick=args.quick, seed=args.seed, max_iters=args.max_iters)
    return 0


# ----------------------------------------------------------------------------------------------- main
_COMMANDS = {
    "demo": (_add_demo, _run_demo),
    "train": (_add_train, _run_train),
    "eval": (_add_eval, _run_eval),
    "predict": (_add_predict, _run_predict),
    "export": (_add_export, _run_export),
    "config": (_add_config, _run_config),
    "analyze": (_add_analyze, _run_analyze),
    "data": (_add_data, _run_data),
    "plot-loss": (_add_plot_loss, _run_plot_loss),
    "info": (_add_info, _run_info),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="efldet",
        description="One-stage long-tailed object detection with the Equalized Focal Loss.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add, _ in _COMMANDS.values():
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    _, run = _COMMANDS[args.command]
    try:
        return run(args)
    except UserInputError as err:
        print(f"efldet {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"efldet {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a runtime failure: the reason on stderr, exit code 1 (EFLDET_DEBUG=1: traceback)
        if os.environ.get("EFLDET_DEBUG"):
            traceback.print_exc()
        print(f"efldet {args.command}: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
