"""Training-pipeline throughput on RHD-like 320x320 images resized to 512 (the hand-r50 input).

Target: >= 40 images/s on a 2-core machine, so one GPU worker never waits on input.

    .venv/bin/python benchmarks/pipeline.py [--images 200] [--measure 400]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf

from handray.config import load_config
from handray.data.coco import load_dataset
from handray.data.pipeline import build_dataset
from handray.data.synthetic import generate_dataset

TARGET = 40.0


def measure(data: tf.data.Dataset, batch_size: int, images: int, warmup: int = 5) -> float:
    """Images per second over `images` images, after `warmup` batches fill the prefetch buffers."""
    iterator = iter(data)
    for _ in range(warmup):
        next(iterator)
    batches = max(1, images // batch_size)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="distinct images generated")
    parser.add_argument("--measure", type=int, default=400, help="images timed per row")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "rhd-like"
        generate_dataset(root, train=args.images, val=0, size=320, seed=0, progress=False)
        dataset = load_dataset(root, "train")
        rows = []
        for label, overrides, training in [
            ("train, augmented", {}, True),
            ("train, no augmentation", {"data.augment": False}, True),
            ("evaluation", {}, False),
        ]:
            config = load_config("hand-r50", overrides)
            for batch in (2, 8):
                data = build_dataset(
                    dataset, config, training=training, batch_size=batch, repeat=True
                )
                rows.append((label, batch, measure(data, batch, args.measure)))
    print(
        f"pipeline throughput, 320x320 -> 512x512, {os.cpu_count()} CPU cores, "
        f"tensorflow {tf.__version__}"
    )
    print(f"| {'pipeline':<24} | batch | images/s | >= {TARGET:.0f}/s |")
    print(f"|{'-' * 26}|-------|----------|---------|")
    for label, batch, rate in rows:
        verdict = "met" if rate >= TARGET else "MISSED"
        print(f"| {label:<24} | {batch:>5} | {rate:>8.1f} | {verdict:<7} |")


if __name__ == "__main__":
    main()
