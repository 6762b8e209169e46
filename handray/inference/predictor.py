"""A trained model ready for images: what `handray.load` returns, and what `handray predict`
and evaluation run.

    predictor = handray.load("runs/demo/train")        # or an export, or an old .h5 + preset
    hands = predictor("photo.jpg")                      # Detections
    print(hands.names, hands.scores, hands.boxes)

An image is a file path, a NumPy array [H, W, 3] (uint8 RGB; [H, W] grey and [H, W, 4] RGBA
are converted) or a PIL image; a list of them gives a list of `Detections`. Files and PIL
images are turned upright by their EXIF orientation first, as the HTTP server does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf
from PIL import Image

from handray.core.detections import Detections, image_rows
from handray.core.errors import HandrayError
from handray.core.geometry import resize_and_pad
from handray.core.images import read_image, rgb_pixels
from handray.inference.postprocess import to_original_pixels
from handray.inference.thresholds import Thresholds

if TYPE_CHECKING:
    from handray.model.maskrcnn import MaskRCNN

ImageLike = str | os.PathLike | np.ndarray | Image.Image


class ImagePredictor:
    """What `handray.load` returns: called on an image or a list of them, it gives
    `Detections`, `batch_size` images at a time. Subclasses run one batch."""

    batch_size: int
    thresholds: Thresholds

    def __call__(
        self, images: ImageLike | Sequence[ImageLike], *, min_score: float | None = None
    ) -> Detections | list[Detections]:
        """Detections scoring at least `min_score` (default `thresholds.min_score`) for one
        image, or a list of them for a list of images."""
        single = not isinstance(images, list | tuple)
        arrays = [as_rgb(image) for image in ([images] if single else images)]
        found = []
        for start in range(0, len(arrays), self.batch_size):
            found += self.predict_batch(arrays[start : start + self.batch_size], min_score)
        return found[0] if single else found

    def predict_batch(
        self, images: list[np.ndarray], min_score: float | None = None
    ) -> list[Detections]:
        """Detections of at most `batch_size` RGB arrays."""
        raise NotImplementedError


class Predictor(ImagePredictor):
    """A model with its thresholds. A short last batch is padded with copies of its last image,
    so every call reuses one compiled graph."""

    def __init__(self, model: MaskRCNN, thresholds: Thresholds, batch_size: int = 4):
        self.model, self.thresholds, self.batch_size = model, thresholds, batch_size
        heads, size = model.roi_heads, model.image_size

        @tf.function(reduce_retracing=True, autograph=False)
        def to_original(outputs, windows, scales, sizes, min_score, mask_threshold):
            return to_original_pixels(
                outputs, heads, windows, scales, sizes, size, min_score, mask_threshold
            )

        self._to_original = to_original

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.model.class_names

    def predict_batch(
        self, images: list[np.ndarray], min_score: float | None = None
    ) -> list[Detections]:
        """`detect` on at most `batch_size` RGB arrays, padded to `batch_size`."""
        padding = [images[-1]] * (self.batch_size - len(images))
        return self.detect(images + padding, min_score=min_score)[: len(images)]

    def detect(
        self,
        images: list[np.ndarray],
        *,
        min_score: float | None = None,
        mask_threshold: float | None = None,
    ) -> list[Detections]:
        """Detections per image for uint8 RGB arrays [H, W, 3] of any sizes, in one batch: every
        detection scoring at least `min_score` (default `thresholds.min_score`), a mask pixel
        where its probability reaches `mask_threshold` (default `thresholds.mask`)."""
        if not images:
            return []
        for index, image in enumerate(images):
            shape = getattr(image, "shape", None)
            if shape is None or len(shape) != 3 or shape[2] != 3 or min(shape[:2]) < 1:
                raise ValueError(
                    f"image {index} has shape {shape}; detect takes RGB arrays [H, W, 3] "
                    "(convert grayscale or RGBA images to RGB first)"
                )
        model = self.model
        min_score = tf.constant(
            self.thresholds.min_score if min_score is None else min_score, tf.float32
        )
        mask = self.thresholds.mask if mask_threshold is None else mask_threshold
        prepared = [
            resize_and_pad(tf.convert_to_tensor(i), model.image_size, model.min_dim) for i in images
        ]
        windows = tf.stack([p[1] for p in prepared])
        out = model.predict_padded(tf.stack([p[0] for p in prepared]), windows, min_score)
        batch = self._to_original(
            out,
            windows,
            tf.stack([p[2] for p in prepared]),
            tf.constant([i.shape[:2] for i in images], tf.int32),
            min_score,
            tf.constant(mask, tf.float32),
        )
        batch = {key: value.numpy() for key, value in batch.items()}
        return [
            Detections.from_rows(image_rows(batch, index), self.class_names)
            for index in range(len(images))
        ]


def as_rgb(image: ImageLike) -> np.ndarray:
    """[H, W, 3] uint8 RGB pixels of a path, a PIL image or an array (grey and RGBA arrays
    converted); paths and PIL images upright by their EXIF orientation."""
    if isinstance(image, str | os.PathLike):
        return read_image(Path(image), exif=True)
    if isinstance(image, Image.Image):
        return rgb_pixels(image, exif=True)
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    elif array.ndim == 3 and array.shape[2] == 4:
        array = array[..., :3]
    if array.ndim != 3 or array.shape[2] != 3 or min(array.shape[:2]) < 1:
        raise HandrayError(
            f"an image array of shape {array.shape}; give [H, W, 3] RGB, [H, W] grey or "
            "[H, W, 4] RGBA pixels"
        )
    if array.dtype != np.uint8:
        raise HandrayError(f"an image array of dtype {array.dtype}; give uint8 pixels (0-255)")
    return array
