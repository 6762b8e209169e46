"""The RPN's losses, weight decay and the averaging every head's loss uses (each ROI head
owns its loss in `handray.model.heads`).

Every loss is a scalar that is 0 (not NaN) when nothing qualifies, e.g. an image without hands
has no positive ROIs, so box and mask losses vanish while the classifiers still learn background.
"""

from __future__ import annotations

import tensorflow as tf


def masked_mean(values: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Mean of `values` where `mask` holds; 0 (not NaN) where it holds nowhere."""
    mask = tf.cast(mask, values.dtype)
    return tf.math.divide_no_nan(tf.reduce_sum(values * mask), tf.reduce_sum(mask))


def smooth_l1(difference: tf.Tensor) -> tf.Tensor:
    absolute = tf.abs(difference)
    return tf.where(absolute < 1.0, 0.5 * tf.square(difference), absolute - 0.5)


def rpn_class_loss(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Anchor objectness cross-entropy over sampled anchors (labels 1 / -1; 0 is ignored)."""
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(
        tf.cast(labels == 1, tf.int32), tf.cast(logits, tf.float32)
    )
    return masked_mean(losses, labels != 0)


def rpn_bbox_loss(labels: tf.Tensor, target_deltas: tf.Tensor, deltas: tf.Tensor) -> tf.Tensor:
    """Smooth-L1 on positive anchors' deltas, averaged per coordinate."""
    losses = smooth_l1(target_deltas - tf.cast(deltas, tf.float32))
    positive = tf.broadcast_to(tf.expand_dims(labels == 1, -1), tf.shape(losses))
    return masked_mean(losses, positive)


def weight_decay_loss(variables: list, weight_decay: float) -> tf.Tensor:
    """0.5 * weight_decay * sum of squares of trainable weights, batch-norm gamma/beta excluded."""
    decayed = [v for v in variables if v.name not in ("gamma", "beta")]
    if not decayed or weight_decay == 0:
        return tf.constant(0.0)
    return (
        0.5
        * weight_decay
        * tf.add_n([tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) for v in decayed])
    )
