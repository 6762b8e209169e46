"""The side head: left or right, decided on the hand's pixels turned upright.

The box head sees hands at every rotation through 7x7 pooled features and, in the budget of a
demo, never learns their side (benchmarks/README.md, "Left or right from pixels"); a small CNN
on crops turned so the fingers point up reaches 0.84. This head does that inside the model, in
two steps on each box (squared, with context):

1. *Which way is up*: a small CNN on the axis-aligned crop regresses the direction from the
   wrist to the middle finger's base as a unit vector (trained where both keypoints are
   labelled; the direction is not chiral, so it is learnt at every rotation).
2. *Which side*: the crop turned by that direction goes through a second small CNN whose
   score changes sign when the crop is mirrored (a mirrored left hand is a right hand), so the
   head cannot prefer one side by default. Training turns the crop by the annotated direction
   (with a small random error, as the predicted one will have); inference by the predicted one.

The box head then only says hand or background (`BoxHead` in its hand-or-background mode), and
`refine` labels each detection with its side and scores it p(hand) x p(side). A model with
`model.side_head: false` (the presets that load the old 3-class files) keeps the side in the
box head as before.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import keras
import tensorflow as tf
from keras import layers

from handray.config import ModelConfig
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
from handray.model.roi_align import turned_crops

SIDE_LAYER_PREFIX = "mrcnn_side_"
# The keypoints whose direction defines "up" (RHD order): the wrist and the middle finger's base.
WRIST, MIDDLE_BASE = 0, 12
# Context added around the squared box on each side, as a share of its side.
CROP_CONTEXT = 0.15
# Largest error (radians) mixed into the annotated direction in training.
TRAINING_TURN_ERROR = math.radians(20.0)


class SideHead(RoiHead):
    output = "side_score"
    loss_name = "mrcnn_side_loss"
    layer_prefix = SIDE_LAYER_PREFIX
    optional: ClassVar[dict[str, Any]] = {"model.side_head": False}

    def __init__(self, settings: ModelConfig, norm: Norm):
        super().__init__(settings, norm)
        self.mean_pixel = tf.constant(settings.mean_pixel, tf.float32)

    @staticmethod
    def enabled(settings: ModelConfig) -> bool:
        return settings.side_head

    @property
    def crop_size(self) -> int:
        return self.settings.side_crop_size

    def _build(self, settings: ModelConfig, norm: Norm) -> keras.Model:
        """Two small CNNs on crops of `side_crop_size`: the up direction (axis-aligned crops)
        and the side logit score(crop) - score(mirrored crop) (upright crops, one set of
        layers applied to both). One flat model, so every layer has one name to load by."""
        size = settings.side_crop_size
        crops = keras.Input((size, size, 3), name="input_side_crops")
        upright = keras.Input((size, size, 3), name="input_side_upright_crops")
        direction = _apply(_small_cnn(2, f"{SIDE_LAYER_PREFIX}direction_"), crops)
        score = _small_cnn(1, SIDE_LAYER_PREFIX)
        mirrored = layers.Lambda(lambda x: keras.ops.flip(x, axis=2), name="side_mirror")(upright)
        logit = layers.Subtract(name=f"{SIDE_LAYER_PREFIX}logit")(
            [_apply(score, upright), _apply(score, mirrored)]
        )
        self.direction_network = keras.Model(crops, direction, name="side_direction")
        self.side_network = keras.Model(upright, logit, name="side_logit")
        return keras.Model([crops, upright], [direction, logit], name="mrcnn_side_head")

    def run(
        self,
        pyramid: list[tf.Tensor],
        boxes: tf.Tensor,
        image_size: int,
        training: bool,
        images: tf.Tensor | None = None,
    ) -> tf.Tensor:
        """Boxes [B, D, 4] -> [B, D, 3]: the predicted up direction (sin, cos of the turn) and
        the side logit (first hand class against the second) of the crop turned by it."""
        if images is None:
            raise ValueError("the side head reads the images' pixels: pass images=")
        direction = self._direction(images, boxes, image_size)
        angle = _angle(direction) if self.settings.side_upright else tf.zeros(_leading(boxes))
        logit = self._side_logit(images, boxes, image_size, angle)
        return tf.concat([direction, logit[..., None]], axis=-1)

    def loss(self, ground_truth: GroundTruth, sample: RoiSample, outputs: tf.Tensor) -> tf.Tensor:
        """Direction loss (1 - cosine to the annotated direction, where it is known) plus the
        side's binary cross-entropy on crops turned by the annotated direction."""
        truth, known = self._annotated_direction(ground_truth, sample)
        predicted = tf.math.l2_normalize(outputs[..., :2], axis=-1)
        cosine = tf.reduce_sum(predicted * truth, axis=-1)
        direction_loss = masked_mean(1.0 - cosine, sample.positive & known)
        logit = self._training_logit(ground_truth, sample, outputs, truth, known)
        first = tf.cast(tf.equal(sample.class_ids, 1), tf.float32)
        side_loss = masked_mean(
            tf.nn.sigmoid_cross_entropy_with_logits(labels=first, logits=logit), sample.positive
        )
        return direction_loss + side_loss

    def _training_logit(
        self,
        ground_truth: GroundTruth,
        sample: RoiSample,
        outputs: tf.Tensor,
        truth: tf.Tensor,
        known: tf.Tensor,
    ) -> tf.Tensor:
        """Side logits [B, P] of the sampled ROIs turned by the annotated direction `truth`
        (with a random error), or by the predicted one where it is not `known`."""
        error = tf.random.uniform(tf.shape(known), -TRAINING_TURN_ERROR, TRAINING_TURN_ERROR)
        angle = tf.where(known, _angle(truth) + error, tf.stop_gradient(_angle(outputs[..., :2])))
        if not self.settings.side_upright:
            angle = tf.zeros_like(angle)
        images = ground_truth.batch["image"]
        return self._side_logit(images, sample.rois, ground_truth.image_size, angle)

    def diagnostics(
        self, ground_truth: GroundTruth, sample: RoiSample, outputs: tf.Tensor
    ) -> dict[str, tf.Tensor]:
        """The side accuracy of the positive ROIs on crops turned by the predicted direction
        (as at inference), in place of the box head's, which no longer decides the side."""
        first = outputs[..., 2] >= 0.0
        right = tf.equal(first, tf.equal(sample.class_ids, 1))
        return {"handedness_accuracy": masked_mean(tf.cast(right, tf.float32), sample.positive)}

    def decode(self, outputs: tf.Tensor, detections: dict[str, tf.Tensor]) -> tf.Tensor:
        """The probability of the side each detection is given (at least 0.5)."""
        first = tf.sigmoid(outputs[..., 2])
        return tf.maximum(first, 1.0 - first)

    def refine(self, detections: dict[str, tf.Tensor], outputs: tf.Tensor) -> dict:
        """Each detection labelled with its more probable side and scored p(hand) x p(side),
        rows re-ranked best first (the box head scored them p(hand))."""
        first = tf.sigmoid(outputs[..., 2])
        class_ids = tf.where(first >= 0.5, 1, 2)
        scores = detections["scores"] * tf.maximum(first, 1.0 - first)
        valid = detections["valid"]
        refined = {
            **detections,
            "class_ids": tf.where(valid, class_ids, 0),
            "scores": tf.where(valid, scores, 0.0),
        }
        order = tf.argsort(tf.where(valid, scores, -1.0), axis=1, direction="DESCENDING")
        return {name: tf.gather(values, order, batch_dims=1) for name, values in refined.items()}

    def to_original(self, values: tf.Tensor, frame: PixelFrame) -> tf.Tensor:
        return frame.zero_dropped(values)

    # ----- crops ---------------------------------------------------------------------------

    def _crops(self, images, boxes, image_size: int, angle: tf.Tensor) -> tf.Tensor:
        """Squared boxes with context, turned by `angle` [B, D], as [B*D, size, size, 3]."""
        pixels = tf.cast(boxes, tf.float32) * float(image_size)
        centres = tf.stack(
            [(pixels[..., 0] + pixels[..., 2]) / 2, (pixels[..., 1] + pixels[..., 3]) / 2], -1
        )
        sides = tf.maximum(pixels[..., 2] - pixels[..., 0], pixels[..., 3] - pixels[..., 1])
        sides = sides * (1.0 + 2.0 * CROP_CONTEXT)
        pixels = head_pixels(images, self.mean_pixel)
        crops = turned_crops(pixels, centres, sides, angle, self.crop_size)
        return tf.reshape(crops, [-1, self.crop_size, self.crop_size, 3])

    def _direction(self, images, boxes, image_size: int) -> tf.Tensor:
        crops = self._crops(images, boxes, image_size, tf.zeros(tf.shape(boxes)[:2]))
        direction = self.direction_network(crops)
        return per_box(direction, boxes)

    def _side_logit(self, images, boxes, image_size: int, angle: tf.Tensor) -> tf.Tensor:
        crops = self._crops(images, boxes, image_size, angle)
        logit = self.side_network(crops)
        return per_box(logit, boxes)[..., 0]

    def _annotated_direction(
        self, ground_truth: GroundTruth, sample: RoiSample
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """Unit (sin, cos) of each sampled ROI's hand's up direction [B, P, 2], and whether
        its wrist and middle finger base are both labelled and apart [B, P]."""
        keypoints = ground_truth.batch.get("gt_keypoints")
        if keypoints is None:
            return tf.zeros([*_leading(sample.rois), 2]), tf.zeros(_leading(sample.rois), bool)
        points = sample.matched(tf.cast(keypoints, tf.float32))  # [B, P, K, 3]
        wrist, base = points[..., WRIST, :], points[..., MIDDLE_BASE, :]
        # Up is wrist -> base: dx = sin(a), -dy = cos(a) (image y grows downwards).
        vector = tf.stack([base[..., 0] - wrist[..., 0], wrist[..., 1] - base[..., 1]], -1)
        length = tf.norm(vector, axis=-1)
        known = (wrist[..., 2] > 0) & (base[..., 2] > 0) & (length > 1e-3)
        return vector / tf.maximum(length, 1e-3)[..., None], known


def _small_cnn(outputs: int, prefix: str) -> list[layers.Layer]:
    """Three conv-ReLU-pool stages and two dense layers; no batch statistics, so the same
    call serves training and validation."""
    stack: list[layers.Layer] = []
    for index, filters in enumerate((16, 32, 64), start=1):
        stack += [
            layers.Conv2D(
                filters, 3, padding="same", activation="relu", name=f"{prefix}conv{index}"
            ),
            layers.MaxPooling2D(name=f"{prefix}pool{index}"),
        ]
    return [
        *stack,
        layers.Flatten(name=f"{prefix}flatten"),  # keeps where on the crop a cue lies
        layers.Dense(64, activation="relu", name=f"{prefix}fc"),
        layers.Dense(outputs, name=f"{prefix}out"),
    ]


def _apply(stack: list[layers.Layer], x: tf.Tensor) -> tf.Tensor:
    for layer in stack:
        x = layer(x)
    return x


def _angle(direction: tf.Tensor) -> tf.Tensor:
    """The turn (radians) of a (sin, cos) direction [..., 2]."""
    return tf.atan2(direction[..., 0], direction[..., 1])


def _leading(boxes: tf.Tensor) -> list:
    return [tf.shape(boxes)[0], tf.shape(boxes)[1]]
