"""Mask R-CNN: backbone + FPN, RPN, proposals, ROI heads and detection in one Keras 3 model.

The forward pass reads top to bottom in `_inference` and `train_step_losses`; the operations
live in their own modules. Inputs are padded squares (see `handray.geometry`); `detect` does
the padding for a list of any-sized images and maps the results back to their pixels with
`handray.postprocess`, as the export does.

The model knows its architecture (`ModelConfig`, the input size) and nothing else of the
configuration: `build_model(config)` is the one place that reads the whole tree. Loss weights,
weight decay and clipping belong to the training step (`handray.train.step`); score and mask
thresholds are arguments of `detect` and `predict_padded`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import keras
import numpy as np
import tensorflow as tf

from handray.config import LAYER_SELECTIONS, LOSS_NAMES, MASK_THRESHOLD, Config, ModelConfig
from handray.geometry import resize_and_pad
from handray.model import diagnostics, losses
from handray.model.anchors import generate_anchors
from handray.model.backbone import build_backbone
from handray.model.detection import refine_detections
from handray.model.fpn import build_fpn
from handray.model.heads import build_box_head, build_keypoint_head, build_mask_head
from handray.model.keypoints import decode_heatmaps
from handray.model.norm import Norm
from handray.model.proposals import generate_proposals
from handray.model.roi_align import pyramid_roi_align
from handray.model.rpn import build_rpn_model, run_rpn
from handray.model.targets import detection_targets, real_and_crowd, rpn_targets
from handray.postprocess import to_original_pixels
from handray.unpad import image_detections


class MaskRCNN(keras.Model):
    """Hand Mask R-CNN. Use `build_model(config)`; `detect` for predictions, `train_step_losses`
    inside a GradientTape for training."""

    def __init__(
        self,
        settings: ModelConfig,
        image_size: int,
        *,
        min_dim: int = 0,
        train_bn: bool = False,
        bn_momentum: float = 0.99,
        jit_compile: bool | str = "auto",
        **kwargs,
    ):
        """`settings`: the architecture; `image_size`: the padded square's side, with `min_dim`
        the short side small images are upscaled to (`data.min_dim`); `train_bn` and
        `bn_momentum`: whether batch norm learns, and how fast its statistics move."""
        super().__init__(name="mask_rcnn", **kwargs)
        self._settings = model = settings
        self.image_size, self.min_dim = image_size, min_dim
        size = image_size
        norm = Norm(model.norm, train_bn, bn_momentum, model.norm_groups)
        image = keras.Input((size, size, 3), name="input_image")
        pyramid = build_fpn(build_backbone(image, model.backbone, norm), model.fpn_channels)
        self.features = keras.Model(image, pyramid, name="resnet_fpn")
        self.rpn = build_rpn_model(
            len(model.rpn_anchor_ratios) * len(model.rpn_anchor_octaves),
            model.fpn_channels,
            model.rpn_channels,
            model.rpn_anchor_stride,
        )
        self.box_head = build_box_head(
            model.pool_size, model.fpn_channels, model.fc_layers_size, model.num_classes, norm
        )
        self.mask_head = build_mask_head(
            model.mask_pool_size,
            model.fpn_channels,
            model.mask_head_channels,
            model.num_classes,
            norm,
        )
        # The keypoint branch, when the hands have keypoints (none: no head, no cost).
        self.keypoint_head = (
            build_keypoint_head(
                model.keypoint_pool_size,
                model.fpn_channels,
                model.keypoint_head_convs,
                model.keypoint_head_channels,
                model.num_keypoints,
            )
            if model.num_keypoints
            else None
        )
        self.anchors = tf.constant(
            generate_anchors(
                size,
                model.rpn_anchor_scales,
                model.rpn_anchor_ratios,
                model.backbone_strides,
                model.rpn_anchor_stride,
                model.rpn_anchor_octaves,
            )
        )
        self._mean_pixel = tf.constant(model.mean_pixel, tf.float32)
        self._rpn_std = tf.constant(model.rpn_bbox_std_dev, tf.float32)
        self._bbox_std = tf.constant(model.bbox_std_dev, tf.float32)
        self.predict_padded = self._compile_predict(jit_compile)
        self._to_original = tf.function(to_original_pixels, reduce_retracing=True)
        self.built = True

    @property
    def class_names(self) -> tuple[str, ...]:
        """The hand classes, without background (class id 1 is the first)."""
        return self._settings.class_names

    @property
    def backbone_name(self) -> str:
        """`resnet50`, `resnet101` or `tiny`: which ImageNet weights fit the backbone."""
        return self._settings.backbone

    @property
    def default_min_score(self) -> float:
        """The score `detect` keeps from when it is given none (`detection_min_confidence`)."""
        return self._settings.detection_min_confidence

    # ----- the forward passes -------------------------------------------------------------

    def call(self, inputs: dict, training: bool = False) -> dict:
        min_score = inputs.get("min_score", self.default_min_score)
        return self._inference(inputs["image"], inputs["window"], min_score)

    def _compile_predict(self, jit_compile: bool | str):
        """The predict step: one XLA call (True), plain graphs (False), or "auto": one XLA call
        on a GPU; on a CPU the convolution-heavy backbone and RPN as a plain graph (TensorFlow's
        oneDNN convolutions outrun XLA's there) and everything after them XLA-compiled (NMS,
        ROI Align gathers and heads are faster compiled). See benchmarks/README.md."""
        if jit_compile == "auto" and tf.config.list_physical_devices("GPU"):
            jit_compile = True
        if jit_compile != "auto":
            return tf.function(self._inference, jit_compile=bool(jit_compile))
        features = tf.function(self._rpn_stage)
        heads = tf.function(self._head_stage, jit_compile=True)
        return lambda images, windows, min_score: heads(*features(images), windows, min_score)

    def _inference(self, images: tf.Tensor, windows: tf.Tensor, min_score) -> dict[str, tf.Tensor]:
        """Padded images [B, S, S, 3], windows [B, 4] (pixels) and the lowest score to keep
        (a scalar) -> fixed-size detections.

        Boxes come back normalised to the square; masks are [B, D, h, w] probabilities of each
        detection's class, relative to its box.
        """
        return self._head_stage(*self._rpn_stage(images), windows, min_score)

    def _rpn_stage(self, images: tf.Tensor):
        """Feature pyramid and RPN outputs (the convolutional bulk of inference)."""
        pyramid = self._pyramid(images, training=False)
        _, rpn_probs, rpn_deltas = run_rpn(self.rpn, pyramid)
        return pyramid, rpn_probs, rpn_deltas

    def _head_stage(
        self, pyramid, rpn_probs, rpn_deltas, windows, min_score
    ) -> dict[str, tf.Tensor]:
        """Proposals, box head, detection refinement and mask head."""
        model = self._settings
        windows = self._normalise(windows)
        rois, roi_valid = self._proposals(
            rpn_probs, rpn_deltas, windows, model.post_nms_rois_inference
        )
        _, class_probs, deltas = self._classify(pyramid, rois, training=False)
        detections = refine_detections(
            rois,
            roi_valid,
            class_probs,
            deltas,
            windows,
            std_dev=self._bbox_std,
            min_confidence=min_score,
            nms_threshold=model.detection_nms_threshold,
            max_instances=model.detection_max_instances,
            per_class=model.detection_per_class,
        )
        masks = self._segment(pyramid, detections["boxes"], training=False)
        masks = tf.gather(
            tf.transpose(masks, [0, 1, 4, 2, 3]), detections["class_ids"], batch_dims=2
        )
        keypoints = self._keypoints(pyramid, detections["boxes"], training=False)
        if keypoints is not None:
            keypoints = decode_heatmaps(keypoints, detections["boxes"])
        else:
            keypoints = tf.zeros([*tf.unstack(tf.shape(detections["boxes"])[:2]), 0, 3])
        return {**detections, "masks": masks, "keypoints": keypoints}

    def train_step_losses(
        self, batch: dict[str, tf.Tensor], *, mini_masks: bool, training: bool = True
    ) -> dict[str, tf.Tensor]:
        """The five losses of one training batch (from `handray.data.pipeline`, whose masks are
        box-relative when `mini_masks`), and the per-stage diagnostics of
        `handray.model.diagnostics`. Weighting and summing them is the training step's.

        `training=False` gives validation losses: batch norm uses its moving statistics.
        """
        model = self._settings
        windows = self._normalise(batch["window"])
        gt_boxes = self._normalise(batch["gt_boxes"])
        gt_class_ids, gt_crowd = batch["gt_class_ids"], batch["gt_crowd"]
        pyramid = self._pyramid(batch["image"], training=training)
        rpn_logits, rpn_probs, rpn_deltas = run_rpn(self.rpn, pyramid, training=training)
        anchor_labels, anchor_deltas, anchors_per_hand = rpn_targets(
            self.anchors,
            gt_boxes,
            gt_class_ids,
            gt_crowd,
            model.rpn_train_anchors_per_image,
            self._rpn_std,
            positive_iou=model.rpn_positive_iou,
            negative_iou=model.rpn_negative_iou,
        )
        proposals, proposal_valid = self._proposals(
            tf.stop_gradient(rpn_probs),
            tf.stop_gradient(rpn_deltas),
            windows,
            model.post_nms_rois_training,
        )
        targets = detection_targets(
            proposals,
            proposal_valid,
            gt_boxes,
            gt_class_ids,
            gt_crowd,
            batch["gt_masks"],
            rois_per_image=model.train_rois_per_image,
            positive_ratio=model.roi_positive_ratio,
            std_dev=self._bbox_std,
            mask_shape=model.mask_shape,
            mini_mask=mini_masks,
            positive_jitter=model.roi_positive_jitter,
            hard_negative_fraction=model.roi_hard_negative_fraction,
            mask_rois=model.mask_rois_per_image,
            gt_keypoints=self._normalised_keypoints(batch),
            heatmap_size=4 * model.keypoint_pool_size,
        )
        class_logits, _, deltas = self._classify(pyramid, targets.rois, training=training)
        slots = targets.mask_slots
        masks = self._segment(pyramid, targets.rois[:, :slots], training=training)
        heatmaps = self._keypoints(pyramid, targets.rois[:, :slots], training=training)
        head_losses = (
            losses.rpn_class_loss(anchor_labels, rpn_logits),
            losses.rpn_bbox_loss(anchor_labels, anchor_deltas, rpn_deltas),
            losses.head_class_loss(targets.class_ids, targets.valid, class_logits),
            losses.head_bbox_loss(targets.class_ids, targets.positive, targets.deltas, deltas),
            losses.head_mask_loss(
                targets.class_ids[:, :slots], targets.positive[:, :slots], targets.masks, masks
            ),
            tf.constant(0.0)
            if heatmaps is None
            else losses.keypoint_loss(targets.keypoints, targets.keypoint_counts, heatmaps),
        )
        values = dict(zip(LOSS_NAMES, head_losses, strict=True))
        real, _ = real_and_crowd(gt_class_ids, gt_crowd)
        values.update(
            diagnostics.training_diagnostics(
                anchors_per_hand, real, gt_boxes, proposals, proposal_valid, targets, class_logits
            )
        )
        return values

    def _normalise(self, pixels: tf.Tensor) -> tf.Tensor:
        return tf.cast(pixels, tf.float32) / float(self.image_size)

    def _normalised_keypoints(self, batch: dict[str, tf.Tensor]) -> tf.Tensor | None:
        """The batch's keypoints [B, M, K, 3] with x, y normalised like the boxes (v kept), or
        None when the model has no keypoint head."""
        if self.keypoint_head is None:
            return None
        keypoints = tf.cast(batch["gt_keypoints"], tf.float32)
        return tf.concat([self._normalise(keypoints[..., :2]), keypoints[..., 2:]], axis=-1)

    def _pyramid(self, images: tf.Tensor, training: bool) -> list[tf.Tensor]:
        """FPN levels P2..P6, float32 even when mixed precision computes them in float16."""
        pyramid = self.features(tf.cast(images, tf.float32) - self._mean_pixel, training=training)
        return [tf.cast(level, tf.float32) for level in pyramid]

    def _proposals(self, rpn_probs, rpn_deltas, windows, count: int):
        model = self._settings
        return generate_proposals(
            rpn_probs[..., 1],
            rpn_deltas,
            self.anchors,
            windows,
            pre_nms_limit=model.pre_nms_limit,
            count=count,
            nms_threshold=model.rpn_nms_threshold,
            std_dev=self._rpn_std,
        )

    def _classify(self, pyramid: list, rois: tf.Tensor, training: bool):
        """Box head on ROIs [B, R, 4]: logits [B, R, K], probabilities, deltas [B, R, K, 4]."""
        model = self._settings
        pooled = pyramid_roi_align(pyramid[:4], rois, model.pool_size, self.image_size)
        flat = tf.reshape(pooled, [-1, *pooled.shape[2:]])
        logits, probs, deltas = (
            tf.cast(t, tf.float32) for t in self.box_head(flat, training=training)
        )
        batch, count = tf.shape(rois)[0], tf.shape(rois)[1]
        classes = model.num_classes
        return (
            tf.reshape(logits, [batch, count, classes]),
            tf.reshape(probs, [batch, count, classes]),
            tf.reshape(deltas, [batch, count, classes, 4]),
        )

    def _keypoints(self, pyramid: list, boxes: tf.Tensor, training: bool) -> tf.Tensor | None:
        """Keypoint head on boxes [B, D, 4]: heatmap logits [B, D, S, S, K], or None without
        the head."""
        if self.keypoint_head is None:
            return None
        pooled = pyramid_roi_align(
            pyramid[:4], boxes, self._settings.keypoint_pool_size, self.image_size
        )
        heatmaps = self.keypoint_head(
            tf.reshape(pooled, [-1, *pooled.shape[2:]]), training=training
        )
        heatmaps = tf.cast(heatmaps, tf.float32)
        return tf.reshape(heatmaps, [tf.shape(boxes)[0], tf.shape(boxes)[1], *heatmaps.shape[1:]])

    def _segment(self, pyramid: list, boxes: tf.Tensor, training: bool) -> tf.Tensor:
        """Mask head on boxes [B, D, 4]: per-class mask probabilities [B, D, h, w, K]."""
        pooled = pyramid_roi_align(
            pyramid[:4], boxes, self._settings.mask_pool_size, self.image_size
        )
        masks = self.mask_head(tf.reshape(pooled, [-1, *pooled.shape[2:]]), training=training)
        masks = tf.cast(masks, tf.float32)
        return tf.reshape(masks, [tf.shape(boxes)[0], tf.shape(boxes)[1], *masks.shape[1:]])

    # ----- predictions on ordinary images -------------------------------------------------

    def detect(
        self,
        images: list[np.ndarray],
        *,
        min_score: float | None = None,
        mask_threshold: float = MASK_THRESHOLD,
    ) -> list[dict[str, np.ndarray]]:
        """Detections per image for uint8 RGB arrays of any sizes.

        Each result has `rois` [N, 4] (y1, x1, y2, x2 in the image's pixels), `class_ids` [N],
        `scores` [N], `masks` [N, H, W] bool and `keypoints` [N, K, 3] (x, y in the image's
        pixels, score; K = 0 without a keypoint head), best first: every detection scoring at least
        `min_score` (default `default_min_score`), a mask pixel where its probability reaches
        `mask_threshold`.
        """
        if not images:
            return []
        for index, image in enumerate(images):
            shape = getattr(image, "shape", None)
            if shape is None or len(shape) != 3 or shape[2] != 3 or min(shape[:2]) < 1:
                raise ValueError(
                    f"image {index} has shape {shape}; detect takes RGB arrays [H, W, 3] "
                    "(convert grayscale or RGBA images to RGB first)"
                )
        min_score = tf.constant(
            self.default_min_score if min_score is None else min_score, tf.float32
        )
        prepared = [
            resize_and_pad(tf.convert_to_tensor(i), self.image_size, self.min_dim) for i in images
        ]
        windows = tf.stack([p[1] for p in prepared])
        out = self.predict_padded(tf.stack([p[0] for p in prepared]), windows, min_score)
        batch = self._to_original(
            out,
            windows,
            tf.stack([p[2] for p in prepared]),
            tf.constant([i.shape[:2] for i in images], tf.int32),
            self.image_size,
            min_score,
            tf.constant(mask_threshold, tf.float32),
        )
        batch = {key: value.numpy() for key, value in batch.items()}
        return [image_detections(batch, index) for index in range(len(images))]

    # ----- layers -------------------------------------------------------------------------

    def leaf_layers(self) -> Iterator[keras.layers.Layer]:
        """Every layer that is not itself a model, through the nested sub-models."""

        def walk(layer):
            if isinstance(layer, keras.Model):
                for inner in layer.layers:
                    yield from walk(inner)
            else:
                yield layer

        for sub_model in self._sub_models():
            yield from walk(sub_model)

    def _sub_models(self) -> tuple[keras.Model, ...]:
        heads = (self.box_head, self.mask_head, self.keypoint_head)
        return (self.features, self.rpn, *(head for head in heads if head is not None))

    def get_layer(self, name: str | None = None, index: int | None = None):
        """Find a layer by name anywhere in the model, nested sub-models included."""
        if name is not None:
            for layer in (*self.leaf_layers(), *self._sub_models()):
                if layer.name == name:
                    return layer
        return super().get_layer(name=name, index=index)

    def set_trainable(self, selection: str) -> list[str]:
        """Train only the layers a stage name (`heads`, `3+`, `4+`, `5+`, `all`) or a regular
        expression selects; returns the names of the weighted layers left trainable."""
        pattern = re.compile(LAYER_SELECTIONS.get(selection, selection))
        trainable = []
        for layer in self.leaf_layers():
            if layer.weights:
                layer.trainable = bool(pattern.fullmatch(layer.name))
                if layer.trainable:
                    trainable.append(layer.name)
        return trainable


def build_model(config: Config, jit_compile: bool | str = "auto") -> MaskRCNN:
    """A Mask R-CNN for `config` with random weights and `train.layers` selected for training:
    the one place that reads the whole configuration tree for the model.

    `jit_compile` chooses how the predict step compiles (see `MaskRCNN._compile_predict`).
    """
    model = MaskRCNN(
        config.model,
        config.data.image_size,
        min_dim=config.data.min_dim,
        train_bn=config.train.train_bn,
        bn_momentum=config.train.bn_momentum,
        jit_compile=jit_compile,
    )
    model.set_trainable(config.train.layers)
    return model
