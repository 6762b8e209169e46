"""What a hand is in COCO terms: class schemes, and categories and annotations that carry the
21 RHD-order keypoints (their names and skeleton live in `handray.core.hand_keypoints`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from handray.core.hand_keypoints import KEYPOINT_NAMES, SKELETON
from handray.core.masks import encode_mask

CLASS_SCHEMES: dict[str, tuple[str, ...]] = {
    "left-right": ("left_hand", "right_hand"),
    "hand": ("hand",),
}
DEFAULT_MIN_AREA = 16


def hand_categories(scheme: str) -> list[dict[str, Any]]:
    """COCO categories for a class scheme, with keypoint names and skeleton attached."""
    if scheme not in CLASS_SCHEMES:
        raise ValueError(f"unknown class scheme {scheme!r}; choose one of {sorted(CLASS_SCHEMES)}")
    return [
        {
            "id": index,
            "name": name,
            "supercategory": "hand",
            "keypoints": list(KEYPOINT_NAMES),
            "skeleton": [list(pair) for pair in SKELETON],
        }
        for index, name in enumerate(CLASS_SCHEMES[scheme], start=1)
    ]


def category_for(scheme: str, is_left: bool) -> int:
    """Category id of a left or right hand under a class scheme."""
    return 1 if scheme == "hand" or is_left else 2


def coco_keypoints(uv: np.ndarray, visible: np.ndarray, height: int, width: int) -> list[float]:
    """Flattened COCO keypoints [x, y, v] * 21.

    v=2: visible; v=1: inside the image but occluded; v=0 (and x=y=0): outside the image.
    """
    uv = np.asarray(uv, np.float64)
    inside = (uv[:, 0] >= 0) & (uv[:, 0] < width) & (uv[:, 1] >= 0) & (uv[:, 1] < height)
    flags = np.where(inside, np.where(np.asarray(visible, bool), 2, 1), 0)
    keypoints: list[float] = []
    for (x, y), v in zip(uv, flags, strict=True):
        keypoints += [round(float(x), 2), round(float(y), 2), int(v)] if v else [0, 0, 0]
    return keypoints


def hand_annotation(
    mask: np.ndarray,
    category_id: int,
    uv: np.ndarray,
    visible: np.ndarray,
    min_area: int = DEFAULT_MIN_AREA,
) -> dict[str, Any] | None:
    """One hand's COCO annotation (without ids), or None when the hand has no pixels.

    Hands under `min_area` pixels are kept as crowd so that training and evaluation ignore them
    instead of treating their pixels as background.
    """
    if not mask.any():
        return None
    height, width = mask.shape
    annotation = encode_mask(mask)
    keypoints = coco_keypoints(uv, visible, height, width)
    annotation.update(
        category_id=category_id,
        iscrowd=int(annotation["area"] < min_area),
        keypoints=keypoints,
        num_keypoints=sum(1 for v in keypoints[2::3] if v > 0),
    )
    return annotation
