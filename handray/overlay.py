"""Detections drawn over their image: what a person looks at after `evaluate` or `predict`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from handray.atomic import atomic_write
from handray.visualize import draw_instances


def draw_detection(
    image: np.ndarray, detection: dict[str, np.ndarray], class_names: Sequence[str]
) -> Image.Image:
    """One image's `detect` output (masks, boxes, class name and score) over the image."""
    labels = [class_names[int(k) - 1] for k in detection["class_ids"]]
    scores = detection["scores"].tolist()
    return draw_instances(image, detection["rois"], detection["masks"], labels, scores)


def save_png(picture: Image.Image, path: str | os.PathLike) -> Path:
    """Write a picture as PNG under a temporary name, renamed when complete."""
    path = Path(path)
    with atomic_write(path, "wb") as handle:
        picture.save(handle, format="PNG")
    return path
