"""Pictures a person looks at: instances or detections drawn over images, montages, PNG files."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from handray.atomic import atomic_write


def instance_colour(index: int) -> tuple[int, int, int]:
    """A bright colour per instance index, well apart from its neighbours (golden-ratio hues)."""
    hue = (index * 0.618034) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_instances(
    image: np.ndarray,
    boxes: np.ndarray,
    masks: np.ndarray,
    labels: Sequence[str],
    scores: Sequence[float] | None = None,
    alpha: float = 0.45,
) -> Image.Image:
    """Overlay masks [N, H, W], boxes [N, 4] (y1, x1, y2, x2) and captions on an RGB image."""
    canvas = np.asarray(image, np.float32).copy()
    for index, mask in enumerate(np.asarray(masks, bool)):
        colour = np.array(instance_colour(index), np.float32)
        canvas[mask] = canvas[mask] * (1 - alpha) + colour * alpha
    picture = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for index, (y1, x1, y2, x2) in enumerate(np.asarray(boxes, np.float32).reshape(-1, 4)):
        colour = instance_colour(index)
        # Boxes thinner than a pixel (clipped at the border) still get a one-pixel outline.
        draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=colour)
        caption = labels[index] if scores is None else f"{labels[index]} {scores[index]:.2f}"
        draw.text((x1 + 2, max(y1 - 11, 0)), caption, fill=colour)
    return picture


def draw_detection(
    image: np.ndarray, detection: dict[str, np.ndarray], class_names: Sequence[str]
) -> Image.Image:
    """One image's `detect` output (masks, boxes, class name and score) over the image."""
    labels = [class_names[int(k) - 1] for k in detection["class_ids"]]
    scores = detection["scores"].tolist()
    return draw_instances(image, detection["rois"], detection["masks"], labels, scores)


def save_png(picture: Image.Image, path: str | Path) -> Path:
    """Write a picture as PNG under a temporary name, renamed when complete."""
    path = Path(path)
    with atomic_write(path, "wb") as handle:
        picture.save(handle, format="PNG")
    return path


def save_montage(pictures: Sequence[Image.Image], path: str | Path, columns: int = 4) -> Path:
    """Tile pictures into one PNG (cells sized to the largest picture), written atomically."""
    if not pictures:
        raise ValueError("no pictures to put in a montage")
    cell_w = max(p.width for p in pictures)
    cell_h = max(p.height for p in pictures)
    columns = min(columns, len(pictures))
    rows = -(-len(pictures) // columns)
    sheet = Image.new("RGB", (columns * cell_w, rows * cell_h), (32, 32, 32))
    for index, picture in enumerate(pictures):
        sheet.paste(picture, ((index % columns) * cell_w, (index // columns) * cell_h))
    return save_png(sheet, path)
