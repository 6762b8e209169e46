"""A PNG sheet of a dataset's ground truth, to see what the annotations say before training."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from handray.core.hand_keypoints import KEYPOINT_NAMES
from handray.core.images import read_image
from handray.core.masks import decode_counts
from handray.core.visualize import draw_instances, save_montage
from handray.data.coco import CocoDataset


def preview_dataset(
    dataset: CocoDataset, out: str | Path, count: int = 8, columns: int = 4
) -> Path:
    """Draw masks, boxes, class names and hand skeletons of the first `count` images into one
    PNG."""
    pictures = []
    for record in dataset.images[:count]:
        image = read_image(record.path)
        masks = np.array(
            [decode_counts(c, record.height, record.width) for c in record.counts], bool
        ).reshape(-1, record.height, record.width)
        boxes = np.array([_extent(m) for m in masks], np.float32).reshape(-1, 4)
        labels = [
            dataset.class_names[c - 1] + (" (crowd)" if crowd else "")
            for c, crowd in zip(record.class_ids, record.crowd, strict=True)
        ]
        # Hands' skeletons where the dataset has the hand's 21 keypoints (other layouts: none).
        hand = record.keypoints.shape[1] == len(KEYPOINT_NAMES)
        pictures.append(
            draw_instances(
                image, boxes, masks, labels, keypoints=record.keypoints if hand else None
            )
        )
    return save_montage(pictures, out, columns=columns)


def _extent(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return (0, 0, 0, 0)
    return (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1)
