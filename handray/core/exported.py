"""Reading a SavedModel that `handray export` wrote: the contract between the export (written
by `handray.inference.export`) and what runs it without the model's code, the HTTP server's
replicas and `handray.load` of an export folder.

`ExportedModel.run` sends encoded images (PNG, JPEG, BMP, ...) through the graph's
`serving_thresholds` signature and returns the padded batch of `handray.core.detections`.
TensorFlow is imported when an export is loaded, not before, so the server's ingress never
loads it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from handray.core.errors import HandrayError


def export_path(model_dir: str | Path) -> Path:
    """The absolute export folder, refused when it holds no SavedModel."""
    path = Path(model_dir).expanduser().resolve()
    if not (path / "saved_model.pb").is_file():
        raise HandrayError(
            f"model_dir {path}: no SavedModel there; create one with `handray export "
            "--weights CKPT --out DIR` (`make demo` writes runs/demo/model) and point "
            "serve_config.yaml's model_dir at it"
        )
    return path


def bmp_bytes(pixels: np.ndarray) -> bytes:
    """Pixels as an uncompressed BMP: lossless, and nearly free to encode and decode, so the
    export's in-graph decoder sees exactly the pixels that were checked before."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="BMP")
    return buffer.getvalue()


class ExportedModel:
    """A loaded export: its name, version, classes (without background) and default
    thresholds, and `run` for a batch of encoded images."""

    def __init__(self, model_dir: str | Path):
        import tensorflow as tf

        self._tf = tf
        self.path = export_path(model_dir)
        self._loaded = tf.saved_model.load(str(self.path))
        if "metadata" not in self._loaded.signatures:
            raise HandrayError(
                f"model_dir {self.path}: a SavedModel, but not one `handray export` wrote"
            )
        meta = {k: v.numpy() for k, v in self._loaded.signatures["metadata"]().items()}
        self.name = meta["name"].decode()
        self.version = meta["version"].decode()
        names = [name.decode() for name in meta["class_names"]]
        # Exports before the Detections contract listed the background first.
        self.class_names = tuple(names[1:] if names[:1] == ["BG"] else names)
        self.min_score = float(meta["min_score"])
        self.mask_threshold = float(meta["mask_threshold"])

    def run(
        self, images: Sequence[bytes], min_score: float, mask_threshold: float
    ) -> dict[str, np.ndarray]:
        """The padded detections of a batch of encoded images, as NumPy arrays."""
        tf = self._tf
        out = self._loaded.signatures["serving_thresholds"](
            images=tf.constant(list(images)),
            min_score=tf.constant(min_score, tf.float32),
            mask_threshold=tf.constant(mask_threshold, tf.float32),
        )
        return {key: value.numpy() for key, value in out.items()}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "class_names": list(self.class_names)}
