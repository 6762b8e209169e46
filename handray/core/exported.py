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
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from handray.core.errors import HandrayError

MODEL_CARD = "model_card.json"  # optional: {"summary": one line a person reads, ...details}


def first_export(model_dirs: str | Path | Sequence[str | Path]) -> Path:
    """The first of `model_dirs` (one folder or a list, in order of preference) that holds a
    SavedModel: serve_config.yaml lists the demo's export before the reference model the
    repository ships, so a fresh clone serves that one until `make demo` has run."""
    if isinstance(model_dirs, str | Path):
        return export_path(model_dirs)
    if not model_dirs:
        raise HandrayError("model_dir: an empty list; name at least one export folder")
    for model_dir in model_dirs:
        if holds_export(model_dir):
            return export_path(model_dir)
    tried = ", ".join(str(Path(d).expanduser().resolve()) for d in model_dirs)
    raise HandrayError(
        f"model_dir: none of {tried} holds a SavedModel; create one with `handray export "
        "--weights CKPT --out DIR` (`make demo` writes runs/demo/model)"
    )


def read_model_card(model_dir: str | Path) -> dict[str, Any]:
    """The export's model card (what it was trained on and measured), or {} when it has none
    or it cannot be read: the card describes the model, it never stops it from serving."""
    try:
        card = json.loads((Path(model_dir) / MODEL_CARD).read_text())
    except (OSError, ValueError):
        return {}
    return card if isinstance(card, dict) else {}


def holds_export(folder: str | Path) -> bool:
    """Whether `folder` holds a SavedModel, i.e. is an export rather than a checkpoint."""
    return (Path(folder).expanduser() / "saved_model.pb").is_file()


def export_path(model_dir: str | Path) -> Path:
    """The absolute export folder, refused when it holds no SavedModel."""
    path = Path(model_dir).expanduser().resolve()
    if not holds_export(path):
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
        self.about = read_model_card(self.path).get("summary")

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
        return {
            "name": self.name,
            "version": self.version,
            "about": self.about,
            "class_names": list(self.class_names),
        }
