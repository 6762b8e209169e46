"""Precision: which CPUs count as bfloat16 ones, and a model built in bfloat16 (bfloat16 compute
over float32 weights, float32 where digits matter, the global policy left alone)."""

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from handray.config import load_config
from handray.data.coco import load_dataset
from handray.data.pipeline import build_dataset
from handray.inference.checkpoints import load_trained_model
from handray.model import build_model
from handray.model.precision import computing_in, cpu_has_bfloat16, resolve_precision

ZEN4_FLAGS = "fpu vme avx2 avx512f avx512_bf16 avx512_vnni"
AMX_FLAGS = "fpu avx2 avx512f amx_bf16 amx_tile"
OLDER_FLAGS = "fpu vme avx2 avx512f avx512_vnni"  # AVX-512 without bfloat16


@pytest.mark.parametrize(
    ("flags", "expected"), [(ZEN4_FLAGS, True), (AMX_FLAGS, True), (OLDER_FLAGS, False)]
)
def test_bfloat16_cpus_are_told_by_their_flags(tmp_path, flags, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: x\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert cpu_has_bfloat16(cpuinfo) is expected


def test_a_machine_without_cpuinfo_has_no_bfloat16(tmp_path):
    assert cpu_has_bfloat16(tmp_path / "missing") is False


def test_auto_is_bfloat16_exactly_on_a_bfloat16_cpu_and_names_pass_through():
    flags = next(
        line.split(":", 1)[1].split()
        for line in Path("/proc/cpuinfo").read_text().splitlines()
        if line.startswith("flags")
    )
    bfloat16 = "avx512_bf16" in flags or "amx_bf16" in flags
    assert resolve_precision("auto") == ("mixed_bfloat16" if bfloat16 else "float32")
    for name in ("float32", "mixed_bfloat16", "mixed_float16"):
        assert resolve_precision(name) == name


def test_a_bfloat16_model_keeps_float32_weights_and_outputs_and_the_global_policy(
    small_dataset,
):
    config = load_config("tiny")
    keras.utils.set_random_seed(0)
    plain = build_model(config, jit_compile=False)
    with computing_in("mixed_bfloat16") as policy:
        assert policy == "mixed_bfloat16"
        model = build_model(config, jit_compile=False)
    assert keras.config.dtype_policy().name == "float32"  # restored after the block
    assert model.get_layer("conv1").compute_dtype == "bfloat16"
    assert {w.dtype for w in model.weights} == {"float32"}
    model.set_weights(plain.get_weights())  # the same variables: any checkpoint loads

    batch = next(iter(build_dataset(load_dataset(small_dataset), config, training=True)))
    ours = model.train_step_losses(batch, mini_masks=config.data.use_mini_mask, training=False)
    theirs = plain.train_step_losses(batch, mini_masks=config.data.use_mini_mask, training=False)
    assert ours.keys() == theirs.keys()
    for name, value in ours.items():
        assert value.dtype == tf.float32, name  # losses and diagnostics in float32
    # bfloat16 keeps 8 bits of mantissa: the same network's feature maps agree to about 1 %.
    # (Losses of random weights do not: their huge logits magnify any difference.)
    for level, (a, b) in enumerate(
        zip(*(m._pyramid(batch["image"], training=False) for m in (model, plain)), strict=True)
    ):
        assert a.dtype == tf.float32
        assert np.linalg.norm(a - b) <= 0.03 * np.linalg.norm(b), f"P{level + 2}"

    size = config.data.image_size
    images = tf.zeros((1, size, size, 3), tf.uint8)
    windows = tf.constant([[0, 0, size, size]], tf.int32)
    out = model.predict_padded(images, windows, tf.constant(0.0))
    for key in ("boxes", "scores", "masks"):
        assert out[key].dtype == tf.float32, key


def test_the_policy_is_restored_when_building_fails():
    with pytest.raises(RuntimeError), computing_in("mixed_bfloat16"):
        raise RuntimeError("a failed build")
    assert keras.config.dtype_policy().name == "float32"


def test_a_checkpoint_loads_for_inference_in_serve_precision(tiny_checkpoint):
    """What `handray evaluate/predict/export` build from a checkpoint: `serve.precision`'s
    model with the checkpoint's (float32) weights."""
    overrides = {"serve.precision": "mixed_bfloat16"}
    model, config, _ = load_trained_model(tiny_checkpoint, overrides=overrides, jit_compile=False)
    assert config.serve.precision == "mixed_bfloat16"
    assert model.get_layer("conv1").compute_dtype == "bfloat16"
    plain, _, _ = load_trained_model(tiny_checkpoint, jit_compile=False)
    assert plain.get_layer("conv1").compute_dtype == "float32"  # the default
    for a, b in zip(model.get_weights(), plain.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
