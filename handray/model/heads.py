"""The box (classifier + regressor) and mask heads, with matterport's layer names.

Both run on ROI features flattened to [N, pool, pool, C] (N = images x ROIs); the old model
wrapped the same layers in TimeDistributed, whose weights have these shapes too.
"""

from __future__ import annotations

import keras
from keras import layers

from handray.model.norm import Norm


def build_box_head(
    pool_size: int, channels_in: int, fc_size: int, num_classes: int, norm: Norm
) -> keras.Model:
    """ROI features -> (class logits [N, K], class probabilities [N, K], deltas [N, K, 4])."""
    pooled = keras.Input((pool_size, pool_size, channels_in), name="input_roi_features")
    # Two 1024-wide "fully connected" layers, the first as a pool_size x pool_size convolution.
    x = layers.Conv2D(fc_size, pool_size, padding="valid", name="mrcnn_class_conv1")(pooled)
    x = norm(x, "mrcnn_class_bn1")
    x = layers.Activation("relu")(x)
    x = layers.Conv2D(fc_size, 1, name="mrcnn_class_conv2")(x)
    x = norm(x, "mrcnn_class_bn2")
    x = layers.Activation("relu")(x)
    shared = layers.Flatten(name="pool_squeeze")(x)
    logits = layers.Dense(num_classes, name="mrcnn_class_logits")(shared)
    probs = layers.Softmax(name="mrcnn_class")(logits)
    deltas = layers.Dense(num_classes * 4, name="mrcnn_bbox_fc")(shared)
    deltas = layers.Reshape((num_classes, 4), name="mrcnn_bbox")(deltas)
    return keras.Model(pooled, [logits, probs, deltas], name="mrcnn_box_head")


def build_mask_head(
    pool_size: int, channels_in: int, width: int, num_classes: int, norm: Norm
) -> keras.Model:
    """ROI features -> per-class mask probabilities [N, 2*pool, 2*pool, K]."""
    pooled = keras.Input((pool_size, pool_size, channels_in), name="input_mask_features")
    x = pooled
    for index in range(1, 5):
        x = layers.Conv2D(width, 3, padding="same", name=f"mrcnn_mask_conv{index}")(x)
        x = norm(x, f"mrcnn_mask_bn{index}")
        x = layers.Activation("relu")(x)
    x = layers.Conv2DTranspose(width, 2, strides=2, activation="relu", name="mrcnn_mask_deconv")(x)
    masks = layers.Conv2D(num_classes, 1, activation="sigmoid", name="mrcnn_mask")(x)
    return keras.Model(pooled, masks, name="mrcnn_mask_head")
