"""Box arithmetic shared by the RPN, the heads, the targets and detection.

Boxes are [..., 4] tensors (y1, x1, y2, x2). Inside the model they are normalised by the padded
square's side (0..1); deltas are matterport's (dy, dx, log dh, log dw), relative to the box size.
All functions take batched, fixed-size tensors so the graphs compile with XLA.
"""

from __future__ import annotations

import tensorflow as tf


def box_iou(boxes_a: tf.Tensor, boxes_b: tf.Tensor) -> tf.Tensor:
    """Pairwise IoU: [..., N, 4] x [..., M, 4] -> [..., N, M]. Empty boxes have IoU 0."""
    a = tf.expand_dims(boxes_a, -2)
    b = tf.expand_dims(boxes_b, -3)
    top = tf.maximum(a[..., 0], b[..., 0])
    left = tf.maximum(a[..., 1], b[..., 1])
    bottom = tf.minimum(a[..., 2], b[..., 2])
    right = tf.minimum(a[..., 3], b[..., 3])
    intersection = tf.maximum(bottom - top, 0.0) * tf.maximum(right - left, 0.0)
    union = box_area(a) + box_area(b) - intersection
    return tf.math.divide_no_nan(intersection, union)


def box_area(boxes: tf.Tensor) -> tf.Tensor:
    return tf.maximum(boxes[..., 2] - boxes[..., 0], 0.0) * tf.maximum(
        boxes[..., 3] - boxes[..., 1], 0.0
    )


def encode_boxes(
    boxes: tf.Tensor, targets: tf.Tensor, std_dev: tf.Tensor | None = None
) -> tf.Tensor:
    """Deltas that move `boxes` onto `targets`, divided by `std_dev` (the RPN/head scaling)."""
    height = boxes[..., 2] - boxes[..., 0]
    width = boxes[..., 3] - boxes[..., 1]
    centre_y = boxes[..., 0] + 0.5 * height
    centre_x = boxes[..., 1] + 0.5 * width
    target_height = targets[..., 2] - targets[..., 0]
    target_width = targets[..., 3] - targets[..., 1]
    target_y = targets[..., 0] + 0.5 * target_height
    target_x = targets[..., 1] + 0.5 * target_width
    safe_h = tf.maximum(height, 1e-8)
    safe_w = tf.maximum(width, 1e-8)
    deltas = tf.stack(
        [
            (target_y - centre_y) / safe_h,
            (target_x - centre_x) / safe_w,
            tf.math.log(tf.maximum(target_height, 1e-8) / safe_h),
            tf.math.log(tf.maximum(target_width, 1e-8) / safe_w),
        ],
        axis=-1,
    )
    return deltas if std_dev is None else deltas / std_dev


def decode_boxes(
    boxes: tf.Tensor, deltas: tf.Tensor, std_dev: tf.Tensor | None = None
) -> tf.Tensor:
    """Apply deltas (multiplied by `std_dev` first) to boxes; the inverse of `encode_boxes`."""
    if std_dev is not None:
        deltas = deltas * std_dev
    height = boxes[..., 2] - boxes[..., 0]
    width = boxes[..., 3] - boxes[..., 1]
    centre_y = boxes[..., 0] + 0.5 * height + deltas[..., 0] * height
    centre_x = boxes[..., 1] + 0.5 * width + deltas[..., 1] * width
    # exp of a huge delta would be inf; log(1000/16) caps growth as Detectron does.
    height = height * tf.exp(tf.minimum(deltas[..., 2], 4.135))
    width = width * tf.exp(tf.minimum(deltas[..., 3], 4.135))
    return tf.stack(
        [
            centre_y - 0.5 * height,
            centre_x - 0.5 * width,
            centre_y + 0.5 * height,
            centre_x + 0.5 * width,
        ],
        axis=-1,
    )


def clip_boxes(boxes: tf.Tensor, window: tf.Tensor) -> tf.Tensor:
    """Clip [B, N, 4] boxes into per-image windows [B, 4] (same coordinates)."""
    window = tf.cast(window, boxes.dtype)[:, None, :]
    y1 = tf.clip_by_value(boxes[..., 0], window[..., 0], window[..., 2])
    x1 = tf.clip_by_value(boxes[..., 1], window[..., 1], window[..., 3])
    y2 = tf.clip_by_value(boxes[..., 2], window[..., 0], window[..., 2])
    x2 = tf.clip_by_value(boxes[..., 3], window[..., 1], window[..., 3])
    return tf.stack([y1, x1, y2, x2], axis=-1)


def batched_nms(
    boxes: tf.Tensor,
    scores: tf.Tensor,
    max_output: int,
    iou_threshold: float,
    score_threshold: float = 0.0,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Greedy NMS per image on [B, N, 4] boxes and [B, N] scores, padded to `max_output`.

    Boxes scoring at or below `score_threshold` never survive (mark padding with -1). Returns
    (indices [B, max_output] into N, valid [B, max_output] bool), best first. Built on
    `non_max_suppression_padded`, which XLA can compile.
    """
    indices, counts = tf.image.non_max_suppression_padded(
        tf.cast(boxes, tf.float32),
        tf.cast(scores, tf.float32),
        max_output_size=max_output,
        iou_threshold=iou_threshold,
        score_threshold=score_threshold,
        pad_to_max_output_size=True,
        # Otherwise the op guesses the order of every box in the batch from the first one.
        canonicalized_coordinates=True,
    )
    valid = tf.range(max_output)[None, :] < counts[:, None]
    return tf.where(valid, indices, 0), valid
