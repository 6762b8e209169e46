"""From the network's padded outputs to detections in each original image's pixels, written
once for `MaskRCNN.detect`, the SavedModel export and (through the export) the HTTP server.

The network works on padded squares and returns fixed-size rows: boxes normalised to the square,
box-relative mask probabilities and a validity flag. `to_original_pixels` keeps the detections
at or above a score, maps their boxes back through each image's window and scale, clips them to
the image, and pastes each mask onto the image's pixel grid. `paste_masks` does that with two
small interpolation matrices per detection, so pasting a whole batch is a pair of matrix
products rather than a loop over boxes. `handray.unpad.image_detections` then cuts one image's
rows out of the batch.
"""

from __future__ import annotations

import tensorflow as tf

from handray.config import MASK_THRESHOLD
from handray.geometry import boxes_to_original, points_to_original


def to_original_pixels(
    outputs: dict[str, tf.Tensor],
    windows: tf.Tensor,
    scales: tf.Tensor,
    sizes: tf.Tensor,
    image_size: int,
    min_score: float | tf.Tensor,
    mask_threshold: float | tf.Tensor = MASK_THRESHOLD,
) -> dict[str, tf.Tensor]:
    """Padded network outputs -> detections in original pixels, zero-padded per batch.

    `outputs` has boxes [B, D, 4] normalised to the square, class_ids, scores and valid [B, D]
    (best first), masks [B, D, h, w] box-relative probabilities and, optionally, keypoints
    [B, D, K, 3] (x, y normalised to the square, score); windows [B, 4] and scales
    [B, 2] come from `resize_and_pad`, sizes [B, 2] are the original (height, width).
    Returns num_detections [B], boxes [B, N, 4] (y1, x1, y2, x2 in original pixels, clipped),
    class_ids, scores [B, N], masks [B, N, Hmax, Wmax] bool, image_sizes [B, 2] and, with
    keypoints given, keypoints [B, N, K, 3] (x, y in original pixels, clipped; score); N is the
    batch's largest count, rows and pixels past an image's own are zero.
    """
    windows = tf.convert_to_tensor(windows)
    sizes = tf.cast(sizes, tf.int32)
    # Detections come best first, so those at or above `min_score` are a prefix of each row.
    keep = outputs["valid"] & (outputs["scores"] >= min_score)
    counts = tf.reduce_sum(tf.cast(keep, tf.int32), axis=1)
    top = tf.reduce_max(tf.concat([counts, [0]], axis=0))
    keep = keep[:, :top]
    boxes = boxes_to_original(
        outputs["boxes"][:, :top] * float(image_size), windows[:, None, :], scales[:, None, :]
    )
    limits = tf.cast(tf.tile(sizes, [1, 2]), tf.float32)[:, None, :]
    boxes = tf.clip_by_value(boxes, 0.0, limits) * tf.cast(keep, tf.float32)[..., None]
    height, width = tf.reduce_max(sizes[:, 0]), tf.reduce_max(sizes[:, 1])
    masks = paste_masks(outputs["masks"][:, :top], boxes, height, width, mask_threshold)
    inside_rows = tf.range(height)[None, :] < sizes[:, :1]
    inside_cols = tf.range(width)[None, :] < sizes[:, 1:]
    inside = inside_rows[:, None, :, None] & inside_cols[:, None, None, :]
    result = {
        "num_detections": counts,
        "boxes": boxes,
        "class_ids": tf.where(keep, outputs["class_ids"][:, :top], 0),
        "scores": tf.where(keep, outputs["scores"][:, :top], 0.0),
        "masks": masks & inside & keep[..., None, None],
        "image_sizes": sizes,
    }
    if "keypoints" in outputs:
        keypoints = outputs["keypoints"][:, :top]
        points = points_to_original(
            keypoints[..., :2] * float(image_size),
            windows[:, None, None, :],
            scales[:, None, None, :],
        )
        widths_heights = tf.cast(tf.gather(sizes, [1, 0], axis=1), tf.float32)[:, None, None, :]
        points = tf.clip_by_value(points, 0.0, widths_heights)
        keypoints = tf.concat([points, keypoints[..., 2:]], axis=-1)
        result["keypoints"] = keypoints * tf.cast(keep, tf.float32)[..., None, None]
    return result


def _interpolation(start: tf.Tensor, end: tf.Tensor, length: tf.Tensor, cells: int) -> tf.Tensor:
    """[B, D, length, cells] weights sampling a box-relative grid of `cells` at pixel centres.

    Pixel centres outside [start, end) get no weight: the mask is empty outside its box.
    """
    centres = tf.cast(tf.range(length), tf.float32) + 0.5
    start, end = start[..., None], end[..., None]
    position = (centres - start) / tf.maximum(end - start, 1e-6) * cells - 0.5
    position = tf.clip_by_value(position, 0.0, cells - 1.0)
    low = tf.floor(position)
    fraction = position - low
    high = tf.minimum(low + 1.0, cells - 1.0)
    weights = tf.one_hot(tf.cast(low, tf.int32), cells) * (1.0 - fraction)[..., None]
    weights += tf.one_hot(tf.cast(high, tf.int32), cells) * fraction[..., None]
    inside = (centres >= start) & (centres < end)
    return weights * tf.cast(inside, tf.float32)[..., None]


def paste_masks(
    masks: tf.Tensor,
    boxes: tf.Tensor,
    height: tf.Tensor,
    width: tf.Tensor,
    threshold: float | tf.Tensor = MASK_THRESHOLD,
) -> tf.Tensor:
    """Box-relative mask probabilities [B, D, h, w] -> boolean masks [B, D, height, width].

    boxes [B, D, 4] are in the target image's pixels (y1, x1, y2, x2, ends exclusive). A pixel
    belongs to the mask when the bilinearly sampled probability at its centre is >= threshold.
    """
    rows = _interpolation(boxes[..., 0], boxes[..., 2], height, masks.shape[2])
    cols = _interpolation(boxes[..., 1], boxes[..., 3], width, masks.shape[3])
    sampled = tf.einsum("bdhi,bdij->bdhj", rows, tf.cast(masks, tf.float32))
    sampled = tf.einsum("bdhj,bdwj->bdhw", sampled, cols)
    return sampled >= threshold
