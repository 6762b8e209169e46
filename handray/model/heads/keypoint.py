"""The keypoint head (the Mask R-CNN paper's branch): one heatmap per keypoint over each
detection's box, with `mrcnn_keypoint_*` layer names that files from before it lack.

A box is divided into `size` x `size` cells (`size`: the pool size times
`model.keypoint_upsample`). A keypoint at (row, col) = ((y - y1) / h * size, (x - x1) / w * size)
has as its training target either the cell it falls in, (floor(row), floor(col))
(`model.keypoint_sigma` 0, the paper's), or a Gaussian of that sigma in cells around it,
normalised over the cells; its loss is the cross-entropy of the softmax over the heatmap's
cells against that target. A prediction is the cell the head scores highest, refined by the
probability-weighted mean position over its 3x3 neighbourhood (a local soft-argmax, mirrored at
the heatmap's border), so a point is not limited to cell centres; its score is the probability
within one cell of the best cell.
"""

from __future__ import annotations

from typing import Any, ClassVar

import keras
import tensorflow as tf
from keras import layers

from handray.config import ModelConfig
from handray.core.geometry import points_to_original
from handray.model.heads.base import (
    GroundTruth,
    PixelFrame,
    RoiHead,
    RoiSample,
    head_pixels,
    per_box,
)
from handray.model.losses import masked_mean
from handray.model.norm import Norm
from handray.model.roi_align import crop_and_resize

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
        return self.settings.keypoint_upsample * self.settings.keypoint_pool_size

    def _build(self, settings: ModelConfig, norm: Norm) -> keras.Model:
        self.mean_pixel = tf.constant(settings.mean_pixel, tf.float32)
        return build_keypoint_head(
            settings.keypoint_pool_size,
            settings.fpn_channels,
            settings.keypoint_head_convs,
            settings.keypoint_head_channels,
            settings.num_keypoints,
            upsample=settings.keypoint_upsample,
            reduction=settings.keypoint_head_reduction,
            pixels=settings.keypoint_pixels,
        )

    def run(
        self,
        pyramid: list[tf.Tensor],
        boxes: tf.Tensor,
        image_size: int,
        training: bool,
        images: tf.Tensor | None = None,
    ) -> tf.Tensor:
        """Heatmap logits [B, D, S, S, K] from the ROI-aligned features of boxes [B, D, 4],
        and, with `model.keypoint_pixels`, from the box's pixels too (at twice the pooled
        resolution: a hand of 23 px is 6x6 cells of P2, too coarse for 21 points)."""
        if not self.settings.keypoint_pixels:
            return RoiHead.run(self, pyramid, boxes, image_size, training)
        if images is None:
            raise ValueError("a keypoint head with model.keypoint_pixels reads pixels: images=")
        flat_boxes = tf.reshape(tf.cast(boxes, tf.float32), [-1, 4])
        # crop_and_resize maps normalised coordinates onto pixel centres 0 .. size - 1.
        flat_boxes = flat_boxes * float(image_size) / float(image_size - 1)
        which = tf.repeat(tf.range(tf.shape(boxes)[0]), tf.shape(boxes)[1])
        pixels = head_pixels(images, self.mean_pixel)
        crops = crop_and_resize(pixels, flat_boxes, which, [2 * self.pool_size] * 2)
        pooled = self.pooled_features(pyramid, boxes, image_size)
        return per_box(self.network([pooled, crops], training=training), boxes)

    def loss(self, ground_truth: GroundTruth, sample: RoiSample, outputs: tf.Tensor) -> tf.Tensor:
        keypoints = tf.cast(ground_truth.batch["gt_keypoints"], tf.float32)
        size = float(ground_truth.image_size)
        keypoints = tf.concat([keypoints[..., :2] / size, keypoints[..., 2:]], axis=-1)
        matched, sigma = sample.matched(keypoints), self.settings.keypoint_sigma
        if sigma > 0:
            targets, counts = gaussian_targets(sample.rois, matched, self.heatmap_size, sigma)
        else:
            targets, counts = heatmap_targets(sample.rois, matched, self.heatmap_size)
        return keypoint_loss(targets, counts & sample.positive[..., None], outputs)

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
    pool_size: int,
    channels_in: int,
    convs: int,
    width: int,
    num_keypoints: int,
    upsample: int = 4,
    reduction: int = 0,
    pixels: int = 0,
) -> keras.Model:
    """ROI features -> keypoint heatmap logits [N, upsample*pool, upsample*pool, K]: an
    optional 1x1 reduction to `reduction` channels (fewer FLOPs in the 3x3 convs), a stack of
    3x3 convolutions, then one map per keypoint from a stride-2 deconvolution (upsample 2),
    followed by bilinear upsampling by 2 (4, the paper's finer grid), or from a 1x1
    convolution at the pooled resolution (1, the cheapest). With the defaults it is the head
    files saved before these options hold, under the same layer names.

    `pixels` > 0 adds a second input, the box's pixels at twice the pooled resolution, through
    two 3x3 convolutions (the second of stride 2, to `pixels` channels) joined to the reduced
    features before the stack."""
    if upsample not in (1, 2, 4):
        raise ValueError(f"keypoint upsample must be 1, 2 or 4, not {upsample}")
    pooled = keras.Input((pool_size, pool_size, channels_in), name="input_keypoint_features")
    inputs: list = [pooled]  # and the box's pixels, with a pixel branch
    x = pooled
    if reduction:
        x = layers.Conv2D(reduction, 1, activation="relu", name=f"{KEYPOINT_LAYER_PREFIX}reduce")(x)
    if pixels:
        crops = keras.Input((2 * pool_size, 2 * pool_size, 3), name="input_keypoint_pixels")
        inputs.append(crops)
        detail = layers.Conv2D(
            16, 3, padding="same", activation="relu", name=f"{KEYPOINT_LAYER_PREFIX}pixels_conv1"
        )(crops)
        detail = layers.Conv2D(
            pixels,
            3,
            strides=2,
            padding="same",
            activation="relu",
            name=f"{KEYPOINT_LAYER_PREFIX}pixels_conv2",
        )(detail)
        x = layers.Concatenate(name=f"{KEYPOINT_LAYER_PREFIX}join")([x, detail])
    for index in range(1, convs + 1):
        x = layers.Conv2D(
            width, 3, padding="same", activation="relu", name=f"{KEYPOINT_LAYER_PREFIX}conv{index}"
        )(x)
    if upsample == 1:
        logits = layers.Conv2D(num_keypoints, 1, name=f"{KEYPOINT_LAYER_PREFIX}logits")(x)
        return keras.Model(inputs if pixels else pooled, logits, name="mrcnn_keypoint_head")
    logits = layers.Conv2DTranspose(
        num_keypoints, 4, strides=2, padding="same", name=f"{KEYPOINT_LAYER_PREFIX}deconv"
    )(x)
    if upsample == 4:
        logits = layers.UpSampling2D(
            2, interpolation="bilinear", name=f"{KEYPOINT_LAYER_PREFIX}upsample"
        )(logits)
    return keras.Model(inputs if pixels else pooled, logits, name="mrcnn_keypoint_head")


