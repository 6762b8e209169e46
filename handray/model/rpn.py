"""The region proposal network head, shared by every pyramid level.

It is a nested model named `rpn_model`, as in the old implementation, whose weight files keep
`rpn_conv_shared`, `rpn_class_raw` and `rpn_bbox_pred` inside an `rpn_model` group.
"""

from __future__ import annotations

import keras
from keras import layers, ops


def build_rpn_model(anchors_per_location: int, channels_in: int, width: int, stride: int = 1):
    """Feature map [B, H, W, C] -> (class logits [B, H*W*A, 2], probabilities, deltas [.., 4]).

    Anchors are ordered by position (row, column) then by anchor at that position, matching
    `anchors.generate_anchors`.
    """
    features = keras.Input((None, None, channels_in), name="input_rpn_feature_map")
    shared = layers.Conv2D(
        width, 3, padding="same", activation="relu", strides=stride, name="rpn_conv_shared"
    )(features)
    raw = layers.Conv2D(2 * anchors_per_location, 1, name="rpn_class_raw")(shared)
    logits = layers.Reshape((-1, 2), name="rpn_class_logits")(raw)
    probs = layers.Softmax(name="rpn_class_probs")(logits)
    deltas = layers.Conv2D(4 * anchors_per_location, 1, name="rpn_bbox_pred")(shared)
    deltas = layers.Reshape((-1, 4), name="rpn_bbox")(deltas)
    return keras.Model(features, [logits, probs, deltas], name="rpn_model")


def run_rpn(rpn: keras.Model, feature_maps: list, training: bool = False):
    """Apply the shared RPN to every level and concatenate: logits, probs, deltas (float32,
    also under mixed precision, for the box arithmetic that follows)."""
    outputs = [rpn(p, training=training) for p in feature_maps]
    return [
        ops.cast(ops.concatenate([out[i] for out in outputs], axis=1), "float32") for i in range(3)
    ]
