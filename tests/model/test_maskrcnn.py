"""The assembled model on the `tiny` preset with random weights."""

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


def test_detect_maps_boxes_and_masks_back_to_original_pixels(model, monkeypatch):
    """Non-square images of different sizes in one batch: a box drawn at known original pixels
    in the padded square comes back on exactly those pixels, with its mask filling it."""
    images = [np.zeros((100, 150, 3), np.uint8), np.zeros((60, 40, 3), np.uint8)]
    truth = np.array([[10.0, 20.0, 40.0, 61.0], [5.0, 3.0, 59.0, 17.0]], np.float32)
    size = model.image_size

    def fake_predict(padded, windows, min_score):
        scale = tf.cast(windows[:, 2:], tf.float32) / np.array([[100, 150], [60, 40]], np.float32)
        boxes = truth * tf.tile(scale, [1, 2]) / size  # original -> padded, normalised
        return {
            "boxes": boxes[:, None, :],
            "class_ids": tf.constant([[1], [2]]),
            "scores": tf.constant([[0.9], [0.8]]),
            "valid": tf.constant([[True], [True]]),
            "masks": tf.ones([2, 1, 28, 28]),
        }

    monkeypatch.setattr(model, "predict_padded", fake_predict)
    results = model.detect(images)
    for result, image, box in zip(results, images, truth, strict=True):
        np.testing.assert_allclose(result["rois"][0], box, atol=1e-3)
        y1, x1, y2, x2 = box.astype(int)
        expected = np.zeros(image.shape[:2], bool)
        expected[y1:y2, x1:x2] = True
        assert result["masks"].shape == (1, *image.shape[:2])
        np.testing.assert_array_equal(result["masks"][0], expected)
    assert [r["class_ids"].tolist() for r in results] == [[1], [2]]


def test_detect_output_types_on_real_inference(model):
    results = model.detect([np.full((70, 90, 3), 128, np.uint8)])
    (result,) = results
    count = len(result["scores"])
    assert result["rois"].shape == (count, 4)
    assert result["masks"].shape == (count, 70, 90) and result["masks"].dtype == bool
    assert count <= load_config("tiny").model.detection_max_instances
    assert model.detect([]) == []
    with pytest.raises(ValueError, match=r"image 1 has shape \(5, 5\); detect takes RGB"):
        model.detect([np.zeros((5, 5, 3), np.uint8), np.zeros((5, 5), np.uint8)])


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


def test_a_lower_min_score_only_adds_detections_below_the_higher_one(model):
    """Thresholds are call arguments of one model: the detections at 0.5 are exactly the
    prefix of those at 0 that score 0.5 or more."""
    image = np.random.default_rng(3).integers(0, 255, (90, 110, 3), np.uint8)
    (everything,) = model.detect([image], min_score=0.0)
    threshold = float(np.median(everything["scores"]))
    (some,) = model.detect([image], min_score=threshold)
    kept = everything["scores"] >= threshold
    assert 0 < kept.sum() < len(kept)
    for key in ("rois", "class_ids", "scores", "masks"):
        np.testing.assert_array_equal(some[key], everything[key][kept], key)


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
    changed = [
        not np.array_equal(b, v.numpy())
        for b, v in zip(before, model.trainable_variables, strict=True)
    ]
    assert sum(changed) > 0.9 * len(changed)
