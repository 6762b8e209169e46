"""The training recipe's losses (`handray.train.step`): the model's five losses weighted by
`train.loss_weights`, plus L2 weight decay unless the optimizer decays the weights itself."""

import numpy as np
import pytest

from handray.config import LOSS_NAMES, load_config
from handray.data.coco import load_dataset
from handray.data.pipeline import build_dataset
from handray.data.synthetic import generate_dataset
from handray.model import build_model
from handray.model.diagnostics import DIAGNOSTIC_NAMES
from handray.train.step import recipe_losses


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """A batch of synthetic hands, with keypoints."""
    root = tmp_path_factory.mktemp("hands")
    generate_dataset(root, train=4, val=1, size=128, seed=1, workers=1, progress=False)
    return next(iter(build_dataset(load_dataset(root), load_config("tiny"), training=True)))


def test_losses_are_finite_and_sum_to_the_total(batch):
    config = load_config("tiny")
    model = build_model(config, jit_compile=False)
    values = {k: float(v) for k, v in recipe_losses(model, batch, config).items()}
    assert all(np.isfinite(v) for v in values.values())
    assert all(values[n] > 0 for n in LOSS_NAMES)
    total = sum(values[n] for n in LOSS_NAMES) + values.get("weight_decay_loss", 0.0)
    assert values["loss"] == pytest.approx(total, rel=1e-5)
    # The tiny preset trains with AdamW, whose decay is not a loss term.
    assert ("weight_decay_loss" in values) == (config.train.optimizer != "adamw")
    for name in DIAGNOSTIC_NAMES:
        assert np.isfinite(values[name]) and values[name] >= 0, name


def test_loss_weights_and_weight_decay_enter_the_total(batch):
    weights = {"rpn_class_loss": 2.0, "mrcnn_mask_loss": 0.0}
    config = load_config(
        "tiny",
        {"train.optimizer": "sgd", "train.weight_decay": 0.01, "train.loss_weights": weights},
    )
    model = build_model(config, jit_compile=False)
    values = {k: float(v) for k, v in recipe_losses(model, batch, config).items()}
    assert values["weight_decay_loss"] > 0
    expected = sum(config.train.loss_weights[n] * values[n] for n in LOSS_NAMES)
    assert values["loss"] == pytest.approx(expected + values["weight_decay_loss"], rel=1e-5)
    assert config.train.loss_weights["rpn_bbox_loss"] == 1.0  # unnamed losses count once


def test_a_dataset_without_keypoints_trains_with_a_zero_keypoint_loss(small_dataset):
    config = load_config("tiny")
    batch = next(iter(build_dataset(load_dataset(small_dataset), config, training=True)))
    model = build_model(config, jit_compile=False)
    values = {k: float(v) for k, v in recipe_losses(model, batch, config).items()}
    assert values["mrcnn_keypoint_loss"] == 0.0
    assert all(values[n] > 0 for n in LOSS_NAMES if n != "mrcnn_keypoint_loss")
    assert np.isfinite(values["loss"])
