"""From the box head's outputs to final detections, with fixed shapes (XLA)."""

from __future__ import annotations

import tensorflow as tf

from handray.model.boxes import batched_nms, clip_boxes, decode_boxes


def refine_detections(
    rois: tf.Tensor,
    roi_valid: tf.Tensor,
    probs: tf.Tensor,
    deltas: tf.Tensor,
    windows: tf.Tensor,
    *,
    std_dev: tf.Tensor,
    min_confidence: float | tf.Tensor,
    nms_threshold: float,
    max_instances: int,
    per_class: bool = True,
) -> dict[str, tf.Tensor]:
    """Detections from the box head: refined boxes, per-class NMS, at most `max_instances` per
    image, best first.

    `per_class` (Detectron's rule): every hand class of a ROI whose probability reaches
    `min_confidence` is a detection of its own, so a hand whose side is uncertain is kept as
    both sides and evaluation ranks each class's detections by that class's probability.
    Otherwise each ROI gives its most probable hand class only (matterport's rule for
    thresholds of 0.5 and above; below 0.5 it still sees hands the background outweighs).

    rois [B, R, 4] and windows [B, 4] normalised, probs [B, R, K], deltas [B, R, K, 4].
    Returns boxes [B, D, 4] (normalised), class_ids [B, D], scores [B, D], valid [B, D],
    zero-padded.
    """
    batch, count, classes = tf.shape(probs)[0], tf.shape(probs)[1], probs.shape[-1]
    if per_class:
        class_ids = tf.broadcast_to(
            tf.range(1, classes, dtype=tf.int32), [batch, count, classes - 1]
        )
        scores = probs[..., 1:]
        chosen = deltas[:, :, 1:]
        rois = tf.broadcast_to(rois[:, :, None], tf.shape(chosen))
        roi_valid = tf.broadcast_to(roi_valid[:, :, None], tf.shape(scores))
        flat = [batch, count * (classes - 1)]
        class_ids, scores, roi_valid = (tf.reshape(t, flat) for t in (class_ids, scores, roi_valid))
        rois, chosen = (tf.reshape(t, [*flat, 4]) for t in (rois, chosen))
    else:
        class_ids = tf.argmax(probs[..., 1:], axis=-1, output_type=tf.int32) + 1
        scores = tf.reduce_max(probs[..., 1:], axis=-1)
        chosen = tf.gather(deltas, class_ids, batch_dims=2)
    boxes = clip_boxes(decode_boxes(rois, chosen, std_dev), windows)
    keep = roi_valid & (scores >= min_confidence)
    # One NMS for all classes: shifting each class to its own region keeps classes apart.
    shifted = boxes + 2.0 * tf.cast(class_ids, boxes.dtype)[..., None]
    index, valid = batched_nms(
        shifted, tf.where(keep, scores, -1.0), max_instances, nms_threshold, score_threshold=-0.5
    )
    weight = tf.cast(valid, boxes.dtype)
    return {
        "boxes": tf.gather(boxes, index, batch_dims=1) * weight[..., None],
        "class_ids": tf.where(valid, tf.gather(class_ids, index, batch_dims=1), 0),
        "scores": tf.gather(scores, index, batch_dims=1) * weight,
        "valid": valid,
    }
