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
  as the old export returned them (and each further head's output).
- `metadata()`: class names (without background: class id k is `class_names[k - 1]`), the
  config YAML, model name and version, default thresholds (`handray.inference.thresholds`:
  `serve.min_score` and `serve.mask_threshold`).

Every ROI head of the model adds its output under its name (`keypoints [B, N, K, 3]`, ...).

Pixels are decoded as stored: EXIF orientation is not applied (the HTTP server applies it first).
The network runs with the threshold it is given and `handray.inference.postprocess` maps its
outputs back to the original pixels, as the predictor does: one model, one post-processing path.
`handray.core.exported` reads what this writes, and the optional model card beside it
(`write_model_card`: what the model was trained on and measured).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from handray.config import Config, dump_config, save_config
from handray.core.atomic import atomic_directory, atomic_write
from handray.core.detections import image_rows
from handray.core.errors import HandrayError
from handray.core.exported import MODEL_CARD
from handray.core.geometry import resize_and_pad
from handray.inference.postprocess import to_original_pixels
from handray.inference.thresholds import Thresholds
from handray.model import MaskRCNN

CONFIG_COPY = "handray.yaml"  # the config beside saved_model.pb, for people to read
_IMAGES = tf.TensorSpec([None], tf.string, name="images")
_SCALAR = tf.TensorSpec([], tf.float32)


class DetectionExport(tf.Module):
    """The exported object: the model's variables plus the serving functions that use them."""

    def __init__(self, model: MaskRCNN, config: Config, name: str, version: str):
        super().__init__(name="handray_export")
        self._model = model
        # Every variable the functions read must be reachable from the saved object.
        self.model_variables = list(model.variables)
        self._config = config
        thresholds = Thresholds.from_config(config)
        self._info = {
            "class_names": tf.constant(list(model.class_names)),
            "config": tf.constant(dump_config(config)),
            "name": tf.constant(name),
            "version": tf.constant(version),
            "image_size": tf.constant(model.image_size),
            "min_score": tf.constant(thresholds.min_score),
            "mask_threshold": tf.constant(thresholds.mask),
        }
        self.serving_default = tf.function(self._serve, autograph=False)
        self.predict_image = tf.function(self._predict_image, autograph=False)
        self.metadata = tf.function(lambda: dict(self._info), input_signature=[], autograph=False)

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
        size = self._model.image_size
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
        out = self._model.predict_padded(padded, windows, min_score)
        result = to_original_pixels(
            out, self._model.roi_heads, windows, scales, sizes, size, min_score, mask_threshold
        )
        return {**result, "masks": tf.cast(result["masks"], tf.uint8)}

    def _predict_image(self, image, min_score=None) -> dict[str, tf.Tensor]:
        rows = image_rows(self._serve(image[None], min_score), 0)
        return {"rois": rows.pop("boxes"), **rows}

    def _prepare(self, encoded: tf.Tensor):
        """Bytes -> the padded square, its window and scale, and the original [height, width]."""
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
        padded, window, scale = resize_and_pad(image, self._model.image_size, self._model.min_dim)
        return padded, window, scale, tf.shape(image)[:2]


def export_model(
    model: MaskRCNN,
    config: Config,
    out: str | os.PathLike,
    *,
    name: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the SavedModel of a trained `model` (built from `config`) to folder `out`
    (atomically); returns `out`.

    The graph takes the score threshold as an input, so one export serves any threshold;
    `serve.min_score` and `serve.mask_threshold` become the defaults.
    """
    out = check_target(out, overwrite)
    module = DetectionExport(model, config, name or f"handray-{config.preset}", _version(model))
    signatures = module.signatures()
    with atomic_directory(out, overwrite=True) as staging, _quiet_tensorflow():
        tf.saved_model.save(module, str(staging), signatures=signatures)
        save_config(config, staging / CONFIG_COPY)
    return out


def write_model_card(model_dir: str | os.PathLike, summary: str, details: dict[str, Any]) -> Path:
    """Write the export's model card: `summary`, the line the server prints and the page
    shows, and `details` (data, recipe, measured numbers) for people to read."""
    path = Path(model_dir) / MODEL_CARD
    with atomic_write(path) as handle:
        json.dump({"summary": summary, **details}, handle, indent=1, default=float)
        handle.write("\n")
    return path


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
