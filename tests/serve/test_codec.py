"""Uploads into safe pixels: every image kind a client may send and every way an upload can be
wrong (the reply's records: tests/core/test_records.py)."""

import io

import numpy as np
import pytest
from PIL import Image

from handray.serve.codec import RequestError, UploadLimits, decode_upload

LIMITS = UploadLimits(max_request_bytes=1_000_000, max_image_pixels=250_000)
EXIF_ORIENTATION = 0x0112


def encoded(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("image", "fmt", "expected"),
    [
        (Image.new("RGB", (7, 5), (10, 200, 30)), "PNG", (10, 200, 30)),
        (Image.new("L", (7, 5), 90), "PNG", (90, 90, 90)),
        (Image.new("RGBA", (7, 5), (10, 20, 30, 0)), "PNG", (10, 20, 30)),
        (Image.new("I;16", (7, 5), 257 * 100), "PNG", (100, 100, 100)),
        (Image.new("CMYK", (7, 5), (0, 0, 0, 0)), "JPEG", (255, 255, 255)),
        (Image.new("RGB", (7, 5), (0, 0, 255)).quantize(4), "PNG", (0, 0, 255)),
        (Image.new("1", (7, 5), 1), "BMP", (255, 255, 255)),
    ],
    ids=["rgb", "gray", "rgba", "16-bit", "cmyk-jpeg", "palette", "1-bit"],
)
def test_every_image_kind_becomes_rgb(image, fmt, expected):
    pixels = decode_upload(encoded(image, fmt), LIMITS)
    assert pixels.shape == (5, 7, 3) and pixels.dtype == np.uint8
    np.testing.assert_allclose(pixels[2, 3], expected, atol=2)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 10, 20))  # blue on the left
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # camera held sideways: rotate 90 degrees clockwise to view
    pixels = decode_upload(encoded(image, "JPEG", exif=exif.tobytes(), quality=95), LIMITS)
    assert pixels.shape == (40, 20, 3)
    assert pixels[2, 10, 2] > 200 and pixels[-2, 10, 0] > 200  # blue now on top


def test_animated_images_give_their_first_frame():
    frames = [Image.new("RGB", (6, 4), colour) for colour in ((255, 0, 0), (0, 255, 0))]
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    np.testing.assert_allclose(decode_upload(data, LIMITS)[1, 1], (255, 0, 0), atol=2)


def error_of(data: bytes, limits: UploadLimits = LIMITS) -> RequestError:
    with pytest.raises(RequestError) as caught:
        decode_upload(data, limits)
    body = caught.value.body()
    assert body["success"] is False and body["error"]["message"]
    return caught.value


def test_bad_uploads_get_client_errors():
    good = encoded(Image.new("RGB", (64, 48), (1, 2, 3)))
    assert (error_of(b"").status, error_of(b"").code) == (400, "empty_image")
    assert error_of(b"%PDF-1.4 not an image").code == "not_an_image"
    truncated = encoded(
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    )
    assert error_of(truncated[: len(truncated) // 2]).code == "corrupt_image"
    assert error_of(good[:40]).status == 400  # header cut inside its chunks
    too_many_bytes = error_of(good, UploadLimits(100, LIMITS.max_image_pixels))
    assert (too_many_bytes.status, too_many_bytes.code) == (413, "request_too_large")


def test_pixel_limit_is_checked_from_the_header():
    # A 30000 x 30000 image compresses to a few hundred kilobytes; decoding it would take 900 MB.
    bomb = encoded(Image.new("L", (30000, 30000)), "PNG", optimize=True)
    assert len(bomb) < LIMITS.max_request_bytes
    error = error_of(bomb)
    assert (error.status, error.code) == (413, "image_too_large")
    assert "900000000" in error.message
    # Under Pillow's own bomb limit, the server's limit still holds, named with the size.
    error = error_of(encoded(Image.new("L", (600, 500))))
    assert (error.status, error.code) == (413, "image_too_large")
    assert "600x500" in error.message
