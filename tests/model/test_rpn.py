"""The RPN head: one output row per anchor, in the anchors' order, under matterport's names."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from handray.config import PRESETS, load_config
from handray.model.anchors import generate_anchors, pyramid_feature_shapes
from handray.model.rpn import build_rpn_model, run_rpn

SIZE = 128  # small inputs; the anchor count depends on the size, the contract does not


def random_maps(shapes: list[tuple[int, int]], channels: int, seed: int = 0) -> list[tf.Tensor]:
    rng = np.random.default_rng(seed)
    return [tf.constant(rng.normal(size=(2, *s, channels)), tf.float32) for s in shapes]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_rows_are_anchors_per_place_times_places_over_every_level(preset):
    model = load_config(preset).model
    per_place = len(model.rpn_anchor_ratios) * len(model.rpn_anchor_octaves)
    rpn = build_rpn_model(per_place, model.fpn_channels, model.rpn_channels)
    shapes = pyramid_feature_shapes(SIZE, model.backbone_strides)
    logits, probs, deltas = run_rpn(rpn, random_maps(shapes, model.fpn_channels))
    places = sum(h * w for h, w in shapes)
    anchors = generate_anchors(
        SIZE,
        model.rpn_anchor_scales,
        model.rpn_anchor_ratios,
        model.backbone_strides,
        octaves=model.rpn_anchor_octaves,
    )
    assert len(anchors) == per_place * places
    assert tuple(logits.shape) == tuple(probs.shape) == (2, len(anchors), 2)
    assert tuple(deltas.shape) == (2, len(anchors), 4)
    assert logits.dtype == probs.dtype == deltas.dtype == tf.float32


def test_an_anchor_stride_of_2_keeps_one_place_in_four_as_the_anchors_do():
    shapes = pyramid_feature_shapes(28, (4, 8))  # 7 x 7 and 4 x 4
    rpn = build_rpn_model(3, 8, 4, stride=2)
    logits, _, deltas = run_rpn(rpn, random_maps(shapes, 8))
    anchors = generate_anchors(28, (8, 16), (0.5, 1, 2), (4, 8), anchor_stride=2)
    assert logits.shape[1] == deltas.shape[1] == len(anchors) == 3 * (4 * 4 + 2 * 2)


def test_outputs_are_ordered_by_row_column_then_anchor():
    """Row (r * W + c) * A + a holds anchor a at place (r, c): as `generate_anchors` orders."""
    per_place, height, width = 3, 4, 5
    rpn = build_rpn_model(per_place, 6, 8)
    raw_outputs = keras.Model(
        rpn.inputs, [rpn.get_layer("rpn_class_raw").output, rpn.get_layer("rpn_bbox_pred").output]
    )
    (feature,) = random_maps([(height, width)], 6)
    logits, _, deltas = rpn(feature)
    raw_logits, raw_deltas = (t.numpy() for t in raw_outputs(feature))
    for r in range(height):
        for c in range(width):
            for a in range(per_place):
                row = (r * width + c) * per_place + a
                np.testing.assert_array_equal(
                    logits[:, row], raw_logits[:, r, c, 2 * a : 2 * a + 2]
                )
                np.testing.assert_array_equal(
                    deltas[:, row], raw_deltas[:, r, c, 4 * a : 4 * a + 4]
                )


def test_probabilities_are_the_softmax_of_the_logits():
    rpn = build_rpn_model(2, 6, 8)
    logits, probs, _ = (t.numpy() for t in rpn(random_maps([(3, 3)], 6)[0]))
    exp = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(probs, exp / exp.sum(-1, keepdims=True), rtol=1e-5)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)


def test_levels_are_concatenated_p2_first():
    rpn = build_rpn_model(3, 6, 8)
    maps = random_maps([(4, 4), (2, 2)], 6)
    concatenated = run_rpn(rpn, maps)
    for index, level in enumerate(rpn(maps[0])):
        np.testing.assert_allclose(concatenated[index][:, :48], level, rtol=1e-6)


def test_layer_names_and_shapes_follow_the_weight_files():
    """A nested `rpn_model`, whose class and box layers widen with the anchors per place."""
    rpn = build_rpn_model(6, 64, 32)
    assert rpn.name == "rpn_model"
    assert tuple(rpn.get_layer("rpn_conv_shared").kernel.shape) == (3, 3, 64, 32)
    assert tuple(rpn.get_layer("rpn_class_raw").kernel.shape) == (1, 1, 32, 2 * 6)
    assert tuple(rpn.get_layer("rpn_bbox_pred").kernel.shape) == (1, 1, 32, 4 * 6)
