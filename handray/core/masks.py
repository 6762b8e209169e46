"""Instance masks in COCO form: encoding to compressed RLE and decoding to run lengths.

Run lengths (COCO's uncompressed RLE: alternating background/foreground counts over the
column-major pixel order) are what the tf.data pipeline expands with pure TF ops, so every
segmentation flavour (polygons, compressed and uncompressed RLE) is reduced to them once, at load.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """COCO annotation fields of a binary [H, W] mask: exact compressed RLE, pixel area, bbox."""
    rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    x, y, w, h = (int(v) for v in mask_utils.toBbox(rle))
    return {
        "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode()},
        "area": int(mask_utils.area(rle)),
        "bbox": [x, y, w, h],
    }


def counts_from_string(counts: str | bytes) -> np.ndarray:
    """Run lengths of a COCO compressed RLE string (the inverse of pycocotools' encoding).

    Each value is a little-endian base-32 varint of printable characters (offset 48, bit 0x20 =
    more characters follow, bit 0x10 of the last one = negative); values after the second are
    stored as differences to the value two places back.
    """
    raw = counts.encode() if isinstance(counts, str) else bytes(counts)
    if not raw:
        return np.zeros(0, np.int64)
    chars = np.frombuffer(raw, np.uint8).astype(np.int64) - 48
    more = (chars & 0x20) != 0
    if more[-1]:
        raise ValueError("RLE string ends in the middle of a value")
    starts = np.flatnonzero(np.concatenate([[True], ~more[:-1]]))
    group = np.cumsum(np.concatenate([[0], (~more[:-1]).astype(np.int64)]))
    position = np.arange(chars.size) - starts[group]
    values = np.add.reduceat((chars & 0x1F) << (5 * position), starts)
    lengths = np.diff(np.append(starts, chars.size))
    negative = (chars[starts + lengths - 1] & 0x10) != 0
    values = np.where(negative, values - (np.int64(1) << (5 * lengths)), values)
    runs = values.copy()
    runs[1::2] = np.cumsum(values[1::2])
    runs[2::2] = np.cumsum(values[2::2])
    return runs


def segmentation_counts(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Run lengths (int32) of any COCO segmentation: polygons, compressed or uncompressed RLE.

    Raises ValueError with what is wrong; callers add which annotation it was.
    """
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) >= 6]
        if not polygons:
            return np.array([height * width], np.int32)
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
        runs = counts_from_string(rle["counts"])
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        size = [int(s) for s in segmentation.get("size", [])]
        if size != [height, width]:
            raise ValueError(f"RLE size {size} differs from the image size {[height, width]}")
        counts = segmentation["counts"]
        runs = counts_from_string(counts) if isinstance(counts, str | bytes) else np.asarray(counts)
    else:
        raise ValueError("segmentation is neither a polygon list nor an RLE dict with 'counts'")
    runs = runs.astype(np.int64)
    if (runs.size and runs.min() < 0) or runs.sum() != height * width:
        raise ValueError(
            f"RLE run lengths cover {int(runs.sum())} pixels, the image has {height * width}"
        )
    return runs.astype(np.int32)


def decode_counts(counts: np.ndarray, height: int, width: int) -> np.ndarray:
    """Binary [H, W] uint8 mask from run lengths (numpy twin of the pipeline's TF decoder)."""
    values = np.arange(len(counts)) % 2
    flat = np.repeat(values.astype(np.uint8), np.asarray(counts, np.int64))
    return flat.reshape(width, height).T.copy()
