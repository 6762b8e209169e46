"""Which oneDNN kernels a `tiny` training step runs, per `train.precision`: whether bfloat16
really computes in bfloat16 kernels or spends its time converting around float32 ones.

Each precision runs in a child process with ONEDNN_VERBOSE=1 (oneDNN then prints one line per
primitive it executes, with its implementation and time); the steps after the warm-up are
summed by primitive kind and by the data type it computes on (from the memory descriptors; a
reorder either converts between types or only changes the memory layout). Times are per step;
oneDNN's times add up over its threads and its logging slows the wall time.

    .venv/bin/python benchmarks/onednn.py [--steps 6] [--precisions float32 mixed_bfloat16]
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MARK = "--- timed steps ---"
WARMUP_STEPS = 3


def run_steps(precision: str, steps: int, data: Path) -> None:
    """The child: warm-up steps, the marker, then `steps` timed steps (wall time printed)."""
    from handray.config import load_config
    from handray.data.coco import load_dataset
    from handray.data.pipeline import build_dataset
    from handray.model import build_model
    from handray.model.precision import computing_in
    from handray.train.loop import make_optimizer
    from handray.train.step import make_train_step

    config = load_config("tiny", {"data.augment": False, "train.precision": precision})
    with computing_in(precision):
        model = build_model(config)
        step = make_train_step(model, make_optimizer(config.train), config)
    batches = iter(build_dataset(load_dataset(data), config, training=True))
    cached = [next(batches) for _ in range(4)]
    for batch in cached[:WARMUP_STEPS]:
        step(batch)["loss"].numpy()
    print(MARK, flush=True)
    start = time.perf_counter()
    for index in range(steps):
        step(cached[index % len(cached)])["loss"].numpy()
    print(f"wall ms per step: {1e3 * (time.perf_counter() - start) / steps:.1f}", flush=True)


def kernel_family(kind: str, descriptors: str) -> str:
    """What a primitive spends its time on, from its memory descriptors' data types (the
    implementation's name gives the ISA, e.g. `avx512_core_bf16`, whatever the data):
    "bf16" or "f32" compute, a "type conversion" reorder or a "layout" reorder."""
    types = [field.split(":")[1] for field in descriptors.split()]
    if kind == "reorder":
        return "type conversion" if len(set(types)) > 1 else "layout"
    return "bf16" if types and types[0] == "bf16" else "f32"


def census(precision: str, steps: int, data: Path) -> tuple[float, dict, dict]:
    """(wall ms per step, ms per step by primitive kind, ms per step by kernel family)."""
    environment = {**os.environ, "ONEDNN_VERBOSE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [sys.executable, __file__, "--child", precision, "--steps", str(steps)]
    done = subprocess.run(
        [*command, "--data", str(data)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # oneDNN's lines and the marker, in order
        text=True,
        env=environment,
        check=True,
    )
    lines = done.stdout.split(MARK, 1)[1].splitlines()  # the timed steps only
    kinds: dict[str, float] = collections.defaultdict(float)
    families: dict[str, float] = collections.defaultdict(float)
    wall = 0.0
    for line in lines:
        if line.startswith("wall ms per step:"):
            wall = float(line.split(":")[1])
        fields = line.split(",")
        if not line.startswith("onednn_verbose") or len(fields) < 8 or fields[3] != "exec":
            continue
        kind, descriptors, ms = fields[5], fields[8], float(fields[-1])
        kinds[kind] += ms / steps
        families[kernel_family(kind, descriptors)] += ms / steps
    return wall, dict(kinds), dict(families)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--precisions", nargs="+", default=["float32", "mixed_bfloat16"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_steps(args.child, args.steps, args.data)
        return

    from handray.data.synthetic import generate_dataset

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "hands"
        generate_dataset(data, train=16, val=1, size=128, seed=0, workers=1, progress=False)
        results = {p: census(p, args.steps, data) for p in args.precisions}
    kinds = sorted({k for _, by_kind, _ in results.values() for k in by_kind})
    families = ("bf16", "f32", "type conversion", "layout")
    header = ["precision", "step ms (wall)", "oneDNN ms", *kinds]
    header += [f"{family} ms" for family in families]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for precision, (wall, by_kind, by_family) in results.items():
        cells = [f"{by_kind.get(k, 0.0):.1f}" for k in kinds]
        cells += [f"{by_family.get(f, 0.0):.1f}" for f in families]
        total = f"{sum(by_kind.values()):.1f}"
        print(f"| {precision} | {wall:.1f} | {total} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
