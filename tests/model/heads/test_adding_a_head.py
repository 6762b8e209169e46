"""A head is one module: a small head written here, registered with one line, trains inside
the model and comes out of `Predictor`, the JSON records and the export under its own name,
without a change to the model, post-processing, unpadding, records or the export.

The head regresses each hand's box area as a share of the padded square (a made-up output
with a real target, loss and mapping to original pixels: square pixels times the image's
scale), so every step of the head contract is exercised.
"""

from __future__ import annotations

from typing import ClassVar

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from handray.config import load_config
from handray.core.geometry import resize_and_pad
from handray.core.records import detection_records
from handray.data.coco import load_dataset
from handray.data.pipeline import build_dataset
from handray.inference.predictor import Predictor
from handray.inference.thresholds import Thresholds
from handray.model import build_model, heads
from handray.model.heads import GroundTruth, PixelFrame, RoiHead, RoiSample
from handray.model.losses import masked_mean


class AreaHead(RoiHead):
    output = "box_area"
    loss_name = "box_area_loss"
    layer_prefix = "test_area_"
    optional: ClassVar[dict] = {}

    @property
    def pool_size(self) -> int:
        return 7

    def _build(self, settings, norm) -> keras.Model:
        pooled = keras.Input((7, 7, settings.fpn_channels))
        x = layers.GlobalAveragePooling2D(name="test_area_pool")(pooled)
        area = layers.Dense(1, activation="sigmoid", name="test_area_fc")(x)
        return keras.Model(pooled, area, name="test_area_head")

    def loss(self, ground_truth: GroundTruth, sample: RoiSample, outputs) -> tf.Tensor:
        boxes = sample.matched(ground_truth.boxes)
        target = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
        return masked_mean(tf.square(outputs[..., 0] - target), sample.positive)

    def decode(self, outputs, detections) -> tf.Tensor:
        return outputs[..., 0]

    def to_original(self, values, frame: PixelFrame) -> tf.Tensor:
        square = values * float(frame.image_size) ** 2
        scale = frame.scales[:, :1] * frame.scales[:, 1:]  # square pixels per original pixel
        return frame.zero_dropped(square / scale)


@pytest.fixture
def with_area_head(monkeypatch):
    """The registration line a real head adds to `handray/model/heads/__init__.py`."""
    monkeypatch.setattr(heads, "ROI_HEADS", (*heads.ROI_HEADS, AreaHead))


def test_a_registered_head_trains_with_the_model(with_area_head, small_dataset):
    config = load_config("tiny")
    model = build_model(config, jit_compile=False)
    assert [h.output for h in model.roi_heads] == ["side_score", "masks", "keypoints", "box_area"]
    assert model.get_layer("test_area_fc") is not None  # found by name, as weights load
    batch = next(iter(build_dataset(load_dataset(small_dataset), config, training=True)))
    with tf.GradientTape() as tape:
        values = model.train_step_losses(batch, mini_masks=True)
    head_weights = model.get_layer("test_area_fc").trainable_weights
    gradients = tape.gradient(values["box_area_loss"], head_weights)
    assert float(values["box_area_loss"]) > 0
    assert all(g is not None and float(tf.reduce_sum(tf.abs(g))) > 0 for g in gradients)


def test_a_registered_heads_output_reaches_detections_and_records(with_area_head):
    config = load_config("tiny")
    keras.utils.set_random_seed(0)
    model = build_model(config, jit_compile=False)
    predictor = Predictor(model, Thresholds(min_score=0.0, evaluation_min_score=0.0, mask=0.5))
    image = np.random.default_rng(0).integers(0, 255, (64, 96, 3), np.uint8)
    (found,) = predictor.detect([image])
    assert len(found) > 0
    areas = found.extras["box_area"]
    # The head's share of the padded square, in the original image's square pixels.
    padded, window, scale = resize_and_pad(tf.constant(image), model.image_size, model.min_dim)
    raw = model.predict_padded(padded[None], window[None], tf.constant(0.0))
    pixels = raw["box_area"][0, : len(found)].numpy() * model.image_size**2
    expected = pixels / float(scale[0] * scale[1])
    np.testing.assert_allclose(areas, expected, rtol=1e-4)
    records = detection_records(found, mask_format="none")
    assert [r["box_area"] for r in records] == pytest.approx(areas.tolist(), abs=1e-4)


@pytest.mark.slow
def test_a_registered_heads_output_reaches_the_export(with_area_head, tmp_path):
    from handray.core.detections import Detections, image_rows
    from handray.core.exported import ExportedModel, bmp_bytes
    from handray.inference.export import export_model

    config = load_config("tiny")
    keras.utils.set_random_seed(0)
    model = build_model(config, jit_compile=False)
    image = np.random.default_rng(0).integers(0, 255, (64, 96, 3), np.uint8)
    predictor = Predictor(model, Thresholds(min_score=0.0, evaluation_min_score=0.0, mask=0.5))
    (expected,) = predictor.detect([image])
    exported = ExportedModel(export_model(model, config, tmp_path / "export"))
    batch = exported.run([bmp_bytes(image)], min_score=0.0, mask_threshold=0.5)
    found = Detections.from_rows(image_rows(batch, 0), exported.class_names)
    # The best detections agree (further down, an untrained model's near-equal scores may
    # rank differently in the export's graph).
    top = 5
    np.testing.assert_allclose(found.boxes[:top], expected.boxes[:top], atol=0.05)
    np.testing.assert_allclose(
        found.extras["box_area"][:top], expected.extras["box_area"][:top], rtol=1e-3
    )
