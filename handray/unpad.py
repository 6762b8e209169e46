"""One image's detections out of a zero-padded batch (`handray.postprocess.to_original_pixels`'s
rows): plain slicing, so it serves NumPy arrays (the HTTP server, `detect`) and tensors inside
the export's graph alike, and the server needs no TensorFlow import for it."""

from __future__ import annotations

from typing import Any


def image_detections(batch: dict[str, Any], index: int, count: Any = None) -> dict[str, Any]:
    """`rois`, `class_ids`, `scores` [N], `masks` [N, H, W] (and `keypoints` [N, K, 3] when the
    batch has them) of image `index`: its first `count` detections (default: all it has), masks
    cut to its own height and width."""
    if count is None:
        count = batch["num_detections"][index]
    height, width = batch["image_sizes"][index][0], batch["image_sizes"][index][1]
    detections = {
        "rois": batch["boxes"][index, :count],
        "class_ids": batch["class_ids"][index, :count],
        "scores": batch["scores"][index, :count],
        "masks": batch["masks"][index, :count, :height, :width],
    }
    if "keypoints" in batch:
        detections["keypoints"] = batch["keypoints"][index, :count]
    return detections
