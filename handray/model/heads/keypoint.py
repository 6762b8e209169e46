"""The keypoint head (the Mask R-CNN paper's branch): one heatmap per keypoint over each
detection's box, with `mrcnn_keypoint_*` layer names that files from before it lack.

A box is divided into `size` x `size` cells; a keypoint's training target is the cell it falls
in, (floor((y - y1) / h * size), floor((x - x1) / w * size)), and its loss the softmax
cross-entropy over the heatmap's cells. A prediction is the centre of the cell the head scores
highest, so a point comes back within half a cell of where it was, with a score: the
probability within one cell of that spot.
"""

from __future__ import annotations

from typing import Any, ClassVar

import keras
import tensorflow as tf
from keras import layers

from handray.config import ModelConfig
from handray.core.geometry import points_to_original
from handray.model.heads.base import GroundTruth, PixelFrame, RoiHead, RoiSample
from handray.model.losses import masked_mean
from handray.model.norm import Norm

KEYPOINT_LAYER_PREFIX = "mrcnn_keypoint_"


class KeypointHead(RoiHead):
    output = "keypoints"
    loss_name = "mrcnn_keypoint_loss"
    layer_prefix = KEYPOINT_LAYER_PREFIX
    optional: ClassVar[dict[str, Any]] = {"model.num_keypoints": 0}

    @staticmethod
    def enabled(settings: ModelConfig) -> bool:
        return settings.num_keypoints > 0

    @property
    def pool_size(self) -> int:
        return self.settings.keypoint_pool_size

    @property
    def heatmap_size(self) -> int:
        return 4 * self.settings.keypoint_pool_size

    def _build(self, settings: ModelConfig, norm: Norm) -> keras.Model:
        return build_keypoint_head(
            settings.keypoint_pool_size,
            settings.fpn_channels,
            settings.keypoint_head_convs,
            settings.keypoint_head_channels,
            settings.num_keypoints,
        )

    def loss(self, ground_truth: GroundTruth, sample: RoiSample, outputs: tf.Tensor) -> tf.Tensor:
        keypoints = tf.cast(ground_truth.batch["gt_keypoints"], tf.float32)
        size = float(ground_truth.image_size)
        keypoints = tf.concat([keypoints[..., :2] / size, keypoints[..., 2:]], axis=-1)
        cells, counts = heatmap_targets(sample.rois, sample.matched(keypoints), self.heatmap_size)
        return keypoint_loss(cells, counts & sample.positive[..., None], outputs)

    def decode(self, outputs: tf.Tensor, detections: dict[str, tf.Tensor]) -> tf.Tensor:
        return decode_heatmaps(outputs, detections["boxes"])

    def to_original(self, values: tf.Tensor, frame: PixelFrame) -> tf.Tensor:
        """Keypoints [B, N, K, 3] with x, y in original pixels (clipped to the image)."""
        points = points_to_original(
            values[..., :2] * float(frame.image_size),
            frame.windows[:, None, None, :],
            frame.scales[:, None, None, :],
        )
        limits = tf.cast(tf.gather(frame.sizes, [1, 0], axis=1), tf.float32)[:, None, None, :]
        points = tf.clip_by_value(points, 0.0, limits)
        return frame.zero_dropped(tf.concat([points, values[..., 2:]], axis=-1))


def build_keypoint_head(
    pool_size: int, channels_in: int, convs: int, width: int, num_keypoints: int
) -> keras.Model:
    """ROI features -> keypoint heatmap logits [N, 4*pool, 4*pool, K] (a stack of 3x3
    convolutions, a stride-2 deconvolution to one map per keypoint, then bilinear upsampling
    by 2 for a finer grid)."""
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


def heatmap_targets(
    boxes: tf.Tensor, keypoints: tf.Tensor, size: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """The flat cell index [..., K] of each keypoint in its box's size x size heatmap, and
    whether it counts [..., K]: labelled (v > 0) and inside the box.

    boxes [..., 4] (y1, x1, y2, x2) and keypoints [..., K, 3] (x, y, v) share coordinates.
    """
    boxes = tf.cast(boxes, tf.float32)[..., None, :]
    keypoints = tf.cast(keypoints, tf.float32)
    height = tf.maximum(boxes[..., 2] - boxes[..., 0], 1e-6)
    width = tf.maximum(boxes[..., 3] - boxes[..., 1], 1e-6)
    row = (keypoints[..., 1] - boxes[..., 0]) / height * size
    col = (keypoints[..., 0] - boxes[..., 1]) / width * size
    inside = (row >= 0) & (row < size) & (col >= 0) & (col < size)
    counts = inside & (keypoints[..., 2] > 0)
    row = tf.clip_by_value(tf.cast(tf.floor(row), tf.int32), 0, size - 1)
    col = tf.clip_by_value(tf.cast(tf.floor(col), tf.int32), 0, size - 1)
    return tf.where(counts, row * size + col, 0), counts


def keypoint_loss(targets: tf.Tensor, counts: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Softmax cross-entropy of each counted keypoint over its heatmap's cells, averaged over
    the counted keypoints (unlabelled ones and those outside their ROI are ignored).

    targets [B, R, K] flat cell indices, counts [B, R, K], logits [B, R, S, S, K].
    """
    shape = tf.shape(logits)
    flat = tf.reshape(tf.cast(logits, tf.float32), [shape[0], shape[1], -1, logits.shape[-1]])
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(
        targets, tf.transpose(flat, [0, 1, 3, 2])
    )
    return masked_mean(losses, counts)


def decode_heatmaps(logits: tf.Tensor, boxes: tf.Tensor) -> tf.Tensor:
    """Heatmap logits [..., S, S, K] over boxes [..., 4] -> keypoints [..., K, 3]: (x, y) at the
    centre of each heatmap's best cell, in the boxes' coordinates, and a score in [0, 1]: the
    softmax probability within one cell of that spot (how sure the head is of it)."""
    size, count = logits.shape[-2], logits.shape[-1]
    leading = tf.shape(logits)[:-3]
    probs = tf.nn.softmax(tf.reshape(tf.cast(logits, tf.float32), [-1, size * size, count]), 1)
    best = tf.argmax(probs, axis=1, output_type=tf.int32)  # [N, K]
    nearby = tf.nn.depthwise_conv2d(
        tf.reshape(probs, [-1, size, size, count]),
        tf.ones([3, 3, count, 1]),
        strides=[1, 1, 1, 1],
        padding="SAME",
    )
    nearby = tf.reshape(nearby, [-1, size * size, count])
    score = tf.gather(tf.transpose(nearby, [0, 2, 1]), best[..., None], batch_dims=2)[..., 0]
    best = tf.reshape(best, tf.concat([leading, [count]], 0))
    score = tf.minimum(tf.reshape(score, tf.concat([leading, [count]], 0)), 1.0)
    boxes = tf.cast(boxes, tf.float32)[..., None, :]
    row = tf.cast(best // size, tf.float32) + 0.5
    col = tf.cast(best % size, tf.float32) + 0.5
    x = boxes[..., 1] + col / size * (boxes[..., 3] - boxes[..., 1])
    y = boxes[..., 0] + row / size * (boxes[..., 2] - boxes[..., 0])
    return tf.stack([x, y, score], axis=-1)
