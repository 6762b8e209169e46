"""Time of one training step of the `tiny` preset (one process), and what each setting costs.

The mask head dominates a step when it runs on every positive slot, most of them padding; the
rows below show the step time as `model.mask_rois_per_image` and the anchors change.

    .venv/bin/python benchmarks/train_step.py --dataset runs/demo/data [--steps 24]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from handray.config import load_config
from handray.data.coco import load_dataset
from handray.data.pipeline import build_dataset
from handray.model import build_model
from handray.model.precision import computing_in
from handray.train.loop import make_optimizer
from handray.train.step import make_train_step

VARIANTS = (
    ("tiny preset", {}),
    ("mask head on all 21 positive slots", {"model.mask_rois_per_image": 0}),
    ("one anchor size per level", {"model.rpn_anchor_octaves": [1.0]}),
    ("group norm", {"model.norm": "group"}),
    ("SGD", {"train.optimizer": "sgd"}),
    ("bfloat16 compute (train.precision=mixed_bfloat16)", {"train.precision": "mixed_bfloat16"}),
)


def step_seconds(dataset, overrides: dict, steps: int) -> tuple[float, int]:
    """Mean seconds per step after three warm-up steps (tracing), and the batch size."""
    config = load_config("tiny", {"data.augment": False, **overrides})
    with computing_in(config.train.precision):
        model = build_model(config)
    step = make_train_step(model, make_optimizer(config.train), config)
    batches = iter(build_dataset(dataset, config, training=True))
    cached = [next(batches) for _ in range(8)]
    for batch in cached[:3]:
        step(batch)
    start = time.perf_counter()
    for index in range(steps):
        step(cached[index % len(cached)])
    return (time.perf_counter() - start) / steps, config.train.images_per_worker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, type=Path)
    parser.add_argument("--steps", type=int, default=24)
    args = parser.parse_args()
    dataset = load_dataset(args.dataset, "train")
    print("| setting | ms per step | images/s |\n|---|---|---|")
    for label, overrides in VARIANTS:
        seconds, batch = step_seconds(dataset, overrides, args.steps)
        print(f"| {label} | {seconds * 1000:.0f} | {batch / seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
