"""Keypoints as heatmaps over a box (the Mask R-CNN paper's keypoint branch): a keypoint's
training target is the one heatmap cell it falls in, and a prediction is the centre of the
cell the head scores highest.

A box is divided into `size` x `size` cells; the cell of point (x, y) is
(floor((y - y1) / h * size), floor((x - x1) / w * size)), and decoding returns that cell's
centre, so a point comes back within half a cell of where it was.
"""

from __future__ import annotations

import tensorflow as tf


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
