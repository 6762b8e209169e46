"""What crosses the HTTP boundary: uploaded bytes into safe RGB pixels, detections into JSON.

Every way an upload can be wrong becomes a `RequestError` with the HTTP status and a stable
error code, so the server answers the client instead of failing: 400 for data that is not a
readable image, 413 for too many bytes or pixels, 415 for a body that is not an image at all.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from handray.data.masks import encode_mask
from handray.errors import HandrayError
from handray.images import rgb_pixels

MASK_FORMATS = ("png", "rle", "none")


class RequestError(HandrayError):
    """A client's mistake: the HTTP status, a stable machine-readable code and a message."""

    def __init__(self, status: int, code: str, message: str, retry_after_s: int | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.retry_after_s = retry_after_s

    def body(self) -> dict[str, Any]:
        return {"success": False, "error": {"code": self.code, "message": self.message}}

    def headers(self) -> dict[str, str]:
        """`Retry-After` when the request may succeed later (a 503), else none."""
        return {} if self.retry_after_s is None else {"Retry-After": str(self.retry_after_s)}


@dataclass(frozen=True)
class UploadLimits:
    """The most a request may bring (from `serve` in the config)."""

    max_request_bytes: int
    max_image_pixels: int


def decode_upload(data: bytes, limits: UploadLimits) -> np.ndarray:
    """Uploaded bytes -> upright [H, W, 3] uint8 RGB pixels of the first frame.

    EXIF orientation is applied; grayscale, palette, RGBA, CMYK and 16-bit images are converted.
    The pixel count is checked from the header before anything is decoded (decompression bombs).
    """
    if not data:
        raise RequestError(400, "empty_image", "the image is empty (0 bytes)")
    if len(data) > limits.max_request_bytes:
        raise too_large(len(data), limits)
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise RequestError(
            400, "not_an_image", "the upload is not an image in a format the server reads"
        ) from None
    except Image.DecompressionBombError as err:  # far past Pillow's own limit too
        raise RequestError(
            413,
            "image_too_large",
            f"the image has too many pixels ({err}); the server's limit is "
            f"{limits.max_image_pixels} pixels",
        ) from None
    except Exception as err:
        raise RequestError(
            400, "corrupt_image", f"the image header cannot be read ({err})"
        ) from None
    with image:
        width, height = image.size
        if width * height > limits.max_image_pixels:
            raise RequestError(
                413,
                "image_too_large",
                f"the image is {width}x{height} = {width * height} pixels, more than the limit "
                f"of {limits.max_image_pixels}; send a smaller image",
            )
        if width < 1 or height < 1:
            raise RequestError(400, "corrupt_image", f"the image is {width}x{height} pixels")
        try:
            return rgb_pixels(image, exif=True)
        except Exception as err:  # truncated or corrupt pixel data: OSError, SyntaxError, ...
            raise RequestError(
                400, "corrupt_image", f"the image is truncated or corrupt ({err})"
            ) from None


def too_large(size: int, limits: UploadLimits) -> RequestError:
    """The error for a request body of `size` bytes (or more) over the limit."""
    return RequestError(
        413,
        "request_too_large",
        f"the request has {size} bytes or more, over the limit of {limits.max_request_bytes}",
    )


def to_model_bytes(pixels: np.ndarray) -> bytes:
    """Pixels as an uncompressed BMP: lossless, and nearly free to encode and decode, so the
    export's in-graph decoder sees exactly the pixels that were checked here."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="BMP")
    return buffer.getvalue()


def prediction_records(
    detection: dict[str, np.ndarray],
    class_names: list[str],
    mask_format: str,
    keypoints: bool = True,
) -> list[dict[str, Any]]:
    """JSON predictions: the old reply's `roi`, `class_id`, `class_name`, `score`, `mask` (base64
    PNG, 0/255, image-sized), plus COCO `bbox` [x, y, w, h] and, when the model gives them and
    `keypoints` is on, `keypoints` [[x, y, score], ...] in the image's pixels; `mask_format`
    picks the mask."""
    records = []
    points = detection.get("keypoints")
    with_points = keypoints and points is not None and points.shape[1] > 0
    for index, (roi, class_id, score, mask) in enumerate(
        zip(
            detection["rois"],
            detection["class_ids"],
            detection["scores"],
            detection["masks"],
            strict=True,
        )
    ):
        y1, x1, y2, x2 = (round(float(v), 2) for v in roi)
        record = {
            "roi": [y1, x1, y2, x2],
            "class_id": int(class_id),
            "class_name": class_names[int(class_id)],
            "score": round(float(score), 5),
            "mask": _encode(mask, mask_format),
            "bbox": [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)],
        }
        if with_points:
            record["keypoints"] = [
                [round(float(x), 2), round(float(y), 2), round(float(s), 5)]
                for x, y, s in points[index]
            ]
        records.append(record)
    return records


def _encode(mask: np.ndarray, mask_format: str) -> Any:
    if mask_format == "png":
        buffer = io.BytesIO()
        Image.fromarray(mask.astype(np.uint8) * 255).save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode("ascii")
    if mask_format == "rle":
        return encode_mask(mask)["segmentation"]
    return None
