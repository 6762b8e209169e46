"""A TensorFlow SavedModel that turns encoded images into detections with nothing but TensorFlow.

The old system shipped a TF-1 graph with its pre- and post-processing inside, so any language with
a TensorFlow binding could call it. This export does the same: decoding, resizing into the padded
square, the network, mapping boxes back to the original pixels, score filtering and mask pasting
are all in the graph. Signatures:

- `serving_default(images)`: a batch of PNG/JPEG/GIF/BMP bytes `tf.string [B]` ->
  `num_detections [B]`, `boxes [B, N, 4]` (y1, x1, y2, x2 in original pixels), `class_ids`,
  `scores`, `masks [B, N, Hmax, Wmax]` uint8 0/1 and `image_sizes [B, 2]` (height, width); N is
  the batch's largest detection count, rows past an image's count are zero.
- `serving_thresholds(images, min_score, mask_threshold)`: the same with both thresholds given.
  Signatures cannot have optional inputs, so the restored function `serving_default` takes them as
  optional arguments instead: `loaded.serving_default(images, min_score=0.3)`.
- `predict_image(image)`: one image's unpadded `rois`, `class_ids`, `scores`, `masks [N, H, W]`,
  as the old export returned them.
- `metadata()`: class names, the config YAML, model name and version, default thresholds.

Pixels are decoded as stored: EXIF orientation is not applied (the HTTP server applies it first).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from handray.atomic import atomic_directory
from handray.config import Config, dump_config, save_config
from handray.data.resize import boxes_to_original, resize_and_pad
from handray.errors import HandrayError
from handray.model import build_model
from handray.model.detection import paste_masks

CONFIG_COPY = "handray.yaml"  # the config beside saved_model.pb, for people to read
_IMAGES = tf.TensorSpec([None], tf.string, name="images")
_SCALAR = tf.TensorSpec([], tf.float32)


class DetectionExport(tf.Module):
    """The exported object: the model's variables plus the serving functions that use them."""

    def __init__(self, model, config: Config, name: str, version: str):
        super().__init__(name="handray_export")
        self._model = model
        # Every variable the functions read must be reachable from the saved object.
        self.model_variables = list(model.variables)
        self._config = config
        self._info = {
            "class_names": tf.constant(["BG", *config.model.class_names]),
            "config": tf.constant(dump_config(config)),
            "name": tf.constant(name),
            "version": tf.constant(version),
            "image_size": tf.constant(config.data.image_size),
            "min_score": tf.constant(config.model.detection_min_confidence),
            "mask_threshold": tf.constant(config.serve.mask_threshold),
        }
        self.serving_default = tf.function(self._serve)
        self.predict_image = tf.function(self._predict_image)
        self.metadata = tf.function(lambda: dict(self._info), input_signature=[])

    def signatures(self) -> dict[str, Any]:
        """Trace every signature (and the restored function's optional-argument forms)."""
        for args in ((), (_SCALAR,), (_SCALAR, _SCALAR)):
            self.serving_default.get_concrete_function(_IMAGES, *args)
        self.predict_image.get_concrete_function(tf.TensorSpec([], tf.string, name="image"))
        self.predict_image.get_concrete_function(tf.TensorSpec([], tf.string), _SCALAR)
        return {
            "serving_default": self.serving_default.get_concrete_function(_IMAGES),
            "serving_thresholds": self.serving_default.get_concrete_function(
                _IMAGES,
                tf.TensorSpec([], tf.float32, name="min_score"),
                tf.TensorSpec([], tf.float32, name="mask_threshold"),
            ),
            "predict_image": self.predict_image.get_concrete_function(
                tf.TensorSpec([], tf.string, name="image")
            ),
            "metadata": self.metadata.get_concrete_function(),
        }

    def _serve(self, images, min_score=None, mask_threshold=None) -> dict[str, tf.Tensor]:
        if min_score is None:
            min_score = self._info["min_score"]
        if mask_threshold is None:
            mask_threshold = self._info["mask_threshold"]
        size = self._config.data.image_size
        padded, windows, scales, sizes = tf.map_fn(
            self._prepare,
            images,
            fn_output_signature=(
                tf.TensorSpec([size, size, 3], tf.float32),
                tf.TensorSpec([4], tf.int32),
                tf.TensorSpec([2], tf.float32),
                tf.TensorSpec([2], tf.int32),
            ),
        )
        out = self._model.predict_padded(padded, windows)
        # Detections come best first, so those at or above `min_score` are a prefix of each row.
        keep = out["valid"] & (out["scores"] >= min_score)
        counts = tf.reduce_sum(tf.cast(keep, tf.int32), axis=1)
        top = tf.reduce_max(tf.concat([counts, [0]], axis=0))
        keep = keep[:, :top]
        boxes = boxes_to_original(
            out["boxes"][:, :top] * float(size), windows[:, None, :], scales[:, None, :]
        )
        limits = tf.cast(tf.tile(sizes, [1, 2]), tf.float32)[:, None, :]
        boxes = tf.clip_by_value(boxes, 0.0, limits) * tf.cast(keep, tf.float32)[..., None]
        height, width = tf.reduce_max(sizes[:, 0]), tf.reduce_max(sizes[:, 1])
        masks = paste_masks(out["masks"][:, :top], boxes, height, width, mask_threshold)
        inside_rows = tf.range(height)[None, :] < sizes[:, :1]
        inside_cols = tf.range(width)[None, :] < sizes[:, 1:]
        inside = inside_rows[:, None, :, None] & inside_cols[:, None, None, :]
        masks = masks & inside & keep[..., None, None]
        return {
            "num_detections": counts,
            "boxes": boxes,
            "class_ids": tf.where(keep, out["class_ids"][:, :top], 0),
            "scores": tf.where(keep, out["scores"][:, :top], 0.0),
            "masks": tf.cast(masks, tf.uint8),
            "image_sizes": sizes,
        }

    def _predict_image(self, image, min_score=None) -> dict[str, tf.Tensor]:
        out = self._serve(image[None], min_score)
        count = out["num_detections"][0]
        return {
            "rois": out["boxes"][0, :count],
            "class_ids": out["class_ids"][0, :count],
            "scores": out["scores"][0, :count],
            "masks": out["masks"][0, :count],
        }

    def _prepare(self, encoded: tf.Tensor):
        """Bytes -> the padded square, its window and scale, and the original [height, width]."""
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
        data = self._config.data
        padded, window, scale = resize_and_pad(image, data.image_size, data.min_dim)
        return padded, window, scale, tf.shape(image)[:2]