def heatmap_positions(
    boxes: tf.Tensor, keypoints: tf.Tensor, size: int
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Each keypoint's position (row, col) [..., K] in its box's size x size heatmap, in cells
    (cell (i, j) spans [i, i + 1) x [j, j + 1)), and whether it counts [..., K]: labelled
    (v > 0) and inside the box.

    boxes [..., 4] (y1, x1, y2, x2) and keypoints [..., K, 3] (x, y, v) share coordinates.
    """
    boxes = tf.cast(boxes, tf.float32)[..., None, :]
    keypoints = tf.cast(keypoints, tf.float32)
    height = tf.maximum(boxes[..., 2] - boxes[..., 0], 1e-6)
    width = tf.maximum(boxes[..., 3] - boxes[..., 1], 1e-6)
    row = (keypoints[..., 1] - boxes[..., 0]) / height * size
    col = (keypoints[..., 0] - boxes[..., 1]) / width * size
    inside = (row >= 0) & (row < size) & (col >= 0) & (col < size)
    return row, col, inside & (keypoints[..., 2] > 0)


def heatmap_targets(
    boxes: tf.Tensor, keypoints: tf.Tensor, size: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """The flat cell index [..., K] of each keypoint in its box's size x size heatmap (0 where
    it does not count), and whether it counts [..., K] (see `heatmap_positions`)."""
    row, col, counts = heatmap_positions(boxes, keypoints, size)
    row = tf.clip_by_value(tf.cast(tf.floor(row), tf.int32), 0, size - 1)
    col = tf.clip_by_value(tf.cast(tf.floor(col), tf.int32), 0, size - 1)
    return tf.where(counts, row * size + col, 0), counts


def gaussian_targets(
    boxes: tf.Tensor, keypoints: tf.Tensor, size: int, sigma: float
) -> tuple[tf.Tensor, tf.Tensor]:
    """Each keypoint's soft target [..., K, size * size] (flat cells, row-major): a Gaussian of
    `sigma` cells around its position, evaluated at the cell centres and normalised to sum to 1;
    and whether it counts [..., K] (see `heatmap_positions`).

    The Gaussian is separable, so it is the product of a softmax over rows and one over columns
    of -d^2 / (2 sigma^2): stable for any sigma > 0 and any position, even one far outside the
    box (a plain exp would underflow to 0 / 0 there, and NaN would reach the gradients).
    """
    row, col, counts = heatmap_positions(boxes, keypoints, size)
    centres = tf.range(size, dtype=tf.float32) + 0.5
    scale = -0.5 / float(sigma) ** 2
    rows = tf.nn.softmax(scale * tf.square(centres - row[..., None]), axis=-1)
    cols = tf.nn.softmax(scale * tf.square(centres - col[..., None]), axis=-1)
    targets = rows[..., :, None] * cols[..., None, :]
    return tf.reshape(targets, tf.concat([tf.shape(row), [size * size]], 0)), counts


def keypoint_loss(targets: tf.Tensor, counts: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Cross-entropy of each counted keypoint's softmax over its heatmap's cells against its
    target, averaged over the counted keypoints (unlabelled ones and those outside their ROI
    are ignored).

    targets: flat cell indices [B, R, K] (one-hot targets, `heatmap_targets`) or distributions
    over the flat cells [B, R, K, S * S] (`gaussian_targets`); counts [B, R, K]; logits
    [B, R, S, S, K].
    """
    shape = tf.shape(logits)
    flat = tf.reshape(tf.cast(logits, tf.float32), [shape[0], shape[1], -1, logits.shape[-1]])
    flat = tf.transpose(flat, [0, 1, 3, 2])
    targets = tf.convert_to_tensor(targets)
    if targets.dtype.is_integer:
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(targets, flat)
    else:
        targets = tf.stop_gradient(tf.cast(targets, tf.float32))  # fixed, like the cells
        losses = tf.nn.softmax_cross_entropy_with_logits(targets, flat)
    return masked_mean(losses, counts)


