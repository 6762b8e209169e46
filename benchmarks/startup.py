"""What a new process pays before it does useful work: a short training run (as the tests and
every Ray Train worker start one), the same model's train step compiled with XLA (as a GPU
worker runs it), the first predictions, and a served export's first batch of each size (what a
Serve replica warms up). Prints a markdown table of seconds.

    .venv/bin/python benchmarks/startup.py [--model-dir models/reference]

Run it on another checkout with `PYTHONPATH=/that/checkout` to compare two versions.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def timed(work: Callable[[], Any]) -> tuple[Any, float]:
    """What `work()` returns and the seconds it took."""
    start = time.perf_counter()
    result = work()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=Path("models/reference"))
    parser.add_argument("--batch-sizes", type=int, default=8, help="warm batches 1..N")
    args = parser.parse_args()

    rows: list[tuple[str, float]] = []
    rows.append(("import TensorFlow and handray", timed(_import_everything)[1]))

    from handray.config import load_config
    from handray.core.exported import ExportedModel, holds_export
    from handray.data.synthetic import generate_dataset
    from handray.inference.predictor import Predictor
    from handray.inference.thresholds import Thresholds
    from handray.model import build_model
    from handray.train.loop import WorkerContext, train_worker

    config = load_config(
        "tiny",
        {
            "data.image_size": 64,
            "train.epochs": 2,
            "train.steps_per_epoch": 3,
            "train.validation_steps": 1,
            "train.images_per_worker": 2,
            "train.eval_every": 0,
        },
    )
    with tempfile.TemporaryDirectory() as tmp:
        hands = Path(tmp) / "hands"
        generate_dataset(hands, train=8, val=4, size=64, seed=3, workers=1, progress=False)
        _, seconds = timed(lambda: train_worker(config, hands, WorkerContext()))
        rows.append(("train_worker: 2 epochs of 3 steps at 64 px", seconds))
        step, batch = _xla_train_step(config, hands)
        rows.append(("train step under XLA: first call", timed(lambda: step(batch))[1]))

    tiny = load_config("tiny")
    predictor = Predictor(build_model(tiny), Thresholds.from_config(tiny))
    image = np.random.default_rng(0).integers(0, 256, (96, 128, 3), np.uint8)
    rows.append(("first detect (tiny, 1 image)", timed(lambda: predictor.detect([image]))[1]))
    rows.append(("second detect", timed(lambda: predictor.detect([image]))[1]))

    if holds_export(args.model_dir):
        exported, seconds = timed(lambda: ExportedModel(args.model_dir))
        rows.append(("load the export", seconds))
        encoded = io.BytesIO()
        Image.fromarray(image).save(encoded, format="PNG")
        probe = encoded.getvalue()
        sizes = range(1, args.batch_sizes + 1)
        first = sum(timed(lambda n=n: exported.run([probe] * n, 0.5, 0.5))[1] for n in sizes)
        rows.append((f"export: first batch of each size 1..{args.batch_sizes}, summed", first))
        again = timed(lambda: exported.run([probe], 0.5, 0.5))[1]
        rows.append(("export: a batch of 1 again", again))

    print("| measure | seconds |\n|---|---|")
    for measure, seconds in rows:
        print(f"| {measure} | {seconds:.1f} |")


def _xla_train_step(config, hands: Path) -> tuple[Callable, dict]:
    """The model's train step compiled with XLA, as a GPU worker runs it, and one batch."""
    from handray.data.coco import load_dataset
    from handray.data.pipeline import build_dataset
    from handray.model import build_model
    from handray.train.loop import make_optimizer
    from handray.train.step import make_train_step

    model = build_model(config, jit_compile=True)
    optimizer = make_optimizer(config.train)
    optimizer.build(model.trainable_variables)
    step = make_train_step(model, optimizer, config, jit_compile=True)
    batch = next(iter(build_dataset(load_dataset(hands, "train"), config, training=True)))
    return step, batch


def _import_everything() -> None:
    import tensorflow  # noqa: F401

    import handray.train.loop  # noqa: F401


if __name__ == "__main__":
    main()
