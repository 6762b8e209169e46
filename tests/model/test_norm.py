"""Normalisation layers: frozen or training batch norm, and group norm, against numpy."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from handray.model.norm import Norm

EPSILON_BATCH = 1e-3  # Keras' BatchNormalization default
EPSILON_GROUP = 1e-3  # what Norm gives GroupNormalization


def normalised(norm: Norm, channels: int) -> keras.Model:
    """A model that only applies `norm` to [B, 4, 5, channels] inputs."""
    inputs = keras.Input((4, 5, channels))
    return keras.Model(inputs, norm(inputs, "norm_under_test"))


def sample(channels: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(3.0, 2.0, (2, 4, 5, channels)).astype(np.float32)


def test_frozen_batch_norm_uses_moving_statistics_even_when_training():
    model = normalised(Norm(), 6)
    layer = model.get_layer("norm_under_test")
    x = sample(6)
    out = model(x, training=True).numpy()
    # Fresh statistics (mean 0, variance 1), gamma 1, beta 0: only the epsilon rescales.
    np.testing.assert_allclose(out, x / np.sqrt(1.0 + EPSILON_BATCH), rtol=1e-5)
    np.testing.assert_array_equal(layer.moving_mean.numpy(), np.zeros(6))
    np.testing.assert_array_equal(layer.moving_variance.numpy(), np.ones(6))


def test_trainable_batch_norm_uses_batch_statistics_and_moves_at_its_momentum():
    model = normalised(Norm(trainable=True, momentum=0.9), 6)
    layer = model.get_layer("norm_under_test")
    x = sample(6)
    out = model(x, training=True).numpy()
    mean, variance = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    np.testing.assert_allclose(out, (x - mean) / np.sqrt(variance + EPSILON_BATCH), atol=1e-4)
    np.testing.assert_allclose(layer.moving_mean.numpy(), 0.1 * mean, rtol=1e-5)
    inference = model(x, training=False).numpy()  # now the moved statistics
    expected = (x - 0.1 * mean) / np.sqrt(layer.moving_variance.numpy() + EPSILON_BATCH)
    np.testing.assert_allclose(inference, expected, atol=1e-4)


@pytest.mark.parametrize(("channels", "groups"), [(24, 8), (64, 16), (6, 2)])
def test_group_norm_divides_groups_into_the_channels_and_matches_numpy(channels, groups):
    """16 groups asked for; the layer gets the largest count that divides the channels."""
    model = normalised(Norm(kind="group", groups=16), channels)
    assert model.get_layer("norm_under_test").groups == groups
    x = sample(channels)
    out = model(x, training=True).numpy()
    grouped = x.reshape(2, 4, 5, groups, channels // groups)
    mean = grouped.mean(axis=(1, 2, 4), keepdims=True)
    variance = grouped.var(axis=(1, 2, 4), keepdims=True)
    expected = ((grouped - mean) / np.sqrt(variance + EPSILON_GROUP)).reshape(x.shape)
    np.testing.assert_allclose(out, expected, atol=1e-4)


def test_group_norm_normalises_each_example_on_its_own():
    model = normalised(Norm(kind="group"), 32)
    x = sample(32)
    changed = x.copy()
    changed[1] = changed[1] * 10.0 + 5.0
    np.testing.assert_allclose(model(x).numpy()[0], model(changed).numpy()[0], atol=1e-6)


def test_a_model_with_frozen_batch_norm_keeps_its_statistics_in_a_training_pass():
    """The whole backbone, not only one layer: `train.train_bn: false` (the ResNet presets'
    default) leaves every moving statistic where the weights put it."""
    from handray.config import load_config
    from handray.model import build_model

    model = build_model(load_config("tiny", {"train.train_bn": False}), jit_compile=False)
    statistics = [v for v in model.variables if "moving" in v.path]
    before = [v.numpy() for v in statistics]
    model._pyramid(np.random.default_rng(0).uniform(0, 255, (2, 128, 128, 3)), training=True)
    assert statistics
    for variable, value in zip(statistics, before, strict=True):
        np.testing.assert_array_equal(variable.numpy(), value, variable.path)
