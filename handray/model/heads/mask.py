"""The mask head (matterport's layer names): a per-class mask over each detection's box.

Training target: the ROI's view of its hand's mask, sampled at `mask_shape` pixel centres; loss:
per-pixel binary cross-entropy for the ROI's class. At inference the mask of the detection's
class is pasted onto the original image: a pixel belongs to the hand where the bilinearly
sampled probability at its centre reaches the mask threshold.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

from handray.config import ModelConfig
from handray.core.geometry import pixel_centre_boxes
from handray.model.heads.base import GroundTruth, PixelFrame, RoiHead, RoiSample
from handray.model.losses import masked_mean
from handray.model.norm import Norm
from handray.model.roi_align import crop_and_resize


class MaskHead(RoiHead):
    output = "masks"
    loss_name = "mrcnn_mask_loss"
    layer_prefix = "mrcnn_mask"

    @property
    def pool_size(self) -> int:
        return self.settings.mask_pool_size

    def _build(self, settings: ModelConfig, norm: Norm) -> keras.Model:
        return build_mask_head(
            settings.mask_pool_size,
            settings.fpn_channels,
            settings.mask_head_channels,
            settings.num_classes,
            norm,
        )

    def loss(self, ground_truth: GroundTruth, sample: RoiSample, outputs: tf.Tensor) -> tf.Tensor:
        targets = mask_targets(
            sample,
            ground_truth.boxes,
            ground_truth.batch["gt_masks"],
            tuple(self.settings.mask_shape),
            ground_truth.mini_masks,
        )
        return mask_loss(sample.class_ids, sample.positive, targets, outputs)

    def decode(self, outputs: tf.Tensor, detections: dict[str, tf.Tensor]) -> tf.Tensor:
        """Per-class probabilities [B, D, h, w, K] -> each detection's class [B, D, h, w]."""
        return tf.gather(
            tf.transpose(outputs, [0, 1, 4, 2, 3]), detections["class_ids"], batch_dims=2
        )

    def to_original(self, values: tf.Tensor, frame: PixelFrame) -> tf.Tensor:
        """Box-relative probabilities -> boolean masks [B, N, Hmax, Wmax] on each image's
        pixels (False past its own height and width)."""
        sizes = frame.sizes
        height, width = tf.reduce_max(sizes[:, 0]), tf.reduce_max(sizes[:, 1])
        masks = paste_masks(values, frame.boxes, height, width, frame.mask_threshold)
        inside_rows = tf.range(height)[None, :] < sizes[:, :1]
        inside_cols = tf.range(width)[None, :] < sizes[:, 1:]
        inside = inside_rows[:, None, :, None] & inside_cols[:, None, None, :]
        return masks & inside & frame.keep[..., None, None]


def build_mask_head(
    pool_size: int, channels_in: int, width: int, num_classes: int, norm: Norm
) -> keras.Model:
    """ROI features -> per-class mask probabilities [N, 2*pool, 2*pool, K]."""
    pooled = keras.Input((pool_size, pool_size, channels_in), name="input_mask_features")
    x = pooled
    for index in range(1, 5):
        x = layers.Conv2D(width, 3, padding="same", name=f"mrcnn_mask_conv{index}")(x)
        x = norm(x, f"mrcnn_mask_bn{index}")
        x = layers.Activation("relu")(x)
    x = layers.Conv2DTranspose(width, 2, strides=2, activation="relu", name="mrcnn_mask_deconv")(x)
    masks = layers.Conv2D(num_classes, 1, activation="sigmoid", name="mrcnn_mask")(x)
    return keras.Model(pooled, masks, name="mrcnn_mask_head")


def mask_targets(
    sample: RoiSample,
    gt_boxes: tf.Tensor,
    gt_masks: tf.Tensor,
    mask_shape: tuple[int, int],
    mini_mask: bool,
) -> tf.Tensor:
    """Each sampled ROI's view of its hand's mask [B, P, h, w], 0/1 float (0 for empty slots).

    A mini-mask covers its ground-truth box, a full mask the whole padded image; either way the
    ROI is expressed in the mask's own pixel grid before sampling.
    """
    rois = sample.rois
    batch, slots = tf.shape(rois)[0], tf.shape(rois)[1]
    mask_h, mask_w = gt_masks.shape[2], gt_masks.shape[3]
    frame = sample.matched(gt_boxes) if mini_mask else tf.constant([0.0, 0.0, 1.0, 1.0])
    boxes = pixel_centre_boxes(rois, frame, (mask_h, mask_w), mask_shape)
    slots_per_image = tf.shape(gt_masks)[1]
    flat_masks = tf.reshape(tf.cast(gt_masks, tf.float32), [-1, mask_h, mask_w, 1])
    box_indices = tf.range(batch)[:, None] * slots_per_image + sample.gt_index
    crops = crop_and_resize(
        flat_masks, tf.reshape(boxes, [-1, 4]), tf.reshape(box_indices, [-1]), mask_shape
    )
    masks = tf.round(tf.reshape(crops, [batch, slots, *mask_shape]))
    return tf.where(sample.positive[:, :, None, None], masks, 0.0)


def mask_loss(
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
    threshold: float | tf.Tensor,
) -> tf.Tensor:
    """Box-relative mask probabilities [B, D, h, w] -> boolean masks [B, D, height, width].

    boxes [B, D, 4] are in the target image's pixels (y1, x1, y2, x2, ends exclusive). A pixel
    belongs to the mask when the bilinearly sampled probability at its centre is >= threshold;
    two small interpolation matrices per detection make pasting a batch a pair of matrix
    products rather than a loop over boxes.
    """
    rows = _interpolation(boxes[..., 0], boxes[..., 2], height, masks.shape[2])
    cols = _interpolation(boxes[..., 1], boxes[..., 3], width, masks.shape[3])
    sampled = tf.einsum("bdhi,bdij->bdhj", rows, tf.cast(masks, tf.float32))
    sampled = tf.einsum("bdhj,bdwj->bdhw", sampled, cols)
    return sampled >= threshold
