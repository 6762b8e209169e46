"""The `handray` command: one subcommand per user task, errors printed without a traceback."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from handray.config import LAYER_STAGES, Config
from handray.core.errors import HandrayError
from handray.core.version import VERSION
from handray.core.xla_cache import use_xla_cache

Command = Callable[[argparse.Namespace], int | None]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    use_xla_cache()  # before TensorFlow runs anything; Ray workers started here inherit it
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.command(args) or 0
    except HandrayError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing half-written was kept", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="handray", description=__doc__)
    parser.add_argument("--version", action="version", version=f"handray {VERSION}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    config = _command(commands, "config", _config, "print a resolved config as YAML")
    config.add_argument("source", nargs="?", default="hand-r101", help="preset name or YAML file")
    _add_overrides(config)
    config.add_argument("--out", type=Path, help="also write the YAML to this file")

    synth = _command(commands, "synth", _synth, "generate a synthetic hand dataset")
    synth.add_argument("out", type=Path, help="dataset folder to create")
    synth.add_argument("--train", type=int, default=400, help="training images (default 400)")
    synth.add_argument("--val", type=int, default=100, help="validation images (default 100)")
    synth.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    synth.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    synth.add_argument("--workers", type=int, help="parallel processes (default: all cores)")
    synth.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    synth.add_argument(
        "--style",
        choices=("classic", "varied", "held-out"),
        default="varied",
        help="how images are drawn: classic, varied (default; classic plus paint families) or "
        "held-out (another drawing of hands, for evaluation only)",
    )

    rhd = _command(commands, "convert-rhd", _convert_rhd, "convert RHD to COCO instances files")
    rhd.add_argument("root", type=Path, help="RHD folder holding training/ and evaluation/")
    rhd.add_argument("--out", type=Path, help="output folder (default: RHD_ROOT/annotations)")
    rhd.add_argument("--classes", choices=("left-right", "hand"), default="left-right")
    rhd.add_argument("--min-area", type=int, default=16, help="smaller hands become crowd")
    rhd.add_argument("--workers", type=int, help="parallel processes (default: all cores)")
    rhd.add_argument("--skip-bad", action="store_true", help="skip missing or corrupt files")

    preview = _command(commands, "preview", _preview, "draw a dataset's ground truth to a PNG")
    preview.add_argument("dataset", type=Path, help="dataset folder")
    preview.add_argument("--split", default="train")
    preview.add_argument("--count", type=int, default=8, help="images to draw (default 8)")
    preview.add_argument("--out", type=Path, help="PNG path (default DATASET/preview_SPLIT.png)")
    preview.add_argument(
        "--augmented",
        action="store_true",
        help="draw training examples as the pipeline makes them (augmented, in the padded "
        "square; default PNG DATASET/preview_SPLIT_augmented.png)",
    )
    source = preview.add_mutually_exclusive_group()
    source.add_argument("--preset", help="with --augmented: config preset (default hand-r101)")
    source.add_argument("--config", type=Path, help="with --augmented: config YAML file")
    _add_overrides(preview)

    train = _command(commands, "train", _train, "train with Ray Train on a local or remote cluster")
    _add_cluster_run(train)
    train.add_argument(
        "--weights",
        default="none",
        help="start from none (default), coco, imagenet, a checkpoint/run folder or .h5 file; "
        "`last` continues the newest run",
    )
    train.add_argument("--workers", type=_positive_int, default=2, help="training workers (2)")
    train.add_argument(
        "--stage", choices=LAYER_STAGES, help="train only these layers (replaces train.stages)"
    )
    train.add_argument("--name", help="run name; an existing run resumes (default PRESET-TIME)")
    train.add_argument("--storage", default="runs", help="runs folder (default runs)")

    tune = _command(commands, "tune", _tune, "search learning rate and anchor scales with Ray Tune")
    _add_cluster_run(tune)
    tune.add_argument("--trials", type=_positive_int, metavar="N", help="sets tune.trials")
    tune.add_argument("--metric", help="val_mask_ap or val_loss; sets tune.metric")
    tune.add_argument(
        "--workers-per-trial", type=_positive_int, default=1, metavar="W", help="default 1"
    )
    tune.add_argument(
        "--weights", default="none", help="every trial starts from none, coco, imagenet or PATH"
    )
    tune.add_argument("--name", help="sweep name; an existing sweep resumes (default PRESET-TIME)")
    tune.add_argument("--out", default="runs/tune", help="sweeps folder (default runs/tune)")
    tune.add_argument(
        "--resume", action="store_true", help="continue sweep --name, or else the newest one"
    )

    evaluate = _command(commands, "evaluate", _evaluate, "COCO box and mask AP on a dataset split")
    evaluate.add_argument(
        "--dataset", type=Path, required=True, metavar="DIR", help="dataset folder"
    )
    evaluate.add_argument("--split", default="val", help="split to evaluate (default val)")
    evaluate.add_argument("--limit", type=_positive_int, metavar="N", help="first N images only")
    evaluate.add_argument(
        "--out", type=Path, metavar="DIR", help="for metrics.json (default CHECKPOINT/eval_SPLIT)"
    )
    evaluate.add_argument(
        "--overlays", type=int, default=16, metavar="N", help="images to draw (default 16)"
    )
    evaluate.add_argument(
        "--batch-size", type=_positive_int, default=4, metavar="N", help="default 4"
    )
    held_out = evaluate.add_mutually_exclusive_group()
    held_out.add_argument(
        "--held-out",
        type=_count,
        default=100,
        metavar="N",
        help="also the class-agnostic AP on N images of the held-out drawing style "
        "(generated once, cached; default 100, 0 skips it)",
    )
    held_out.add_argument(
        "--held-out-dataset",
        type=Path,
        metavar="DIR",
        help="use this dataset folder's val split as the held-out set instead",
    )
    _add_weights(evaluate, exports=True)

    predict = _command(commands, "predict", _predict, "detect hands in image files")
    predict.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    predict.add_argument("--overlay", type=Path, metavar="OUT_DIR", help="draw to OUT_DIR/STEM.png")
    predict.add_argument("--json", action="store_true", help="print one JSON document")
    predict.add_argument(
        "--min-score", type=_score, metavar="S", help="report scores >= S (default: config's)"
    )
    _add_weights(predict, exports=True)

    export = _command(commands, "export", _export, "write a SavedModel for serving")
    export.add_argument("--out", type=Path, required=True, metavar="DIR", help="export folder")
    export.add_argument("--name", help="model name in replies (default handray-PRESET)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing export")
    _add_weights(export)

    serve = _command(
        commands, "serve", _serve, "serve a Ray Serve config; SIGTERM or Ctrl-C drains, then stops"
    )
    serve.add_argument(
        "config",
        nargs="?",
        type=Path,
        default=Path("serve_config.yaml"),
        help="Ray Serve config file (default serve_config.yaml)",
    )
    serve.add_argument(
        "--address",
        help="join this running Ray cluster (default: start a local one, stopped at the end)",
    )
    serve.add_argument(
        "--num-cpus",
        type=_positive_int,
        metavar="N",
        help="CPUs of the local cluster (default: all)",
    )
    serve.add_argument(
        "--drain-timeout-s",
        type=_seconds,
        metavar="S",
        help="longest wait for the requests in flight at a stop (default: the config's "
        "http_options.request_timeout_s)",
    )

    demo = _command(commands, "demo", _demo, "run the end-to-end demo on synthetic hands")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="default runs/demo")
    return parser


def _command(commands, name: str, run: Command, help_text: str) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help_text, description=help_text)
    parser.set_defaults(command=run)
    return parser


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override config values, e.g. --set train.learning_rate=0.002",
    )


def _add_cluster_run(parser: argparse.ArgumentParser) -> None:
    """The options that `train` and `tune` share: data, config, worker resources, cluster
    (read back by `_cluster_config`)."""
    parser.add_argument("--dataset", type=Path, required=True, metavar="DIR", help="dataset folder")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", default=None, help="config preset (default hand-r101)")
    source.add_argument("--config", type=Path, help="config YAML file")
    parser.add_argument("--gpus-per-worker", type=float, default=0, metavar="G", help="default 0")
    parser.add_argument("--cpus-per-worker", type=float, default=1, metavar="C", help="default 1")
    parser.add_argument("--epochs", type=_positive_int, metavar="E", help="sets train.epochs")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or local)")
    _add_overrides(parser)


def _add_weights(parser: argparse.ArgumentParser, exports: bool = False) -> None:
    """The options that say which trained model a command runs (`exports`: an export folder
    too, run by its own graph)."""
    parser.add_argument(
        "--weights",
        required=True,
        help="`last`, `best` (the newest sweep's best trial), a checkpoint, run or sweep folder, "
        + ("an export folder (models/reference), " if exports else "")
        + "or an .h5 file (which needs --preset/--config)",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", help="architecture preset, replacing the checkpoint's config")
    source.add_argument("--config", type=Path, help="config YAML, replacing the checkpoint's")
    _add_overrides(parser)
    parser.add_argument(
        "--storage", type=Path, help="runs folder for --weights last/best (default runs)"
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _score(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a score within [0, 1], got {value}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text}")
    return value


def _config(args: argparse.Namespace) -> None:
    from handray.config import dump_config, load_config, parse_overrides, save_config

    config = load_config(args.source, parse_overrides(args.overrides))
    print(dump_config(config), end="")
    if args.out:
        save_config(config, args.out)
        print(f"# written to {args.out}")


def _synth(args: argparse.Namespace) -> None:
    from handray.data.synthetic import generate_dataset

    summary = generate_dataset(
        args.out,
        train=args.train,
        val=args.val,
        size=args.size,
        seed=args.seed,
        workers=args.workers,
        overwrite=args.overwrite,
        style=args.style,
    )
    print_dataset_summary(f"synthetic dataset ({args.style})", summary)


def _convert_rhd(args: argparse.Namespace) -> None:
    from handray.data.rhd import convert_rhd

    summary = convert_rhd(
        args.root,
        args.out,
        classes=args.classes,
        min_area=args.min_area,
        workers=args.workers,
        skip_bad=args.skip_bad,
    )
    print_dataset_summary("RHD conversion", summary)


def _preview(args: argparse.Namespace) -> None:
    from handray.data.coco import load_dataset
    from handray.data.preview import preview_augmented, preview_dataset

    dataset = load_dataset(args.dataset, args.split)
    if args.augmented:
        from handray.config import load_config, parse_overrides

        config = load_config(
            args.config or args.preset or "hand-r101", parse_overrides(args.overrides)
        )
        out = args.out or args.dataset / f"preview_{args.split}_augmented.png"
        path = preview_augmented(dataset, config, out, count=args.count)
        print(f"{args.count} {args.split} training examples as the model sees them: {path}")
        return
    out = args.out or args.dataset / f"preview_{args.split}.png"
    path = preview_dataset(dataset, out, count=args.count)
    print(f"ground truth of the first {args.count} {args.split} images: {path}")


def _train(args: argparse.Namespace) -> None:
    from handray.config import parse_overrides
    from handray.train.trainer import run_training

    overrides = parse_overrides(args.overrides)
    if args.stage:
        overrides.update({"train.layers": args.stage, "train.stages": {}})
    run_training(
        _cluster_config(args, overrides),
        args.dataset,
        weights=args.weights,
        resources=_worker_resources(args, args.workers),
        name=args.name,
        storage=args.storage,
    )


def _tune(args: argparse.Namespace) -> None:
    from handray.config import parse_overrides
    from handray.train.tune import run_tune

    overrides = parse_overrides(args.overrides)
    for key, value in (("tune.trials", args.trials), ("tune.metric", args.metric)):
        if value is not None:
            overrides[key] = value
    run_tune(
        _cluster_config(args, overrides),
        args.dataset,
        weights=args.weights,
        resources=_worker_resources(args, args.workers_per_trial),
        name=args.name,
        out=args.out,
        resume=args.resume,
    )


def _worker_resources(args: argparse.Namespace, workers: int):
    """`workers` workers, each with the CPUs and GPUs that `_add_cluster_run` options give."""
    from handray.train.resources import WorkerResources

    return WorkerResources(workers, args.gpus_per_worker, args.cpus_per_worker)


def _cluster_config(args: argparse.Namespace, overrides: dict) -> Config:
    """The config a train or tune command runs (--preset or --config, then overrides and
    --epochs), once connected to the Ray cluster at --address (else a later step finds or starts
    one)."""
    from handray.config import load_config

    if args.epochs is not None:
        overrides = {**overrides, "train.epochs": args.epochs}
    config = load_config(args.config or args.preset or "hand-r101", overrides)
    if args.address:
        import ray

        ray.init(address=args.address)
    return config


def _evaluate(args: argparse.Namespace) -> None:
    from handray.data.coco import load_dataset
    from handray.evaluation.held_out import evaluate_held_out, held_out_dataset
    from handray.evaluation.metrics import (
        MONTAGE_FILE,
        evaluate_model,
        format_metrics,
        write_metrics,
    )
    from handray.inference.load import ExportPredictor

    dataset = load_dataset(args.dataset, args.split)
    predictor, config, weights = _load_predictor(args, batch_size=args.batch_size)
    if weights.is_dir():
        out = args.out or weights / f"eval_{args.split}"
    else:
        out = args.out or weights.parent / f"eval_{weights.stem}_{args.split}"
    count = min(len(dataset), args.limit or len(dataset))
    print(f"weights: {weights}")
    own = "the export's" if isinstance(predictor, ExportPredictor) else "the checkpoint's"
    source = args.preset or args.config or f"{own} config"
    print(f"config:  {source} (preset {config.preset}, {config.model.backbone} backbone)")
    print(f"data:    {dataset.annotation_file}, {count} of {len(dataset)} images")
    held_out = args.held_out_dataset
    if held_out is not None:
        load_dataset(held_out, "val")  # a bad folder fails now, not after the evaluation
    elif args.held_out > 0:
        held_out = held_out_dataset(config.data.image_size, images=args.held_out)
    metrics = evaluate_model(predictor, dataset, limit=args.limit, overlays=args.overlays, out=out)
    if held_out is not None:
        print(f"held-out style: {held_out}")
        metrics["held_out"] = evaluate_held_out(
            predictor, held_out, overlays=args.overlays, out=out / "held_out"
        )
    print(format_metrics(metrics))
    print(f"metrics: {write_metrics(metrics, out)}")
    if args.overlays > 0:
        print(f"overlays: {out}/overlay_*.png, all in {out / MONTAGE_FILE}")
        if held_out is not None:
            print(f"held-out style's overlays: {out / 'held_out' / MONTAGE_FILE}")


def _predict(args: argparse.Namespace) -> None:
    import json

    from handray.inference.predict import check_inputs, format_predictions, predict_files

    check_inputs(args.images, args.overlay)
    predictor, _, _ = _load_predictor(args)
    records = predict_files(
        predictor, args.images, overlay_dir=args.overlay, min_score=args.min_score
    )
    if args.json:
        print(json.dumps(records))
        return
    print(format_predictions(records))
    if args.overlay:
        print(f"overlays: {args.overlay}")


def _export(args: argparse.Namespace) -> None:
    from handray.inference.export import check_target, export_model

    check_target(args.out, args.overwrite)
    model, config, weights = _load_model(args)
    print(f"weights: {weights}")
    out = export_model(model, config, args.out, name=args.name, overwrite=args.overwrite)
    print(
        f"SavedModel: {out} (signatures serving_default, serving_thresholds, predict_image, "
        "metadata)"
    )
    print(f"serve it:   serve run handray.serve.app:build_app model_dir={out}")


def _load_model(args: argparse.Namespace):
    """The model, config and weights path that `_add_weights` options name."""
    from handray.config import parse_overrides
    from handray.inference.checkpoints import DEFAULT_STORAGE, load_trained_model

    return load_trained_model(
        args.weights,
        args.preset or args.config,
        parse_overrides(args.overrides),
        storage=args.storage or DEFAULT_STORAGE,
    )


def _load_predictor(args: argparse.Namespace, batch_size: int = 4):
    """A predictor for the model `_add_weights` options name (an export folder runs its own
    graph, like the shipped models/reference), its config and weights path."""
    from handray.core.exported import holds_export
    from handray.inference.predictor import Predictor
    from handray.inference.thresholds import Thresholds

    if holds_export(args.weights):
        from handray.config import load_config
        from handray.inference.export import CONFIG_COPY
        from handray.inference.load import ExportPredictor

        export = Path(args.weights).expanduser()
        if args.preset or args.config or args.overrides:
            raise HandrayError(
                f"--weights {export} is an export, which runs with its own config "
                f"({CONFIG_COPY}); drop --preset, --config and --set"
            )
        return ExportPredictor(export, batch_size), load_config(export / CONFIG_COPY), export
    model, config, weights = _load_model(args)
    return Predictor(model, Thresholds.from_config(config), batch_size), config, weights


def _serve(args: argparse.Namespace) -> int:
    from handray.serve.supervisor import serve_config

    return serve_config(
        args.config,
        address=args.address,
        num_cpus=args.num_cpus,
        drain_timeout_s=args.drain_timeout_s,
    )


def _demo(args: argparse.Namespace) -> None:
    from handray.demo import run_demo

    run_demo(args.out)


def print_dataset_summary(title: str, summary) -> None:
    """The lines every dataset-making command ends with: what was written and what was not."""
    print(f"{title}: {summary.out}")
    for split, count in summary.images.items():
        print(f"  {split:<6} {count:>7} images")
    for name, count in summary.hands_per_class.items():
        print(f"  {name:<12} {count:>7} hands")
    print(f"  crowd (too small, ignored in training): {summary.crowd}")
    skipped = getattr(summary, "skipped", None)
    if skipped is not None:
        print(f"  skipped files: {len(skipped)}")
        for entry in skipped:
            print(f"    {entry}")


if __name__ == "__main__":
    sys.exit(main())
