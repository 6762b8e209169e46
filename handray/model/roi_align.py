"""ROI Align written with gathers, so that the training and inference steps compile with XLA.

`tf.image.crop_and_resize` has no XLA kernel: a `jit_compile=True` step that calls it fails to
compile. Here the same bilinear sampling is a `tf.gather` on feature maps flattened to
[pixels, channels]: the four neighbours of every sample point are fetched by linear index and
blended, points outside the map read 0, and the gradient w.r.t. the maps is the gather's
(a scatter-add), which XLA compiles too.

`crop_and_resize` reproduces `tf.image.crop_and_resize(method="bilinear", extrapolation_value=0)`;
`pyramid_roi_align` is matterport's PyramidROIAlign: each box is pooled from the FPN level that
matches its size, all levels in one gather, so the cost does not grow with the number of levels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import tensorflow as tf

# FPN paper, eq. 1: a box of 224 px (ImageNet's crop) is pooled from P4; each halving or doubling
# of its side moves it one level down or up, within the levels the FPN has (P2..P5).
_CANONICAL_SIZE = 224.0
_CANONICAL_LEVEL = 4
_FIRST_LEVEL, _LAST_LEVEL = 2, 5


def crop_and_resize(
    images: tf.Tensor,
    boxes: tf.Tensor,
    box_indices: tf.Tensor,
    crop_size: Sequence[int],
) -> tf.Tensor:
    """`tf.image.crop_and_resize` (bilinear, extrapolation 0) that XLA can compile.

    images [N, H, W, C]; boxes [K, 4] normalised (y1, x1, y2, x2), flipped boxes allowed;
    box_indices [K] into N; crop_size (crop_h, crop_w). Returns [K, crop_h, crop_w, C] float32.
    """
    crop_h, crop_w = (int(size) for size in crop_size)
    images = tf.cast(images, tf.float32)
    boxes = tf.cast(boxes, tf.float32)
    shape = tf.shape(images)
    height, width = shape[1], shape[2]
    box_indices = tf.cast(box_indices, tf.int32)
    # Every box reads a map of the same size; its image starts box_index * H * W rows down.
    height = tf.fill(tf.shape(box_indices), height)
    width = tf.fill(tf.shape(box_indices), width)
    return _crop(
        tf.reshape(images, [-1, shape[3]]),
        box_indices * height * width,
        height,
        width,
        boxes,
        crop_h,
        crop_w,
    )


def pyramid_roi_align(
    feature_maps: Sequence[tf.Tensor],
    boxes: tf.Tensor,
    pool_size: int,
    image_size: int,
) -> tf.Tensor:
    """Pool each box from the FPN level that suits its size (matterport's PyramidROIAlign).

    feature_maps: P2..P5, each [B, H_l, W_l, C] (strides 4..32 of an image_size square input);
    boxes [B, R, 4] normalised, zero boxes are padding. Returns [B, R, pool_size, pool_size, C]
    float32. Gradients flow to the maps, not to the boxes (as in matterport: the boxes are
    proposals or targets, not something ROI Align should move).
    """
    if len(feature_maps) != _LAST_LEVEL - _FIRST_LEVEL + 1:
        raise ValueError(f"expected feature maps P2..P5, got {len(feature_maps)} maps")
    boxes = tf.stop_gradient(tf.cast(boxes, tf.float32))
    batch, rois = tf.shape(boxes)[0], tf.shape(boxes)[1]
    level = _levels(boxes, image_size) - _FIRST_LEVEL  # [B, R], 0 for P2

    # One table of pixels: every level's maps flattened and stacked, level after level.
    shapes = [tf.shape(feature_map) for feature_map in feature_maps]
    heights = tf.stack([shape[1] for shape in shapes])
    widths = tf.stack([shape[2] for shape in shapes])
    level_pixels = batch * heights * widths
    level_start = tf.concat([[0], tf.cumsum(level_pixels)[:-1]], axis=0)
    pixels = tf.concat(
        [
            tf.reshape(tf.cast(feature_map, tf.float32), [-1, shape[3]])
            for feature_map, shape in zip(feature_maps, shapes, strict=True)
        ],
        axis=0,
    )

    height = tf.gather(heights, level)
    width = tf.gather(widths, level)
    image = tf.range(batch)[:, None]
    base = tf.gather(level_start, level) + image * height * width
    crops = _crop(
        pixels,
        tf.reshape(base, [-1]),
        tf.reshape(height, [-1]),
        tf.reshape(width, [-1]),
        tf.reshape(boxes, [-1, 4]),
        pool_size,
        pool_size,
    )
    channels = tf.shape(pixels)[1]
    return tf.reshape(crops, tf.stack([batch, rois, pool_size, pool_size, channels]))


def _levels(boxes: tf.Tensor, image_size: int) -> tf.Tensor:
    """FPN level (2..5) of each normalised box; boxes without area (padding) go to P2."""
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    has_area = area > 0.0
    # log2(sqrt(h * w) / (224 / image_size)); the guard keeps log(0) out of the graph, since a
    # NaN or inf here would reach the gradient even where tf.where discards it.
    side = tf.sqrt(tf.where(has_area, area, 1.0))
    scale = tf.math.log(side / (_CANONICAL_SIZE / image_size)) / math.log(2.0)
    level = _CANONICAL_LEVEL + tf.cast(tf.round(scale), tf.int32)
    level = tf.clip_by_value(level, _FIRST_LEVEL, _LAST_LEVEL)
    return tf.where(has_area, level, _FIRST_LEVEL)


def _crop(
    pixels: tf.Tensor,
    base: tf.Tensor,
    height: tf.Tensor,
    width: tf.Tensor,
    boxes: tf.Tensor,
    crop_h: int,
    crop_w: int,
) -> tf.Tensor:
    """Bilinear crops [K, crop_h, crop_w, C] of K maps stored row-major in `pixels` [T, C].

    Map k starts at row base[k] and is height[k] x width[k]; boxes [K, 4] are normalised to it.
    """
    ys = _sample_positions(boxes[:, 0], boxes[:, 2], height, crop_h)
    xs = _sample_positions(boxes[:, 1], boxes[:, 3], width, crop_w)
    y_max = tf.cast(height - 1, tf.float32)[:, None]
    x_max = tf.cast(width - 1, tf.float32)[:, None]
    inside = ((ys >= 0.0) & (ys <= y_max))[:, :, None] & ((xs >= 0.0) & (xs <= x_max))[:, None, :]
    # Outside points are clamped so that they index a real pixel (and cannot overflow int32);
    # their value is replaced by 0 below. Inside points are unchanged by the clamp.
    ys = tf.minimum(tf.maximum(ys, 0.0), y_max)
    xs = tf.minimum(tf.maximum(xs, 0.0), x_max)
    top, left = tf.floor(ys), tf.floor(xs)
    y_lerp = (ys - top)[:, :, None, None]
    x_lerp = (xs - left)[:, None, :, None]

    row_width = width[:, None]
    top_row = base[:, None] + tf.cast(top, tf.int32) * row_width
    bottom_row = base[:, None] + tf.cast(tf.math.ceil(ys), tf.int32) * row_width
    left_col = tf.cast(left, tf.int32)[:, None, :]
    right_col = tf.cast(tf.math.ceil(xs), tf.int32)[:, None, :]
    top_row, bottom_row = top_row[:, :, None], bottom_row[:, :, None]
    corners = tf.stack(
        [top_row + left_col, top_row + right_col, bottom_row + left_col, bottom_row + right_col],
        axis=-1,
    )  # [K, crop_h, crop_w, 4]
    top_left, top_right, bottom_left, bottom_right = tf.unstack(
        _gather_rows(pixels, corners), axis=3
    )
    # The kernel's own order of operations, so results agree to rounding.
    upper = top_left + (top_right - top_left) * x_lerp
    lower = bottom_left + (bottom_right - bottom_left) * x_lerp
    values = upper + (lower - upper) * y_lerp
    return tf.where(inside[..., None], values, tf.zeros_like(values))


def _sample_positions(start: tf.Tensor, end: tf.Tensor, size: tf.Tensor, count: int) -> tf.Tensor:
    """Pixel positions [K, count] of `count` samples from `start` to `end` (normalised, [K]) on
    an axis of `size` [K] pixels: the box's ends map onto pixel centres 0 and size - 1, as in
    crop_and_resize; a single sample sits at the box's middle."""
    extent = tf.cast(size - 1, tf.float32)
    if count == 1:
        return (0.5 * (start + end) * extent)[:, None]
    step = (end - start) * extent / float(count - 1)
    return (start * extent)[:, None] + tf.range(count, dtype=tf.float32)[None, :] * step[:, None]


def turned_crops(
    images: tf.Tensor, centres: tf.Tensor, sides: tf.Tensor, angles: tf.Tensor, size: int
) -> tf.Tensor:
    """Square crops turned by an angle, sampled bilinearly with gathers (XLA compiles them).

    images [B, H, W, C]; centres [B, R, 2] (y, x in pixels), sides [B, R] (pixels) and angles
    [B, R] (radians, clockwise on the image: the crop's up is the image direction
    (sin a, -cos a) in (x, y)). Returns [B, R, size, size, C] float32; points outside the
    image read 0 (see `_sample_points`). Gradients flow to the images, not to the geometry.
    """
    images = tf.cast(images, tf.float32)
    centres, sides, angles = (
        tf.stop_gradient(tf.cast(t, tf.float32)) for t in (centres, sides, angles)
    )
    shape = tf.shape(images)
    batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
    rois = tf.shape(centres)[1]
    # Crop coordinates in [-0.5, 0.5] at pixel centres: u to the right, v down.
    steps = (tf.range(size, dtype=tf.float32) + 0.5) / float(size) - 0.5
    v, u = tf.meshgrid(steps, steps, indexing="ij")  # [size, size]
    cos, sin = tf.cos(angles)[..., None, None], tf.sin(angles)[..., None, None]
    scale = sides[..., None, None]
    # Pixel-centre convention: pixel (i, j) covers [i, i + 1), its centre is at i + 0.5.
    xs = centres[..., 1, None, None] + scale * (u * cos - v * sin) - 0.5
    ys = centres[..., 0, None, None] + scale * (u * sin + v * cos) - 0.5
    base = tf.range(batch)[:, None, None, None] * height * width
    values = _sample_points(
        tf.reshape(images, [-1, channels]),
        tf.broadcast_to(base, tf.shape(ys)),
        height,
        width,
        ys,
        xs,
    )
    return tf.reshape(values, tf.stack([batch, rois, size, size, channels]))


def _sample_points(
    pixels: tf.Tensor, base: tf.Tensor, height: tf.Tensor, width: tf.Tensor, ys, xs
) -> tf.Tensor:
    """Bilinear values [..., C] at pixel positions ys, xs [...] of maps stored row-major in
    `pixels` [T, C], each point's map starting at row `base` [...]. A point within the map's
    area (half a pixel beyond the outer centres) reads the nearest border values, as PIL's
    transforms do; points beyond read 0."""
    y_max = tf.cast(height - 1, tf.float32)
    x_max = tf.cast(width - 1, tf.float32)
    inside = (ys >= -0.5) & (ys <= y_max + 0.5) & (xs >= -0.5) & (xs <= x_max + 0.5)
    ys = tf.clip_by_value(ys, 0.0, y_max)
    xs = tf.clip_by_value(xs, 0.0, x_max)
    top, left = tf.floor(ys), tf.floor(xs)
    y_lerp, x_lerp = (ys - top)[..., None], (xs - left)[..., None]
    top_row = base + tf.cast(top, tf.int32) * width
    bottom_row = base + tf.cast(tf.math.ceil(ys), tf.int32) * width
    left_col, right_col = tf.cast(left, tf.int32), tf.cast(tf.math.ceil(xs), tf.int32)
    corners = tf.stack(
        [top_row + left_col, top_row + right_col, bottom_row + left_col, bottom_row + right_col],
        axis=-1,
    )
    top_left, top_right, bottom_left, bottom_right = tf.unstack(
        _gather_rows(pixels, corners), axis=-2
    )
    upper = top_left + (top_right - top_left) * x_lerp
    lower = bottom_left + (bottom_right - bottom_left) * x_lerp
    values = upper + (lower - upper) * y_lerp
    return tf.where(inside[..., None], values, tf.zeros_like(values))


def _gather_rows(pixels: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
    """`tf.gather(pixels, index)` with a dense gradient (a scatter-add into `pixels`' shape).

    `tf.gather`'s gradient is sparse, and through the `tf.concat` of the pyramid's levels it
    becomes a `Where` per level: a dynamic shape that XLA's compiler bounds by evaluating the
    whole network that feeds it in its interpreter (35 of the train step's 61 s of compiling).
    """
    return tf.gather_nd(pixels, index[..., None])