def decode_heatmaps(logits: tf.Tensor, boxes: tf.Tensor) -> tf.Tensor:
    """Heatmap logits [..., S, S, K] over boxes [..., 4] -> keypoints [..., K, 3]: (x, y) at the
    probability-weighted mean of the cell centres in the 3x3 neighbourhood of each heatmap's
    best cell, in the boxes' coordinates, and a score in [0, 1]: the softmax probability in
    that neighbourhood, within one cell of the best cell (how sure the head is of it).

    At the heatmap's border the neighbourhood is mirrored (the missing row or column counts as
    its opposite), so along that axis the point stays at the cell's centre: the mass beyond the
    border is cut off, and a one-sided mean would pull a fingertip at the box's edge inward by
    up to a cell. The moments come from depthwise convolutions and a gather, which XLA compiles
    (no crops, no dynamic shapes).
    """
    size, count = logits.shape[-2], logits.shape[-1]
    leading = tf.shape(logits)[:-3]
    probs = tf.nn.softmax(tf.reshape(tf.cast(logits, tf.float32), [-1, size * size, count]), 1)
    best = tf.argmax(probs, axis=1, output_type=tf.int32)  # [N, K]
    maps = tf.reshape(probs, [-1, size, size, count])
    # Per cell and keypoint: the probability within one cell (zero beyond the border), then
    # the mirrored neighbourhood's probability and its sums of probability times the row and
    # the column offset (-1, 0, 1) from the cell.
    nearby = tf.nn.depthwise_conv2d(maps, tf.ones([3, 3, count, 1]), [1, 1, 1, 1], "SAME")
    offsets = tf.constant([-1.0, 0.0, 1.0])
    kernel = tf.stack(
        [tf.ones([3, 3]), tf.tile(offsets[:, None], [1, 3]), tf.tile(offsets[None, :], [3, 1])],
        axis=-1,
    )
    moments = tf.nn.depthwise_conv2d(
        tf.pad(maps, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="REFLECT"),
        tf.tile(kernel[:, :, None, :], [1, 1, count, 1]),
        strides=[1, 1, 1, 1],
        padding="VALID",
    )
    moments = tf.concat([nearby[..., None], tf.reshape(moments, [-1, size, size, count, 3])], -1)
    moments = tf.transpose(tf.reshape(moments, [-1, size * size, count, 4]), [0, 2, 1, 3])
    moments = tf.gather(moments, best[..., None], batch_dims=2)[..., 0, :]  # [N, K, 4]
    moments = tf.reshape(moments, tf.concat([leading, [count, 4]], 0))
    best = tf.reshape(best, tf.concat([leading, [count]], 0))
    mass = moments[..., 1]  # at least the best cell's probability, so > 0
    row = tf.cast(best // size, tf.float32) + 0.5 + moments[..., 2] / mass
    col = tf.cast(best % size, tf.float32) + 0.5 + moments[..., 3] / mass
    boxes = tf.cast(boxes, tf.float32)[..., None, :]
    x = boxes[..., 1] + col / size * (boxes[..., 3] - boxes[..., 1])
    y = boxes[..., 0] + row / size * (boxes[..., 2] - boxes[..., 0])
    return tf.stack([x, y, tf.minimum(moments[..., 0], 1.0)], axis=-1)