def export_model(
    model,
    config: Config,
    out: str | os.PathLike,
    *,
    name: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the SavedModel of a trained `model` to folder `out` (atomically); returns `out`.

    The graph keeps every detection above score 0 and filters by the `min_score` it is given, so
    one export serves any threshold; `model.detection_min_confidence` becomes the default.
    """
    out = check_target(out, overwrite)
    # A model of its own, built to keep every detection: the graph filters by `min_score`.
    permissive = replace(config, model=replace(config.model, detection_min_confidence=0.0))
    serving = build_model(permissive)
    serving.set_weights(model.get_weights())
    module = DetectionExport(serving, config, name or f"handray-{config.preset}", _version(model))
    signatures = module.signatures()
    with atomic_directory(out, overwrite=True) as staging, _quiet_tensorflow():
        tf.saved_model.save(module, str(staging), signatures=signatures)
        save_config(config, staging / CONFIG_COPY)
    return out


@contextlib.contextmanager
def _quiet_tensorflow() -> Iterator[None]:
    """Saving logs a long warning per function about the numeric names TensorFlow gives the
    captured variables; they are renamed correctly and nothing needs doing."""
    logger = logging.getLogger("absl")  # tf.saved_model.save logs through absl
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def check_target(out: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse an export folder that would replace files without `overwrite` (before the slow
    model loading, so a typo fails at once)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise HandrayError(f"--out {out} is a file; give a folder for the SavedModel")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise HandrayError(f"--out {out} already holds files; add --overwrite to replace them")
    return out


def _version(model) -> str:
    """A short digest of the weights plus the export date: the same weights, the same digest."""
    digest = hashlib.sha256()
    for variable in model.weights:
        digest.update(np.ascontiguousarray(variable.numpy()).tobytes())
    return f"{time.strftime('%Y%m%d')}-{digest.hexdigest()[:12]}"
