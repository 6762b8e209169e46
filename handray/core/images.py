"""Image files into the uint8 RGB arrays `detect` takes, decoded ahead of the model in a thread.

Pillow releases the GIL while it decodes, so one reader thread keeps the next batch ready while
TensorFlow runs the current one.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from handray.core.errors import HandrayError


def read_image(path: str | os.PathLike, exif: bool = False) -> np.ndarray:
    """Fully decoded [H, W, 3] uint8 RGB pixels of any image Pillow reads.

    Grayscale, palette and RGBA images become RGB; 16-bit images are scaled to 8 bits rather than
    clipped. `exif` turns the image upright as cameras tagged it; dataset images stay as stored,
    since their annotations were made on the stored pixels.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            return rgb_pixels(image, exif)
    except FileNotFoundError:
        raise HandrayError(f"{path}: no such image file") from None
    except IsADirectoryError:
        raise HandrayError(f"{path}: is a folder, not an image file") from None
    except Exception as err:  # Pillow reports bad data as OSError, SyntaxError, ValueError...
        raise HandrayError(f"{path}: cannot read it as an image ({err})") from None


def rgb_pixels(image: Image.Image, exif: bool = False) -> np.ndarray:
    """Decode an opened Pillow image (its first frame) to [H, W, 3] uint8 RGB, as `read_image`
    describes; Pillow's errors for bad data propagate."""
    image.load()
    if exif:
        image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I"):  # 16- or 32-bit integer grayscale
        gray = (np.asarray(image, np.float64) / 257.0).clip(0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"))


def read_batches(
    paths: Sequence[str | os.PathLike], batch_size: int, exif: bool = False, ahead: int = 2
) -> Iterator[list[np.ndarray]]:
    """`read_image` over `paths` in batches, decoding up to `ahead` batches in a background thread
    while the caller works on the current one."""
    batches = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    pool = ThreadPoolExecutor(1, thread_name_prefix="handray-read")
    try:
        pending: deque[Future[list[np.ndarray]]] = deque()
        for batch in batches:
            pending.append(pool.submit(_read_all, batch, exif))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(cancel_futures=True)


def _read_all(paths: Sequence[str | os.PathLike], exif: bool) -> list[np.ndarray]:
    return [read_image(path, exif) for path in paths]
