"""Pictures a person looks at: instances or detections drawn over images, montages, PNG files."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from handray.core.atomic import atomic_write
from handray.core.detections import Detections
from handray.core.hand_keypoints import BONE_FINGERS, KEYPOINT_NAMES, SKELETON

# One colour per finger, so a skeleton shows which finger is which; the wrist is white.
FINGER_COLOURS: dict[str, tuple[int, int, int]] = {
    "thumb": (255, 60, 60),
    "index": (255, 200, 0),
    "middle": (60, 220, 60),
    "ring": (0, 170, 255),
    "little": (210, 80, 255),
}
WRIST_COLOUR = (255, 255, 255)
KEYPOINT_RADIUS = 2
BONE_WIDTH = 2


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
    keypoints: np.ndarray | None = None,
) -> Image.Image:
    """Overlay masks [N, H, W], boxes [N, 4] (y1, x1, y2, x2) and captions on an RGB image;
    with hand keypoints [N, 21, 3] (x, y, and a visibility or score), each hand's skeleton too.
    A keypoint whose third value is 0 (unlabelled, or no confidence) is left out."""
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
    for points in _hand_keypoints(keypoints):
        _draw_skeleton(draw, points)
    return picture


def _draw_skeleton(draw: ImageDraw.ImageDraw, points: np.ndarray) -> None:
    """One hand's 20 bones and 21 points, each finger in its colour; points [21, 3] (x, y, and a
    visibility or score, 0 leaving the point and its bones out)."""
    shown = points[:, 2] > 0
    ends = [(a - 1, b - 1) for a, b in SKELETON]
    for (a, b), finger in zip(ends, BONE_FINGERS, strict=True):
        if shown[a] and shown[b]:
            line = [tuple(points[a, :2]), tuple(points[b, :2])]
            draw.line(line, fill=FINGER_COLOURS[finger], width=BONE_WIDTH)
    # Every keypoint but the wrist ends exactly one bone, which gives it its finger.
    colours = {b: FINGER_COLOURS[f] for (_, b), f in zip(ends, BONE_FINGERS, strict=True)}
    for index in np.flatnonzero(shown):
        x, y, r = *points[index, :2], KEYPOINT_RADIUS
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colours.get(index, WRIST_COLOUR))


def draw_detection(image: np.ndarray, detections: Detections) -> Image.Image:
    """One image's detections (masks, boxes, class name and score, and hand skeletons when they
    have keypoints) over the image."""
    return draw_instances(
        image,
        detections.boxes,
        detections.masks,
        detections.names,
        detections.scores.tolist(),
        keypoints=detections.keypoints,
    )


def _hand_keypoints(keypoints: np.ndarray | None) -> np.ndarray:
    """Keypoints as float [N, 21, 3]; None, or K = 0 (a model without the keypoint head), draws
    no skeleton. Other counts have no skeleton to draw and are refused."""
    keypoints = np.zeros((0, 0, 3)) if keypoints is None else np.asarray(keypoints, np.float32)
    if keypoints.shape[1] == 0:
        return np.zeros((0, len(KEYPOINT_NAMES), 3), np.float32)
    if keypoints.shape[1:] != (len(KEYPOINT_NAMES), 3):
        raise ValueError(f"hand keypoints are [N, {len(KEYPOINT_NAMES)}, 3], got {keypoints.shape}")
    return keypoints


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
