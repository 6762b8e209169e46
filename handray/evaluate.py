"""COCO evaluation of detections with pycocotools: the numbers users compare models by."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

STAT_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)


def coco_results(
    image_id: int, detection: dict[str, np.ndarray], category_ids: Sequence[int]
) -> list[dict[str, Any]]:
    """COCO result entries (box [x, y, w, h] and RLE mask) of one image's `detect` output.

    `category_ids[k - 1]` is the COCO category of class id k.
    """
    results = []
    for roi, class_id, score, mask in zip(
        detection["rois"],
        detection["class_ids"],
        detection["scores"],
        detection["masks"],
        strict=True,
    ):
        y1, x1, y2, x2 = (float(v) for v in roi)
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        results.append(
            {
                "image_id": int(image_id),
                "category_id": int(category_ids[int(class_id) - 1]),
                "score": float(score),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode()},
            }
        )
    return results


def coco_evaluate(
    ground_truth: COCO, results: list[dict[str, Any]], kind: str, image_ids: Sequence[int]
) -> dict[str, float]:
    """pycocotools' summary statistics (AP, AP50, ...) for `kind` "bbox" or "segm"."""
    if not results:
        return dict.fromkeys(STAT_NAMES, 0.0)
    evaluation = COCOeval(ground_truth, ground_truth.loadRes(results), kind)
    evaluation.params.imgIds = list(image_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return dict(zip(STAT_NAMES, (float(v) for v in evaluation.stats), strict=True))
