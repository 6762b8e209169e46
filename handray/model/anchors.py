"""Anchor boxes for every pyramid level, computed once per input size (numpy, then a constant)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def level_anchors(
    scale: float | Sequence[float],
    ratios: Sequence[float],
    feature_shape: tuple[int, int],
    feature_stride: int,
    anchor_stride: int = 1,
) -> np.ndarray:
    """Pixel anchors [N, 4] (y1, x1, y2, x2) of one level, ordered by row, column, then scale,
    then ratio.

    Heights are scale / sqrt(ratio) and widths scale * sqrt(ratio) (ratio = width / height),
    centred on (row * feature_stride, column * feature_stride) as in the old model.
    """
    ratios = np.asarray(ratios, np.float64)
    scales = np.atleast_1d(np.asarray(scale, np.float64))[:, None]
    heights = (scales / np.sqrt(ratios)).reshape(-1)
    widths = (scales * np.sqrt(ratios)).reshape(-1)
    rows = np.arange(0, feature_shape[0], anchor_stride) * feature_stride
    cols = np.arange(0, feature_shape[1], anchor_stride) * feature_stride
    centre_y, centre_x = np.meshgrid(rows, cols, indexing="ij")
    centres = np.stack([centre_y, centre_x], -1).reshape(-1, 1, 2)
    sizes = np.stack([heights, widths], -1).reshape(1, -1, 2)
    boxes = np.concatenate([centres - 0.5 * sizes, centres + 0.5 * sizes], -1)
    return boxes.reshape(-1, 4)


def pyramid_feature_shapes(image_size: int, strides: Sequence[int]) -> list[tuple[int, int]]:
    """Feature map sizes of a square input at each stride (the backbone rounds up)."""
    return [(math.ceil(image_size / s), math.ceil(image_size / s)) for s in strides]


def generate_anchors(
    image_size: int,
    scales: Sequence[float],
    ratios: Sequence[float],
    strides: Sequence[int],
    anchor_stride: int = 1,
    octaves: Sequence[float] = (1.0,),
) -> np.ndarray:
    """All levels' anchors, normalised by the image size: float32 [N, 4], P2 first.

    Each level has anchors of side `scale * octave` for every octave, at every ratio.
    """
    shapes = pyramid_feature_shapes(image_size, strides)
    anchors = [
        level_anchors([scale * o for o in octaves], ratios, shape, stride, anchor_stride)
        for scale, shape, stride in zip(scales, shapes, strides, strict=True)
    ]
    return (np.concatenate(anchors) / image_size).astype(np.float32)
