"""The `handray` command: one subcommand per user task, errors printed without a traceback."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from handray import __version__
from handray.errors import HandrayError

Command = Callable[[argparse.Namespace], int | None]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
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
    parser.add_argument("--version", action="version", version=f"handray {__version__}")
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
    )
    print_dataset_summary("synthetic dataset", summary)


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
    from handray.data.preview import preview_dataset

    out = args.out or args.dataset / f"preview_{args.split}.png"
    path = preview_dataset(load_dataset(args.dataset, args.split), out, count=args.count)
    print(f"ground truth of the first {args.count} {args.split} images: {path}")


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
