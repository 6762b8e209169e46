"""Detections as JSON records: the one builder behind the HTTP reply, `handray predict --json`
and the Python API's `to_records`.

Each record keeps the old reply's keys, `roi` [y1, x1, y2, x2], `class_id`, `class_name`,
`score` and `mask`, and adds COCO's `bbox` [x, y, w, h] and every extra head output by its
name (`keypoints`: [[x, y, score], ...] in the image's pixels).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Collection
from typing import Any

import numpy as np
from PIL import Image

from handray.core.detections import Detections
from handray.core.masks import encode_mask

MASK_FORMATS = ("png", "rle", "none")


def detection_records(
    detections: Detections, mask_format: str = "png", leave_out: Collection[str] = ()
) -> list[dict[str, Any]]:
    """One JSON-ready record per detection. `mask_format`: `png` (base64 PNG, 0/255,
    image-sized: the old reply's), `rle` (COCO compressed RLE) or `none`; `leave_out`: extra
    outputs not to include (e.g. `keypoints`)."""
    if mask_format not in MASK_FORMATS:
        raise ValueError(f"mask_format {mask_format!r}; use one of {MASK_FORMATS}")
    extras = {
        name: values
        for name, values in detections.extras.items()
        if name not in leave_out and values.size
    }
    records = []
    for index, name in enumerate(detections.names):
        y1, x1, y2, x2 = (round(float(v), 2) for v in detections.boxes[index])
        record = {
            "roi": [y1, x1, y2, x2],
            "class_id": int(detections.class_ids[index]),
            "class_name": name,
            "score": round(float(detections.scores[index]), 5),
            "mask": _encode(detections.masks[index], mask_format),
            "bbox": [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)],
        }
        for extra, values in extras.items():
            record[extra] = _rounded(values[index])
        records.append(record)
    return records


def _rounded(values: np.ndarray) -> Any:
    """Nested lists of a head's output for one detection, floats to 5 decimals."""
    if np.issubdtype(values.dtype, np.floating):
        return np.round(values.astype(np.float64), 5).tolist()
    return values.tolist()


def _encode(mask: np.ndarray, mask_format: str) -> Any:
    if mask_format == "png":
        buffer = io.BytesIO()
        Image.fromarray(mask.astype(np.uint8) * 255).save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode("ascii")
    if mask_format == "rle":
        return encode_mask(mask)["segmentation"]
    return None
