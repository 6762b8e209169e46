"""The fused Adam and AdamW against Keras' own: the same weights and slots after several steps
under a schedule, the same variable names, and far fewer graph ops per variable."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from handray.train.loop import WarmupStepDecay
from handray.train.optimizers import FusedAdam

NAMES = ["conv/kernel", "conv/bias", "bn/gamma", "bn/beta", "dense/kernel"]


def make_variables(seed: int = 0) -> list[keras.Variable]:
    rng = np.random.default_rng(seed)
    shapes = [(3, 3, 4, 8), (8,), (8,), (8,), (8, 5)]
    return [
        keras.Variable(rng.normal(size=shape).astype(np.float32), name=name.split("/")[1])
        for name, shape in zip(NAMES, shapes, strict=True)
    ]


def gradients(step: int, variables) -> list[tf.Tensor]:
    rng = np.random.default_rng(100 + step)
    return [tf.constant(rng.normal(size=v.shape).astype(np.float32)) for v in variables]


def compiled_apply(optimizer, variables):
    """The optimizer built for `variables` and its update as a traced function of gradients."""
    optimizer.build(variables)
    return tf.function(
        lambda grads: optimizer.apply_gradients(zip(grads, variables, strict=True)), autograph=False
    )


def schedule() -> WarmupStepDecay:
    """A warm-up over 3 steps and a decay at step 4: six steps cross both."""
    return WarmupStepDecay(0.01, warmup_steps=3, boundaries=[4], factor=0.1)


def keras_and_fused(decay: float):
    rate = schedule()
    if decay:
        theirs = keras.optimizers.AdamW(rate, weight_decay=decay, name="adamw")
        theirs.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
        ours = FusedAdam(
            rate, weight_decay=decay, exclude_from_decay=["gamma", "beta", "bias"], name="adamw"
        )
    else:
        theirs, ours = keras.optimizers.Adam(rate), FusedAdam(rate)
    return theirs, ours


@pytest.mark.parametrize("decay", [0.0, 0.05])
def test_fused_updates_equal_keras_adam_and_adamw(decay):
    theirs, ours = keras_and_fused(decay)
    runs = []
    for optimizer in (theirs, ours):
        variables = make_variables()
        apply = compiled_apply(optimizer, variables)
        for step in range(6):  # across the warm-up and the decay boundary
            apply(gradients(step, variables))
        runs.append((variables, optimizer))
    (their_vars, theirs), (our_vars, ours) = runs
    for mine, expected in zip(our_vars, their_vars, strict=True):
        np.testing.assert_allclose(mine.numpy(), expected.numpy(), rtol=2e-5, atol=1e-7)
    assert [v.path for v in ours.variables] == [v.path for v in theirs.variables]
    for mine, expected in zip(ours.variables, theirs.variables, strict=True):
        np.testing.assert_allclose(mine.numpy(), expected.numpy(), rtol=2e-5, atol=1e-9)
    if decay:  # the decay reached the kernels and spared the excluded variables
        undecayed = make_variables()
        plain = FusedAdam(schedule())
        for step in range(6):
            plain.apply_gradients(zip(gradients(step, undecayed), undecayed, strict=True))
        moved = [
            not np.allclose(a.numpy(), b.numpy()) for a, b in zip(our_vars, undecayed, strict=True)
        ]
        assert moved == [True, False, False, False, True]


def test_each_variable_is_updated_by_one_kernel_with_a_few_ops_around_it():
    counts = {}
    for optimizer in keras_and_fused(0.05):
        variables = make_variables()
        apply = compiled_apply(optimizer, variables)
        graph = apply.get_concrete_function(gradients(0, variables)).graph
        counts[optimizer] = [op.type for op in graph.get_operations()]
    theirs, ours = counts.values()
    assert ours.count("ResourceApplyAdam") == len(NAMES)
    assert len(ours) < len(theirs) / 2, (len(ours), len(theirs))
