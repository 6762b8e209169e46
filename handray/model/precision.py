"""The number format a model computes in: float32, or bfloat16/float16 over float32 weights.

Keras gives each layer the global dtype policy when the layer is made, so a model built inside
`computing_in(precision)` computes in that precision for good, and nothing built afterwards is
touched. Weights stay float32 under both mixed policies, so checkpoints and exports hold the same
variables whatever a model was trained or served in. The model keeps what must not lose digits in
float32 itself: box deltas and their arithmetic, class and side logits, and the losses.

bfloat16 has float32's range, so it needs no loss scaling; oneDNN runs bfloat16 convolutions on
CPUs with AVX-512 BF16 or AMX (benchmarks/README.md, "Precision"). float16 is for GPUs and
trains with a loss-scaling optimizer. "auto" picks bfloat16 on a CPU with bfloat16 instructions
and float32 elsewhere (GPUs included: float16 there stays a choice a user makes).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path

import keras

# /proc/cpuinfo flags of x86 instructions that compute in bfloat16.
BFLOAT16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.cache
def cpu_has_bfloat16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this machine's CPU multiplies bfloat16 in hardware (Linux' flags; False where
    the file is missing, as on macOS, so "auto" keeps float32 there)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return not BFLOAT16_FLAGS.isdisjoint(line.split(":", 1)[1].split())
    return False


def resolve_precision(precision: str) -> str:
    """The dtype policy name `precision` means on this machine ("auto" decided here)."""
    if precision != "auto":
        return precision
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return "float32"
    return "mixed_bfloat16" if cpu_has_bfloat16() else "float32"


@contextlib.contextmanager
def computing_in(precision: str) -> Iterator[str]:
    """Within the block, new layers compute in `precision` (resolved; the name is yielded);
    the global policy is restored afterwards."""
    policy = resolve_precision(precision)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield policy
    finally:
        keras.config.set_dtype_policy(previous)
