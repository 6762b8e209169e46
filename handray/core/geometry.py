"""Image-frame geometry shared by the data pipeline and the model: fitting an image into the
model's padded square, mapping boxes between the square and the original pixels, and the
sampling boxes of a pixel-centre resize.

Training, evaluation and inference all use these functions, so a box predicted on the padded
square lands on exactly the original pixels, and a mask target is cut exactly as the pipeline
cuts a mini-mask. This module sits below `handray.data` and `handray.model`, which both import
it. The image is scaled keeping its aspect ratio and placed at the top-left corner; `window` is
the image's extent inside the square and `scale` the per-axis factor actually applied (after
rounding the resized size to whole pixels).
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf


def resize_scale(
    height: tf.Tensor, width: tf.Tensor, image_size: int, min_dim: int = 0
) -> tf.Tensor:
    """The factor that fits an image into `image_size` squared.

    With `min_dim` > 0 this is matterport's "square" mode: upscale (never downscale) so the short
    side reaches `min_dim`, unless the long side would then exceed `image_size`.
    """
    height, width = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    fit = image_size / tf.maximum(height, width)
    if min_dim <= 0:
        return fit
    return tf.minimum(tf.maximum(1.0, min_dim / tf.minimum(height, width)), fit)


def resized_shape(height: tf.Tensor, width: tf.Tensor, scale: tf.Tensor) -> tf.Tensor:
    """Whole-pixel [h, w] of an image scaled by `scale` (at least one pixel each)."""
    size = tf.stack([tf.cast(height, tf.float32), tf.cast(width, tf.float32)]) * scale
    return tf.maximum(tf.cast(tf.round(size), tf.int32), 1)


def resize_and_pad(
    image: tf.Tensor, image_size: int, min_dim: int = 0
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Resize an [H, W, C] image into a zero-padded [S, S, C] float32 square.

    Returns (padded image, window [y1, x1, y2, x2] int32, scale [sy, sx] float32).
    """
    shape = tf.shape(image)
    scale = resize_scale(shape[0], shape[1], image_size, min_dim)
    size = resized_shape(shape[0], shape[1], scale)
    resized = tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear")
    padded = tf.image.pad_to_bounding_box(resized, 0, 0, image_size, image_size)
    window = tf.concat([[0, 0], size], axis=0)
    return padded, window, tf.cast(size, tf.float32) / tf.cast(shape[:2], tf.float32)


def _offset_and_factor(window: tf.Tensor, scale: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Per-coordinate offset and factor of [..., 4] windows and [..., 2] scales (broadcastable)."""
    window = tf.cast(window, tf.float32)
    scale = tf.cast(scale, tf.float32)
    offset = tf.stack([window[..., 0], window[..., 1], window[..., 0], window[..., 1]], axis=-1)
    return offset, tf.concat([scale, scale], axis=-1)


def boxes_to_original(boxes: tf.Tensor, window: tf.Tensor, scale: tf.Tensor) -> tf.Tensor:
    """Map [..., 4] boxes (y1, x1, y2, x2) from padded-square pixels back to original pixels.

    `window` [..., 4] and `scale` [..., 2] broadcast against the boxes' leading dimensions.
    """
    offset, factor = _offset_and_factor(window, scale)
    return (tf.convert_to_tensor(boxes, tf.float32) - offset) / factor


def points_to_original(points: tf.Tensor, window: tf.Tensor, scale: tf.Tensor) -> tf.Tensor:
    """Map [..., 2] points (x, y) from padded-square pixels back to original pixels, as
    `boxes_to_original` maps box corners. `window` [..., 4] and `scale` [..., 2] (sy, sx)
    broadcast against the points' leading dimensions."""
    offset, factor = _offset_and_factor(window, scale)
    x_then_y = [1, 0]  # the offsets and factors come as (y, x, y, x)
    offset, factor = tf.gather(offset, x_then_y, axis=-1), tf.gather(factor, x_then_y, axis=-1)
    return (tf.convert_to_tensor(points, tf.float32) - offset) / factor


def boxes_to_padded(boxes: tf.Tensor, window: tf.Tensor, scale: tf.Tensor) -> tf.Tensor:
    """Inverse of `boxes_to_original`: original pixels to padded-square pixels."""
    offset, factor = _offset_and_factor(window, scale)
    return tf.convert_to_tensor(boxes, tf.float32) * factor + offset


def pixel_centre_boxes(
    boxes: tf.Tensor, frame: tf.Tensor, map_shape: Sequence, crop_size: Sequence[int]
) -> tf.Tensor:
    """`crop_and_resize` boxes that sample each of `boxes` at the centres of a crop_size grid.

    `boxes` and `frame` [..., 4] share coordinates; `frame` is the area a map of `map_shape`
    (height, width) pixels covers edge to edge. crop_and_resize puts its first and last samples
    on a box's edges; the boxes returned move them half a cell inwards, so a crop is the exact
    pixel-centre resize of the box's area (as mini-masks and mask targets need).
    """
    boxes = tf.cast(boxes, tf.float32)
    frame = tf.cast(frame, tf.float32) + tf.zeros_like(boxes)

    def axis(start, end, origin, far, size_in, size_out: int):
        size_in = tf.cast(size_in, tf.float32)
        extent, span = end - start, tf.maximum(far - origin, 1e-6)
        first = (start + 0.5 * extent / size_out - origin) / span * size_in - 0.5
        last = (start + (size_out - 0.5) * extent / size_out - origin) / span * size_in - 0.5
        return first / (size_in - 1.0), last / (size_in - 1.0)

    y1, y2 = axis(
        boxes[..., 0], boxes[..., 2], frame[..., 0], frame[..., 2], map_shape[0], crop_size[0]
    )
    x1, x2 = axis(
        boxes[..., 1], boxes[..., 3], frame[..., 1], frame[..., 3], map_shape[1], crop_size[1]
    )
    return tf.stack([y1, x1, y2, x2], axis=-1)
