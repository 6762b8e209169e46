"""The box (classifier + regressor), mask and keypoint heads; the first two with matterport's
layer names, the keypoint head (new) with `mrcnn_keypoint_*` names old files do not have.

All run on ROI features flattened to [N, pool, pool, C] (N = images x ROIs); the old model
wrapped the same layers in TimeDistributed, whose weights have these shapes too.
"""

from __future__ import annotations

import keras
from keras import layers

from handray.model.norm import Norm

KEYPOINT_LAYER_PREFIX = "mrcnn_keypoint_"  # the keypoint head's layers; files before it lack them


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


def build_keypoint_head(
    pool_size: int, channels_in: int, convs: int, width: int, num_keypoints: int
) -> keras.Model:
    """ROI features -> keypoint heatmap logits [N, 4*pool, 4*pool, K] (the Mask R-CNN paper's
    branch: a stack of 3x3 convolutions, a stride-2 deconvolution to one map per keypoint,
    then bilinear upsampling by 2 for a finer grid)."""
    pooled = keras.Input((pool_size, pool_size, channels_in), name="input_keypoint_features")
    x = pooled
    for index in range(1, convs + 1):
        x = layers.Conv2D(
            width, 3, padding="same", activation="relu", name=f"{KEYPOINT_LAYER_PREFIX}conv{index}"
        )(x)
    x = layers.Conv2DTranspose(
        num_keypoints, 4, strides=2, padding="same", name=f"{KEYPOINT_LAYER_PREFIX}deconv"
    )(x)
    logits = layers.UpSampling2D(
        2, interpolation="bilinear", name=f"{KEYPOINT_LAYER_PREFIX}upsample"
    )(x)
    return keras.Model(pooled, logits, name="mrcnn_keypoint_head")
