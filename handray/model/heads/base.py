"""What every ROI head shares: the ROIs it trains on, the ground truth it reads, the frame that
maps its output back to an image's pixels, and the interface the model loops over.

A head is one module (`mask.py`, `keypoint.py`, ...): its layers, its training targets, its
loss, its decoding and its mapping to original pixels. The model builds the heads its config
asks for (`handray.model.heads.build_roi_heads`) and runs each on the same boxes: the positive
ROIs in training, the detections at inference. What a head returns travels under its `output`
key through post-processing, the export, the `Detections` of `handray.core.detections` and
the JSON replies without any of them knowing the head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import keras
import tensorflow as tf

from handray.config import ModelConfig
from handray.model.norm import Norm
from handray.model.roi_align import pyramid_roi_align

# Pixels that heads read themselves (the side head's crops, the keypoint head's pixel branch)
# are mean-subtracted and divided by this, so they start near unit scale.
PIXEL_SCALE = 64.0


def head_pixels(images: tf.Tensor, mean_pixel: tf.Tensor) -> tf.Tensor:
    """Padded input images [B, S, S, 3] as the pixel-reading heads see them."""
    return (tf.cast(images, tf.float32) - mean_pixel) / PIXEL_SCALE


def per_box(rows: tf.Tensor, boxes: tf.Tensor) -> tf.Tensor:
    """A network's output with one row per box [B * D, ...] as float32 [B, D, ...]."""
    rows = tf.cast(rows, tf.float32)
    return tf.reshape(rows, [tf.shape(boxes)[0], tf.shape(boxes)[1], *rows.shape[1:]])


@dataclass(frozen=True)
class GroundTruth:
    """One training batch's hands: boxes [B, M, 4] normalised to the padded square, class ids
    and crowd flags [B, M], and the pipeline's batch for what a head reads itself (`gt_masks`,
    box-relative when `mini_masks`; `gt_keypoints` in pixels)."""

    boxes: tf.Tensor
    class_ids: tf.Tensor
    crowd: tf.Tensor
    batch: dict[str, tf.Tensor]
    image_size: int
    mini_masks: bool


@dataclass(frozen=True)
class RoiSample:
    """The ROIs a head trains on: the first positive slots of the sampled ROIs [B, P, 4], the
    ground-truth hand each one matched [B, P], its class [B, P] and whether the slot is filled."""

    rois: tf.Tensor
    gt_index: tf.Tensor
    class_ids: tf.Tensor
    positive: tf.Tensor

    def matched(self, values: tf.Tensor) -> tf.Tensor:
        """Per-hand values [B, M, ...] gathered for each ROI's hand [B, P, ...]."""
        return tf.gather(values, self.gt_index, batch_dims=1)


@dataclass(frozen=True)
class PixelFrame:
    """How padded-square detections map to each original image (from `resize_and_pad`):
    windows [B, 4] and scales [B, 2], original sizes [B, 2] (height, width), the square's side,
    which rows are kept [B, N], the kept boxes in original pixels [B, N, 4] and the mask cut."""

    windows: tf.Tensor
    scales: tf.Tensor
    sizes: tf.Tensor
    image_size: int
    keep: tf.Tensor
    boxes: tf.Tensor
    mask_threshold: tf.Tensor

    def zero_dropped(self, values: tf.Tensor) -> tf.Tensor:
        """`values` [B, N, ...] with the rows that are not kept set to zero."""
        keep = tf.cast(self.keep, values.dtype)
        for _ in range(len(values.shape) - 2):
            keep = keep[..., None]
        return values * keep


class RoiHead:
    """A head on each detection's ROI. Subclasses set the class attributes and `_build`."""

    output: ClassVar[str]  # its key in detections, exports and replies
    loss_name: ClassVar[str]  # its entry in `config.LOSS_NAMES`
    layer_prefix: ClassVar[str]  # every layer it builds is named so
    optional: ClassVar[dict[str, Any]] = {}  # config values that build the model without it

    def __init__(self, settings: ModelConfig, norm: Norm):
        self.settings = settings
        self.network: keras.Model = self._build(settings, norm)

    @staticmethod
    def enabled(settings: ModelConfig) -> bool:
        """Whether a model with `settings` has this head."""
        return True

    @property
    def pool_size(self) -> int:
        raise NotImplementedError

    def _build(self, settings: ModelConfig, norm: Norm) -> keras.Model:
        raise NotImplementedError

    def run(
        self,
        pyramid: list[tf.Tensor],
        boxes: tf.Tensor,
        image_size: int,
        training: bool,
        images: tf.Tensor | None = None,
    ) -> tf.Tensor:
        """The network on ROI-aligned features of boxes [B, D, 4] -> float32 [B, D, ...].
        `images` (the padded input pixels) are there for a head that reads pixels."""
        pooled = self.pooled_features(pyramid, boxes, image_size)
        return per_box(self.network(pooled, training=training), boxes)

    def pooled_features(
        self, pyramid: list[tf.Tensor], boxes: tf.Tensor, image_size: int
    ) -> tf.Tensor:
        """ROI-aligned features of boxes [B, D, 4], one row per box: [B * D, pool, pool, C]."""
        pooled = pyramid_roi_align(pyramid[:4], boxes, self.pool_size, image_size)
        return tf.reshape(pooled, [-1, *pooled.shape[2:]])

    def loss(self, ground_truth: GroundTruth, sample: RoiSample, outputs: tf.Tensor) -> tf.Tensor:
        """The head's loss on the sampled ROIs (a scalar, 0 where nothing qualifies)."""
        raise NotImplementedError

    def decode(self, outputs: tf.Tensor, detections: dict[str, tf.Tensor]) -> tf.Tensor:
        """Outputs on detections [B, D, ...] -> the head's result, normalised to the square."""
        raise NotImplementedError

    def diagnostics(
        self, ground_truth: GroundTruth, sample: RoiSample, outputs: tf.Tensor
    ) -> dict[str, tf.Tensor]:
        """Per-stage training numbers of this head (scalars), beside the model's own."""
        return {}

    def refine(self, detections: dict[str, tf.Tensor], outputs: tf.Tensor) -> dict:
        """The detections once this head has run on them: unchanged for most heads; a head
        that decides the class (the side head) relabels, rescores and reorders them."""
        return detections

    def to_original(self, values: tf.Tensor, frame: PixelFrame) -> tf.Tensor:
        """The decoded result [B, N, ...] in each original image's pixels, zero where dropped."""
        raise NotImplementedError
