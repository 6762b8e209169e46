"""Mask R-CNN: backbone + FPN, RPN, proposals, the box head and the ROI heads in one Keras 3
model.

The forward pass reads top to bottom in `_inference` and `train_step_losses`; the operations
live in their own modules, and each ROI head (mask, keypoints, ...) in its own module of
`handray.model.heads`, which the model loops over. Inputs are padded squares (see
`handray.core.geometry`); `handray.inference` pads any-sized images, runs `predict_padded` and
maps the results back to their pixels.

The model knows its architecture (`ModelConfig`, the input size) and nothing else of the
configuration: `build_model(config)` is the one place that reads the whole tree. Loss weights,
weight decay and clipping belong to the training step (`handray.train.step`); the score
threshold is an argument of `predict_padded`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import keras
import tensorflow as tf

from handray.config import LAYER_SELECTIONS, LOSS_NAMES, Config, ModelConfig
from handray.model.anchors import generate_anchors
from handray.model.backbone import build_backbone
from handray.model.diagnostics import training_diagnostics
from handray.model.fpn import build_fpn
from handray.model.heads import BoxHead, GroundTruth, RoiHead, RoiSample, build_roi_heads
from handray.model.losses import rpn_bbox_loss, rpn_class_loss
from handray.model.norm import Norm
from handray.model.proposals import generate_proposals
from handray.model.rpn import build_rpn_model, run_rpn
from handray.model.targets import detection_targets, real_and_crowd, rpn_targets


class MaskRCNN(keras.Model):
    """Hand Mask R-CNN. Use `build_model(config)`; `handray.inference` for predictions on
    images, `train_step_losses` inside a GradientTape for training."""

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
        self.box_head = BoxHead(model, norm)
        # The heads on each detection (mask, keypoints, ...), in registration order.
        self.roi_heads: list[RoiHead] = build_roi_heads(model, norm)
        # Keras tracks the variables of layers it sees as attributes: the heads' networks.
        self.head_networks = [self.box_head.network, *(h.network for h in self.roi_heads)]
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
        self.predict_padded = self._compile_predict(jit_compile)
        self.built = True

    @property
    def class_names(self) -> tuple[str, ...]:
        """The hand classes, without background (class id 1 is the first)."""
        return self._settings.class_names

    @property
    def backbone_name(self) -> str:
        """`resnet50`, `resnet101` or `tiny`: which ImageNet weights fit the backbone."""
        return self._settings.backbone

    def roi_head(self, output: str) -> RoiHead | None:
        """The ROI head whose output is named `output` (`masks`, `keypoints`), if the model has
        one."""
        return next((head for head in self.roi_heads if head.output == output), None)

    # ----- the forward passes -------------------------------------------------------------

    def call(self, inputs: dict, training: bool = False) -> dict:
        return self._inference(inputs["image"], inputs["window"], inputs.get("min_score", 0.0))

    def _compile_predict(self, jit_compile: bool | str):
        """The predict step: one XLA call (True), plain graphs (False), or "auto": one XLA call
        on a GPU; on a CPU the convolution-heavy backbone and RPN as a plain graph (TensorFlow's
        oneDNN convolutions outrun XLA's there) and everything after them XLA-compiled (NMS,
        ROI Align gathers and heads are faster compiled). See benchmarks/README.md."""
        if jit_compile == "auto" and tf.config.list_physical_devices("GPU"):
            jit_compile = True
        if jit_compile != "auto":
            return tf.function(self._inference, jit_compile=bool(jit_compile), autograph=False)
        features = tf.function(self._rpn_stage, autograph=False)
        heads = tf.function(self._head_stage, jit_compile=True, autograph=False)
        return lambda images, windows, min_score: heads(
            *features(images), images, windows, min_score
        )

    def _inference(self, images: tf.Tensor, windows: tf.Tensor, min_score) -> dict[str, tf.Tensor]:
        """Padded images [B, S, S, 3], windows [B, 4] (pixels) and the lowest score to keep
        (a scalar) -> fixed-size detections: boxes [B, D, 4] normalised to the square,
        class_ids, scores and valid [B, D], and each ROI head's decoded result under its
        `output` key (masks [B, D, h, w]: probabilities of each detection's class, relative to
        its box; keypoints [B, D, K, 3]).
        """
        return self._head_stage(*self._rpn_stage(images), images, windows, min_score)

    def _rpn_stage(self, images: tf.Tensor):
        """Feature pyramid and RPN outputs (the convolutional bulk of inference)."""
        pyramid = self._pyramid(images, training=False)
        _, rpn_probs, rpn_deltas = run_rpn(self.rpn, pyramid)
        return pyramid, rpn_probs, rpn_deltas

    def _head_stage(
        self, pyramid, rpn_probs, rpn_deltas, images, windows, min_score
    ) -> dict[str, tf.Tensor]:
        """Proposals, the box head's detections, and every ROI head on them, in order (a
        head may relabel and reorder the detections the next ones see)."""
        windows = self._normalise(windows)
        rois, roi_valid = self._proposals(
            rpn_probs, rpn_deltas, windows, self._settings.post_nms_rois_inference
        )
        detections = self.box_head.detect(
            pyramid, rois, roi_valid, windows, self.image_size, min_score
        )
        for head in self.roi_heads:
            outputs = head.run(
                pyramid, detections["boxes"], self.image_size, training=False, images=images
            )
            detections[head.output] = head.decode(outputs, detections)
            detections = head.refine(detections, outputs)
        return detections

    def train_step_losses(
        self, batch: dict[str, tf.Tensor], *, mini_masks: bool, training: bool = True
    ) -> dict[str, tf.Tensor]:
        """The losses of one training batch (from `handray.data.pipeline`, whose masks are
        box-relative when `mini_masks`): every name of `LOSS_NAMES` (0 for a head the model
        lacks) and each ROI head's `loss_name`, and the per-stage diagnostics of
        `handray.model.diagnostics`. Weighting and summing them is the training step's.

        `training=False` gives validation losses: batch norm uses its moving statistics.
        """
        model = self._settings
        windows = self._normalise(batch["window"])
        truth = GroundTruth(
            boxes=self._normalise(batch["gt_boxes"]),
            class_ids=batch["gt_class_ids"],
            crowd=batch["gt_crowd"],
            batch=batch,
            image_size=self.image_size,
            mini_masks=mini_masks,
        )
        pyramid = self._pyramid(batch["image"], training=training)
        rpn_logits, rpn_probs, rpn_deltas = run_rpn(self.rpn, pyramid, training=training)
        anchor_labels, anchor_deltas, anchors_per_hand = rpn_targets(
            self.anchors,
            truth.boxes,
            truth.class_ids,
            truth.crowd,
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
            truth.boxes,
            truth.class_ids,
            truth.crowd,
            rois_per_image=model.train_rois_per_image,
            positive_ratio=model.roi_positive_ratio,
            positive_jitter=model.roi_positive_jitter,
            hard_negative_fraction=model.roi_hard_negative_fraction,
            mask_rois=model.mask_rois_per_image,
        )
        class_logits, _, deltas = self.box_head.classify(
            pyramid, targets.rois, self.image_size, training=training
        )
        class_loss, box_loss = self.box_head.losses(
            targets.rois,
            targets.valid,
            targets.positive,
            targets.class_ids,
            tf.gather(truth.boxes, targets.gt_index, batch_dims=1),
            class_logits,
            deltas,
        )
        values = {
            "rpn_class_loss": rpn_class_loss(anchor_labels, rpn_logits),
            "rpn_bbox_loss": rpn_bbox_loss(anchor_labels, anchor_deltas, rpn_deltas),
            "mrcnn_class_loss": class_loss,
            "mrcnn_bbox_loss": box_loss,
        }
        slots = targets.mask_slots
        sample = RoiSample(
            rois=targets.rois[:, :slots],
            gt_index=targets.gt_index[:, :slots],
            class_ids=targets.class_ids[:, :slots],
            positive=targets.positive[:, :slots],
        )
        diagnostics = {}
        for head in self.roi_heads:
            outputs = head.run(
                pyramid, sample.rois, self.image_size, training=training, images=batch["image"]
            )
            values[head.loss_name] = head.loss(truth, sample, outputs)
            diagnostics.update(head.diagnostics(truth, sample, outputs))
        values = {**{name: tf.constant(0.0) for name in LOSS_NAMES}, **values}
        real, _ = real_and_crowd(truth.class_ids, truth.crowd)
        values.update(
            training_diagnostics(
                anchors_per_hand,
                real,
                truth.boxes,
                proposals,
                proposal_valid,
                targets,
                self.box_head.scored_logits(class_logits),
                self.box_head.scored_classes(targets.class_ids),
            )
        )
        values.update(diagnostics)  # a head's own numbers replace the box head's
        return values

    def _normalise(self, pixels: tf.Tensor) -> tf.Tensor:
        return tf.cast(pixels, tf.float32) / float(self.image_size)

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
        return (self.features, self.rpn, *self.head_networks)

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
