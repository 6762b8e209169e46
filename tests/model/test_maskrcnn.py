"""The assembled model on the `tiny` preset with random weights (its detections on images:
tests/inference/test_predictor.py)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from handray.config import LOSS_NAMES, load_config
from handray.data.coco import load_dataset
from handray.data.pipeline import build_dataset
from handray.model import build_model
from handray.model.diagnostics import DIAGNOSTIC_NAMES
from handray.model.maskrcnn import MaskRCNN
from handray.train.step import make_train_step


@pytest.fixture(scope="module")
def model() -> MaskRCNN:
    return build_model(load_config("tiny"), jit_compile=False)


@pytest.mark.slow  # an XLA compile
def test_predict_step_compiles_with_xla():
    config = load_config("tiny")
    compiled = build_model(config, jit_compile=True)
    size = config.data.image_size
    images = tf.zeros((2, size, size, 3), tf.uint8)
    windows = tf.constant([[0, 0, size, size], [0, 0, 96, size]], tf.int32)
    out = compiled.predict_padded(images, windows, tf.constant(0.5))
    limit = config.model.detection_max_instances
    assert out["boxes"].shape == (2, limit, 4)
    assert out["masks"].shape == (2, limit, *config.model.mask_shape)
    # That the compiled step computes what the eager one does is checked on a trained model
    # (tests/model/test_training.py): random weights give near-ties that reorder detections.


def test_model_gives_its_five_losses_and_the_diagnostics_and_no_recipe_terms(model, small_dataset):
    """Weighting, weight decay and the total are the training step's (tests/train/test_step.py)."""
    config = load_config("tiny")
    batch = next(iter(build_dataset(load_dataset(small_dataset), config, training=True)))
    values = model.train_step_losses(batch, mini_masks=config.data.use_mini_mask)
    assert set(values) == {*LOSS_NAMES, *DIAGNOSTIC_NAMES}


def test_trainable_selection_by_stage_and_regex():
    model = build_model(load_config("tiny"), jit_compile=False)
    heads = set(model.set_trainable("heads"))
    assert heads and all(n.startswith(("mrcnn_", "rpn_", "fpn_")) for n in heads)
    assert not model.get_layer("res5a_branch2a").trainable
    stage4 = set(model.set_trainable("4+"))
    assert {"res4a_branch2a", "bn4a_branch2a", "res5a_branch1"} <= stage4
    assert "res3a_branch2a" not in stage4 and heads < stage4
    assert set(model.set_trainable("rpn_.*")) == {
        "rpn_conv_shared",
        "rpn_class_raw",
        "rpn_bbox_pred",
    }
    weighted = {layer.name for layer in model.leaf_layers() if layer.weights}
    assert set(model.set_trainable("all")) == weighted
    assert len(model.trainable_variables) == sum(
        len(model.get_layer(n).weights) - (2 if n.startswith("bn") or "_bn" in n else 0)
        for n in weighted
    )


def test_layers_are_found_by_name_inside_nested_models(model):
    assert model.get_layer("rpn_conv_shared").name == "rpn_conv_shared"
    assert model.get_layer("rpn_model") is model.rpn
    assert model.get_layer("conv1").kernel.shape == (7, 7, 3, 32)


@pytest.mark.slow  # an XLA compile of minutes
def test_train_step_compiles_with_xla(small_dataset):
    config = load_config("tiny", {"data.image_size": 64, "data.augment": False})
    model = build_model(config, jit_compile=True)
    batch = next(iter(build_dataset(load_dataset(small_dataset), config, training=True)))
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    step = make_train_step(model, optimizer, config, jit_compile=True)
    before = [v.numpy() for v in model.trainable_variables]
    losses = step(batch)
    assert np.isfinite(float(losses["loss"]))
    # The heads that learn from keypoints (the keypoint head, the side head's direction) have
    # nothing to learn from this dataset, which has none; every other weight moves.
    without_targets = ("mrcnn_keypoint_", "mrcnn_side_direction_")
    changed = [
        not np.array_equal(b, v.numpy())
        for b, v in zip(before, model.trainable_variables, strict=True)
        if not v.path.startswith(without_targets)
    ]
    assert sum(changed) > 0.9 * len(changed)
