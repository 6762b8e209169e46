"""What XLA's persistent compilation cache saves a new process: a Serve model replica's warm-up.

Each row is a fresh process that loads an export (`handray.core.exported.ExportedModel`, as a
`HandModel` replica does) and runs batch sizes 1..N once each, as the replica's warm-up does:
with the cache off, with an empty cache (the first replica on a machine) and with the cache
the previous row filled (every later replica). Nothing else should run meanwhile.

    .venv/bin/python benchmarks/xla_cache.py [--model-dir models/reference] [--sizes 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# One replica's start, in a fresh process: the cache is named before TensorFlow runs.
REPLICA = """
import io, json, sys, time
from handray.core.xla_cache import use_xla_cache
use_xla_cache()
import numpy as np
from PIL import Image
started = time.perf_counter()
from handray.core.exported import ExportedModel
model = ExportedModel(sys.argv[1])
loaded = time.perf_counter()
buffer = io.BytesIO()
Image.fromarray(np.zeros((96, 128, 3), np.uint8)).save(buffer, format="BMP")
firsts = []
for size in range(1, int(sys.argv[2]) + 1):
    start = time.perf_counter()
    model.run([buffer.getvalue()] * size, 0.5, 0.5)
    firsts.append(time.perf_counter() - start)
start = time.perf_counter()
model.run([buffer.getvalue()] * int(sys.argv[2]), 0.5, 0.5)
again = time.perf_counter() - start
print(json.dumps({"load": loaded - started, "firsts": firsts, "again": again}))
"""


def replica_start(model_dir: str, sizes: int, cache: str) -> dict:
    environment = {**os.environ, "HANDRAY_XLA_CACHE": cache, "TF_CPP_MIN_LOG_LEVEL": "2"}
    environment.pop("TF_XLA_FLAGS", None)
    done = subprocess.run(
        [sys.executable, "-c", REPLICA, model_dir, str(sizes)],
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"the replica process failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="models/reference", help="an export folder")
    parser.add_argument("--sizes", type=int, default=4, help="batch sizes 1..N, as max_batch_size")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        cache = str(Path(folder) / "xla")
        rows = [
            ("off", replica_start(args.model_dir, args.sizes, "off")),
            ("empty (first replica)", replica_start(args.model_dir, args.sizes, cache)),
            ("filled (later replicas)", replica_start(args.model_dir, args.sizes, cache)),
        ]
        stored = sum(p.stat().st_size for p in Path(cache).rglob("*") if p.is_file())
    sizes = " | ".join(f"size {n} s" for n in range(1, args.sizes + 1))
    print(f"{args.model_dir}: a fresh process loads it, then runs batch sizes 1-{args.sizes}")
    print(f"| cache | load s | {sizes} | first runs s | warm size {args.sizes} s |")
    print("|---" * (args.sizes + 4) + "|")
    for name, row in rows:
        firsts = " | ".join(f"{t:.2f}" for t in row["firsts"])
        print(
            f"| {name} | {row['load']:.1f} | {firsts} | {sum(row['firsts']):.1f} | "
            f"{row['again']:.3f} |"
        )
    print(f"cache size after: {stored / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
