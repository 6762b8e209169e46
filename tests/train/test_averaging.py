"""Weight averages (`handray.train.averaging`): the update against a numpy reference, the swap,
and the update's place in the compiled train step. That two workers hold the same averages is
checked with their weights (tests/train/test_trainer.py)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from handray.config import load_config
from handray.data.coco import load_dataset
from handray.data.pipeline import build_dataset
from handray.data.synthetic import generate_dataset
from handray.model import build_model
from handray.train.averaging import WeightAverages
from handray.train.step import make_train_step


def reference_decay(decay: float, n: int) -> float:
    return min(decay, (1 + n) / (10 + n))


def random_variables(rng, shapes):
    return [keras.Variable(rng.normal(size=shape).astype("float32")) for shape in shapes]


def test_update_follows_the_numpy_reference_with_the_decay_warm_up():
    rng = np.random.default_rng(0)
    trained = random_variables(rng, [(3, 4), (5,)])
    frozen = keras.Variable(rng.normal(size=(2, 2)).astype("float32"))
    steps = keras.Variable(0, dtype="int64")
    averages = WeightAverages([*trained, frozen], 0.9, steps)
    update = tf.function(averages.update, autograph=False)  # compiled, as in the train step
    expected = [v.numpy().astype(np.float64) for v in (*trained, frozen)]
    for n in (1, 2, 3, 100, 101):  # the warm-up of the decay, then the decay itself (0.9)
        for variable in trained:
            variable.assign(rng.normal(size=variable.shape).astype("float32"))
        steps.assign(n)
        update()
        d = reference_decay(0.9, n)
        expected = [
            d * e + (1 - d) * v.numpy() for e, v in zip(expected, (*trained, frozen), strict=True)
        ]
        for shadow, value in zip(averages.shadows, expected, strict=True):
            np.testing.assert_allclose(shadow.numpy(), value, rtol=1e-5, atol=1e-6)
    assert reference_decay(0.9, 1) == pytest.approx(2 / 11)  # the first steps barely keep the start
    # A variable that does not change keeps a shadow exactly equal to it.
    np.testing.assert_array_equal(averages.shadows[-1].numpy(), frozen.numpy())


def test_applied_swaps_the_averages_in_and_restores_the_raw_weights_exactly():
    rng = np.random.default_rng(1)
    variables = random_variables(rng, [(4, 3), (7,)])
    steps = keras.Variable(5, dtype="int64")
    averages = WeightAverages(variables, 0.99, steps)
    for variable in variables:
        variable.assign(rng.normal(size=variable.shape).astype("float32"))
    averages.update()
    raw = [v.numpy() for v in variables]
    shadows = [s.numpy() for s in averages.shadows]
    assert not any(np.array_equal(r, s) for r, s in zip(raw, shadows, strict=True))
    with averages.applied():
        for variable, shadow in zip(variables, shadows, strict=True):
            np.testing.assert_array_equal(variable.numpy(), shadow)
    for variable, value in zip(variables, raw, strict=True):
        np.testing.assert_array_equal(variable.numpy(), value)
    with pytest.raises(RuntimeError, match="inside"), averages.applied():
        raise RuntimeError("inside")
    for variable, value in zip(variables, raw, strict=True):
        np.testing.assert_array_equal(variable.numpy(), value)
    for shadow, value in zip(averages.shadows, shadows, strict=True):  # shadows untouched
        np.testing.assert_array_equal(shadow.numpy(), value)


@pytest.mark.slow  # compiles a train step
def test_the_train_step_averages_the_weights_after_each_update(tmp_path):
    """The shadows follow the reference computed from the weights after each optimizer
    update: an update run before `apply_gradients` would average the previous weights."""
    generate_dataset(tmp_path, train=4, val=1, size=64, seed=2, workers=1, progress=False)
    config = load_config(
        "tiny",
        {"data.image_size": 64, "data.augment": False, "train.optimizer": "sgd"},
    )
    batches = iter(build_dataset(load_dataset(tmp_path), config, training=True, repeat=True))
    keras.utils.set_random_seed(0)
    model = build_model(config, jit_compile=False)
    optimizer = keras.optimizers.SGD(0.05, name="sgd")
    optimizer.build(model.trainable_variables)
    averages = WeightAverages(model.trainable_variables, 0.9, optimizer.iterations)
    step = make_train_step(model, optimizer, config, after_update=averages.update)
    expected = [v.numpy().astype(np.float64) for v in model.trainable_variables]
    start = [v.numpy() for v in model.trainable_variables]
    for n in (1, 2, 3):
        step(next(batches))
        d = reference_decay(0.9, n)
        expected = [
            d * e + (1 - d) * v.numpy()
            for e, v in zip(expected, model.trainable_variables, strict=True)
        ]
        for shadow, value in zip(averages.shadows, expected, strict=True):
            np.testing.assert_allclose(shadow.numpy(), value, rtol=1e-4, atol=1e-6)
    changed = sum(
        not np.array_equal(a, v.numpy())
        for a, v in zip(start, model.trainable_variables, strict=True)
    )
    assert changed > len(start) // 2  # the steps did move the weights
