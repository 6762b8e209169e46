"""The box head (matterport's layer names): is a ROI a hand, of which class, and where exactly.

Every model has it: it classifies the sampled ROIs in training and turns proposals into
detections at inference, which the other heads (`ROI_HEADS`) then run on. Training targets:
each ROI's class (0 for background) and, for positives, the deltas from the ROI to its hand's
box; losses: cross-entropy over the sampled ROIs and smooth-L1 on the positives' deltas for
their class. Decoding: refined boxes, per-class NMS, at most `detection_max_instances`.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

from handray.config import ModelConfig
from handray.core.geometry import boxes_to_original
from handray.model.boxes import batched_nms, clip_boxes, decode_boxes, encode_boxes
from handray.model.losses import masked_mean, smooth_l1
from handray.model.norm import Norm
from handray.model.roi_align import pyramid_roi_align


class BoxHead:
    """The classifier and box regressor on ROI features, and what follows from them."""

    def __init__(self, settings: ModelConfig, norm: Norm):
        self.settings = settings
        # With a side head the box head only says hand or background: its classifier keeps
        # one output per class (the old files' shapes), scored as background against the
        # sum of the hand classes, and regresses every hand's box with the first class's deltas.
        self.hand_only = settings.side_head
        self.std_dev = tf.constant(settings.bbox_std_dev, tf.float32)
        self.network = build_box_head(
            settings.pool_size,
            settings.fpn_channels,
            settings.fc_layers_size,
            settings.num_classes,
            norm,
        )

    def classify(
        self, pyramid: list[tf.Tensor], rois: tf.Tensor, image_size: int, training: bool
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """ROIs [B, R, 4] -> logits [B, R, K], probabilities, deltas [B, R, K, 4]."""
        pooled = pyramid_roi_align(pyramid[:4], rois, self.settings.pool_size, image_size)
        flat = tf.reshape(pooled, [-1, *pooled.shape[2:]])
        logits, probs, deltas = (
            tf.cast(t, tf.float32) for t in self.network(flat, training=training)
        )
        batch, count = tf.shape(rois)[0], tf.shape(rois)[1]
        classes = self.settings.num_classes
        return (
            tf.reshape(logits, [batch, count, classes]),
            tf.reshape(probs, [batch, count, classes]),
            tf.reshape(deltas, [batch, count, classes, 4]),
        )

    def losses(
        self,
        rois: tf.Tensor,
        valid: tf.Tensor,
        positive: tf.Tensor,
        class_ids: tf.Tensor,
        matched_boxes: tf.Tensor,
        logits: tf.Tensor,
        deltas: tf.Tensor,
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """Class and box losses of sampled ROIs [B, T, 4] (`valid` filled, `positive` hands of
        `class_ids`, each matched to its hand's box [B, T, 4])."""
        targets = tf.where(
            positive[..., None], encode_boxes(rois, matched_boxes, self.std_dev), 0.0
        )
        scored = self.scored_classes(class_ids)
        return (
            class_loss(scored, valid, self.scored_logits(logits)),
            box_loss(scored, positive, targets, deltas),
        )

    def scored_logits(self, logits: tf.Tensor) -> tf.Tensor:
        """Class logits [..., K] as the head is trained on them: all K classes, or background
        against any hand ([..., 2], the hand classes' log-sum-exp) in hand-only mode."""
        if not self.hand_only:
            return logits
        hand = tf.reduce_logsumexp(logits[..., 1:], axis=-1)
        return tf.stack([logits[..., 0], hand], axis=-1)

    def scored_classes(self, class_ids: tf.Tensor) -> tf.Tensor:
        """Class ids in the terms of `scored_logits`: 1 for every hand in hand-only mode."""
        return tf.minimum(class_ids, 1) if self.hand_only else class_ids

    def detect(
        self,
        pyramid: list[tf.Tensor],
        rois: tf.Tensor,
        roi_valid: tf.Tensor,
        windows: tf.Tensor,
        image_size: int,
        min_score: float | tf.Tensor,
    ) -> dict[str, tf.Tensor]:
        """Proposals [B, R, 4] -> detections (see `refine_detections`), normalised."""
        settings = self.settings
        _, probs, deltas = self.classify(pyramid, rois, image_size, training=False)
        per_class = settings.detection_per_class
        if self.hand_only:  # one detection per ROI, scored p(hand); the side head labels it
            probs = tf.stack([probs[..., 0], 1.0 - probs[..., 0]], axis=-1)
            deltas, per_class = deltas[:, :, :2], False
        return refine_detections(
            rois,
            roi_valid,
            probs,
            deltas,
            windows,
            std_dev=self.std_dev,
            min_confidence=min_score,
            nms_threshold=settings.detection_nms_threshold,
            max_instances=settings.detection_max_instances,
            per_class=per_class,
        )

    @staticmethod
    def to_original(
        boxes: tf.Tensor, keep: tf.Tensor, windows, scales, sizes, image_size: int
    ) -> tf.Tensor:
        """Boxes [B, N, 4] normalised to the square -> (y1, x1, y2, x2) in original pixels,
        clipped to the image, zero where not kept."""
        boxes = boxes_to_original(
            boxes * float(image_size), windows[:, None, :], scales[:, None, :]
        )
        limits = tf.cast(tf.tile(sizes, [1, 2]), tf.float32)[:, None, :]
        return tf.clip_by_value(boxes, 0.0, limits) * tf.cast(keep, tf.float32)[..., None]


def build_box_head(
    pool_size: int, channels_in: int, fc_size: int, num_classes: int, norm: Norm
) -> keras.Model:
    """ROI features -> (class logits [N, K], class probabilities [N, K], deltas [N, K, 4])."""
    pooled = keras.Input((pool_size, pool_size, channels_in), name="input_roi_features")
    # Two 1024-wide "fully connected" layers, the first as a pool_size x pool_size convolution.
    x = layers.Conv2D(fc_size, pool_size, padding="valid", name="mrcnn_class_conv1")(pooled)
    x = norm(x, "mrcnn_class_bn1")
    x = layers.Activation("relu")(x)
    x = layers.Conv2D(fc_size, 1, name="mrcnn_class_conv2")(x)
    x = norm(x, "mrcnn_class_bn2")
    x = layers.Activation("relu")(x)
    shared = layers.Flatten(name="pool_squeeze")(x)
    logits = layers.Dense(num_classes, name="mrcnn_class_logits")(shared)
    probs = layers.Softmax(name="mrcnn_class")(logits)
    deltas = layers.Dense(num_classes * 4, name="mrcnn_bbox_fc")(shared)
    deltas = layers.Reshape((num_classes, 4), name="mrcnn_bbox")(deltas)
    return keras.Model(pooled, [logits, probs, deltas], name="mrcnn_box_head")


def class_loss(class_ids: tf.Tensor, valid: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """ROI classification cross-entropy over sampled ROIs (negatives are class 0)."""
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(class_ids, tf.cast(logits, tf.float32))
    return masked_mean(losses, valid)


def box_loss(
    class_ids: tf.Tensor, positive: tf.Tensor, target_deltas: tf.Tensor, deltas: tf.Tensor
) -> tf.Tensor:
    """Smooth-L1 between positive ROIs' targets and the deltas predicted for their class."""
    chosen = tf.gather(tf.cast(deltas, tf.float32), class_ids, batch_dims=2)
    losses = smooth_l1(target_deltas - chosen)
    mask = tf.broadcast_to(tf.expand_dims(positive, -1), tf.shape(losses))
    return masked_mean(losses, mask)


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
    image, best first, with fixed shapes (XLA).

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
