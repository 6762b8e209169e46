"""Mask R-CNN's five losses and weight decay, each averaged over what it is defined on.

Every loss is a scalar that is 0 (not NaN) when nothing qualifies, e.g. an image without hands
has no positive ROIs, so box and mask losses vanish while the classifiers still learn background.
"""

from __future__ import annotations

import keras
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


def head_class_loss(class_ids: tf.Tensor, valid: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """ROI classification cross-entropy over sampled ROIs (negatives are class 0)."""
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(class_ids, tf.cast(logits, tf.float32))
    return masked_mean(losses, valid)


def head_bbox_loss(
    class_ids: tf.Tensor, positive: tf.Tensor, target_deltas: tf.Tensor, deltas: tf.Tensor
) -> tf.Tensor:
    """Smooth-L1 between positive ROIs' targets and the deltas predicted for their class."""
    chosen = tf.gather(tf.cast(deltas, tf.float32), class_ids, batch_dims=2)
    losses = smooth_l1(target_deltas - chosen)
    mask = tf.broadcast_to(tf.expand_dims(positive, -1), tf.shape(losses))
    return masked_mean(losses, mask)


def head_mask_loss(
    class_ids: tf.Tensor, positive: tf.Tensor, target_masks: tf.Tensor, masks: tf.Tensor
) -> tf.Tensor:
    """Per-pixel binary cross-entropy of positive ROIs' masks, for their class only.

    class_ids and positive [B, P], target_masks [B, P, h, w], masks [B, P, h, w, K] probabilities.
    """
    chosen = tf.gather(
        tf.transpose(tf.cast(masks, tf.float32), [0, 1, 4, 2, 3]), class_ids, batch_dims=2
    )
    losses = keras.losses.binary_crossentropy(target_masks[..., None], chosen[..., None])
    mask = tf.broadcast_to(positive[:, :, None, None], tf.shape(losses))
    return masked_mean(losses, mask)


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
