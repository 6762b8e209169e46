"""From the network's padded outputs to detections in each original image's pixels, written
once for `handray.inference.predictor` (and so `predict` and evaluation) and the SavedModel
export (and so the HTTP server).

The network works on padded squares and returns fixed-size rows: boxes normalised to the square,
a validity flag, and each ROI head's result. `to_original_pixels` keeps the detections at or
above a score, maps their boxes back through each image's window and scale and clips them (the
box head), then lets each ROI head map its own result (masks pasted onto the image's pixel grid,
keypoints moved into its pixels). `handray.core.detections.image_rows` then cuts one image's
rows out of the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from handray.model.heads import BoxHead, PixelFrame, RoiHead


def to_original_pixels(
    outputs: dict[str, tf.Tensor],
    heads: Sequence[RoiHead],
    windows: tf.Tensor,
    scales: tf.Tensor,
    sizes: tf.Tensor,
    image_size: int,
    min_score: float | tf.Tensor,
    mask_threshold: float | tf.Tensor,
) -> dict[str, tf.Tensor]:
    """Padded network outputs -> detections in original pixels, zero-padded per batch.

    `outputs` has boxes [B, D, 4] normalised to the square, class_ids, scores and valid [B, D]
    (best first) and each of `heads`' output; windows [B, 4] and scales [B, 2] come from
    `resize_and_pad`, sizes [B, 2] are the original (height, width). Returns num_detections
    [B], boxes [B, N, 4] (y1, x1, y2, x2 in original pixels, clipped), class_ids, scores
    [B, N], image_sizes [B, 2] and each head's output in original pixels (masks [B, N, Hmax,
    Wmax] bool); N is the batch's largest count, rows and pixels past an image's own are zero.
    """
    windows = tf.convert_to_tensor(windows)
    sizes = tf.cast(sizes, tf.int32)
    # Detections come best first, so those at or above `min_score` are a prefix of each row.
    keep = outputs["valid"] & (outputs["scores"] >= min_score)
    counts = tf.reduce_sum(tf.cast(keep, tf.int32), axis=1)
    top = tf.reduce_max(tf.concat([counts, [0]], axis=0))
    keep = keep[:, :top]
    boxes = BoxHead.to_original(outputs["boxes"][:, :top], keep, windows, scales, sizes, image_size)
    frame = PixelFrame(
        windows=windows,
        scales=scales,
        sizes=sizes,
        image_size=image_size,
        keep=keep,
        boxes=boxes,
        mask_threshold=tf.cast(mask_threshold, tf.float32),
    )
    result = {
        "num_detections": counts,
        "boxes": boxes,
        "class_ids": tf.where(keep, outputs["class_ids"][:, :top], 0),
        "scores": tf.where(keep, outputs["scores"][:, :top], 0.0),
        "image_sizes": sizes,
    }
    for head in heads:
        result[head.output] = head.to_original(outputs[head.output][:, :top], frame)
    return result
