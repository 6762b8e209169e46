"""What crosses the HTTP boundary on the way in: uploaded bytes into safe RGB pixels (replies are
built by `handray.core.records`).

Every way an upload can be wrong becomes a `RequestError` with the HTTP status and a stable
error code, so the server answers the client instead of failing: 400 for data that is not a
readable image, 413 for too many bytes or pixels, 415 for a body that is not an image at all.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from handray.core.errors import HandrayError
from handray.core.images import rgb_pixels


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
