"""PNG sheets to look at before training: a dataset's ground truth as annotated, or training
examples as the input pipeline makes them (augmented, in the padded square the model sees)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from handray.config import Config, with_overrides
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
        labels = _labels(dataset.class_names, record.class_ids, record.crowd)
        pictures.append(
            draw_instances(image, boxes, masks, labels, keypoints=_hand(record.keypoints))
        )
    return save_montage(pictures, out, columns=columns)


def preview_augmented(
    dataset: CocoDataset, config: Config, out: str | Path, count: int = 8, columns: int = 4
) -> Path:
    """Draw `count` training examples as `build_dataset` makes them (shuffled and augmented as
    `config` says: flip, scale jitter and crop, brightness, contrast, appearance) with their
    masks, boxes, class names and hand skeletons, into one PNG. More examples than images show
    the images again, augmented anew."""
    from handray.data.pipeline import build_dataset  # TensorFlow: only for this sheet

    config = with_overrides(config, {"data.use_mini_mask": False})  # masks on the square
    batches = build_dataset(dataset, config, training=True, batch_size=1, repeat=True)
    pictures = []
    for batch in batches.take(count):
        example = {key: value.numpy()[0] for key, value in batch.items()}
        n = int(example["num_gt"])
        labels = _labels(dataset.class_names, example["gt_class_ids"][:n], example["gt_crowd"][:n])
        pictures.append(
            draw_instances(
                example["image"],
                example["gt_boxes"][:n],
                example["gt_masks"][:n],
                labels,
                keypoints=_hand(example["gt_keypoints"][:n]),
            )
        )
    return save_montage(pictures, out, columns=columns)


def _labels(
    class_names: Sequence[str], class_ids: Sequence[int], crowd: Sequence[bool]
) -> list[str]:
    return [
        class_names[c - 1] + (" (crowd)" if is_crowd else "")
        for c, is_crowd in zip(class_ids, crowd, strict=True)
    ]


def _hand(keypoints: np.ndarray) -> np.ndarray | None:
    """The keypoints where they are a hand's 21 (its skeleton is drawn), else None."""
    return keypoints if keypoints.shape[1] == len(KEYPOINT_NAMES) else None


def _extent(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return (0, 0, 0, 0)
    return (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1)
