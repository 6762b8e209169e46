"""Training throughput with Ray Train: 1 worker against 2 workers, one CPU thread each.

Scaling efficiency = 2-worker images/s / (2 x 1-worker images/s); target >= 0.8. Each row is a
real `handray.train.trainer.run_training` call on a local Ray cluster; images/s is the second
epoch's (the first includes tracing and compiling), measured inside the workers. One row per
preset and `train.precision` (`--precisions float32 mixed_bfloat16` compares them).

    .venv/bin/python benchmarks/train.py [--steps 8] [--presets tiny hand-r50] [--precisions ...]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import ray

from handray.config import PRECISIONS, load_config
from handray.data.synthetic import generate_dataset
from handray.train.resources import WorkerResources
from handray.train.trainer import run_training

TARGET = 0.8
SIZES = {"tiny": 128, "hand-r50": 512}
IMAGES_PER_WORKER = {"tiny": 4, "hand-r50": 1}


def images_per_second(
    preset: str, precision: str, data: Path, storage: Path, workers: int, steps: int
) -> float:
    config = load_config(
        preset,
        {
            "train.epochs": 2,
            "train.steps_per_epoch": steps,
            "train.validation_steps": 1,
            "train.eval_every": 0,
            "train.images_per_worker": IMAGES_PER_WORKER[preset],
            "train.stages": {},
            "train.layers": "all",
            "train.train_bn": True,
            "train.precision": precision,
        },
    )
    run = run_training(
        config,
        data,
        resources=WorkerResources(workers, cpus_per_worker=1),
        name=f"{preset}-{precision}-{workers}",
        storage=storage,
        verbose=False,
    )
    return run.state.history[-1]["images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="steps per timed epoch")
    parser.add_argument("--presets", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--precisions", nargs="+", default=["float32"], choices=PRECISIONS)
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=True, log_to_driver=False)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            size = SIZES[preset]
            data = Path(tmp) / f"data{size}"
            generate_dataset(data, train=16, val=4, size=size, seed=0, progress=False)
            for precision in args.precisions:
                runs = Path(tmp) / "runs"
                one = images_per_second(preset, precision, data, runs, 1, args.steps)
                two = images_per_second(preset, precision, data, runs, 2, args.steps)
                rows.append((preset, precision, size, one, two, two / (2 * one)))
    ray.shutdown()
    print(f"\ntraining throughput, Ray Train, 1 CPU thread per worker, {os.cpu_count()} cores")
    print("| preset | precision | input | 1 worker img/s | 2 workers img/s | scaling efficiency |")
    print("|---|---|---|---|---|---|")
    for preset, precision, size, one, two, efficiency in rows:
        verdict = "met" if efficiency >= TARGET else f"below {TARGET}"
        print(
            f"| {preset} | {precision} | {size} | {one:.2f} | {two:.2f} | "
            f"{efficiency:.2f} {verdict} |"
        )


if __name__ == "__main__":
    main()
