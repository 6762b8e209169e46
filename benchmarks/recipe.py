"""One row of a recipe ablation: train `tiny` in one process for a fixed number of steps, then
evaluate whole validation splits with pycocotools and the held-out drawing style's
class-agnostic AP.

Short, comparable runs (same data, seed, steps and batch) for deciding what the demo keeps;
each row is appended to `--table` as JSON, and the whole table printed. `--val` names the
datasets whose validation split is measured (default: the training dataset's), so runs trained
on different data are compared on the same images:

    .venv/bin/python benchmarks/recipe.py --dataset runs/demo/data --steps 1200 \
        --name "side head" --set model.side_head=true
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from handray.config import load_config, with_overrides
from handray.config.loading import parse_overrides
from handray.data.coco import load_dataset
from handray.evaluation.held_out import evaluate_held_out, held_out_dataset
from handray.evaluation.metrics import evaluate_model
from handray.inference.checkpoints import load_trained_model
from handray.inference.predictor import Predictor
from handray.inference.thresholds import Thresholds
from handray.train.loop import WorkerContext, train_worker

# The demo's evaluation settings: no augmentation, a low threshold so AP sees the whole curve.
BASE = {"data.augment": False, "model.detection_min_confidence": 0.05, "train.eval_every": 0}
COLUMNS = (
    ("mask AP50", ("segm", "AP50")),
    ("any side AP50", ("agnostic", "segm", "AP50")),
    ("side acc.", ("handedness", "accuracy")),
    ("PCK@0.2", ("keypoints", "pck@0.2")),
    ("EPE px", ("keypoints", "epe_px")),
)
HELD_OUT = "held-out style"


def train_and_evaluate(
    dataset: Path, steps: int, overrides: dict, epochs: int, val: list[Path]
) -> dict:
    """Metrics of each `val` dataset's validation split and of the held-out style after `steps`
    training steps, and the seconds taken."""
    config = load_config("tiny", {**BASE, **overrides})
    schedule = {"train.epochs": epochs, "train.steps_per_epoch": steps // epochs}
    config = with_overrides(config, schedule)
    kept = Path(tempfile.mkdtemp(prefix="recipe-"))

    def keep_last(metrics: dict, checkpoint: Path | None) -> None:
        if checkpoint is not None:
            shutil.rmtree(kept, ignore_errors=True)
            shutil.copytree(checkpoint, kept)

    start = time.perf_counter()
    try:
        train_worker(config, dataset, WorkerContext(report=keep_last))
        seconds = time.perf_counter() - start
        model, trained, _ = load_trained_model(kept)
        predictor = Predictor(model, Thresholds.from_config(trained))
        metrics = {
            str(folder): evaluate_model(predictor, load_dataset(folder, "val"), progress=False)
            for folder in val
        }
        held_out = held_out_dataset(config.data.image_size, progress=False)
        metrics[HELD_OUT] = evaluate_held_out(predictor, held_out, progress=False)
    finally:
        shutil.rmtree(kept, ignore_errors=True)
    return {"metrics": metrics, "train_seconds": seconds}


def _value(metrics: dict, path: tuple[str, ...]) -> float | None:
    for key in path:
        metrics = (metrics or {}).get(key)
    return metrics


def print_table(rows: list[dict]) -> None:
    """One line per run and validation set; the held-out style's any-side AP50 on each."""
    header = ["run", "steps", "val", *(name for name, _ in COLUMNS), HELD_OUT, "train min"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        metrics = dict(row["metrics"])
        if "segm" in metrics:  # a row from before the table measured several sets
            metrics = {"val": metrics}
        held_out = _value(metrics.pop(HELD_OUT, None), ("segm", "AP50"))
        for val, found in metrics.items():
            values = [*(_value(found, path) for _, path in COLUMNS), held_out]
            cells = ["-" if v is None else f"{v:.3f}" for v in values]
            print(
                f"| {row['name']} | {row['steps']} | {Path(val).name} | "
                + " | ".join(cells)
                + f" | {row['train_seconds'] / 60:.1f} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--epochs", type=int, default=4, help="the steps split into epochs")
    parser.add_argument("--name", required=True, help="the row's name")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--val", type=Path, nargs="*", metavar="DIR", help="validation datasets (default DATASET)"
    )
    parser.add_argument("--table", type=Path, default=Path("runs/recipe.jsonl"))
    args = parser.parse_args()
    overrides = parse_overrides(args.set)
    val = args.val or [args.dataset]
    result = train_and_evaluate(args.dataset, args.steps, overrides, args.epochs, val)
    row = {"name": args.name, "steps": args.steps, "set": args.set, **result}
    args.table.parent.mkdir(parents=True, exist_ok=True)
    with args.table.open("a") as handle:
        handle.write(json.dumps(row, default=float) + "\n")
    print_table([json.loads(line) for line in args.table.read_text().splitlines()])


if __name__ == "__main__":
    main()
