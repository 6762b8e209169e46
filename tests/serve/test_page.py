"""The page at GET / in a real browser (Debian's headless Chromium driven by Playwright), against
the app deployed on a real Ray cluster: uploads, the client-side score slider, error messages."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import requests

from tests.conftest import TINY_EXPORT_ABOUT

pytestmark = pytest.mark.slow  # a Serve server and a browser

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = Path("/usr/bin/chromium")
DEFAULT_MIN_SCORE = 0.5  # the page's slider starts at the server's default
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium from Debian's package (Playwright never downloads a browser here)."""
    if not CHROMIUM.is_file():
        pytest.fail(
            f"{CHROMIUM} is missing: the page test needs Debian's Chromium; install it with "
            "`make setup` as root, or `apt-get install chromium`"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def demo_image(tmp_path_factory) -> Path:
    """The validation image of a one-image synthetic dataset, as `make demo` would see it."""
    from handray.data.synthetic import generate_dataset

    folder = tmp_path_factory.mktemp("synthetic") / "data"
    generate_dataset(folder, train=1, val=1, size=128, workers=1, progress=False)
    coco = json.loads((folder / "annotations" / "instances_val.json").read_text())
    return folder / coco["images"][0]["file_name"]


def server_reply(url: str, name: str, data: bytes) -> requests.Response:
    """What the server answers for this file, with every detection (min_score=0)."""
    files = {"image": (name, data, "image/png")}
    return requests.post(f"{url}/predict?min_score=0", files=files, timeout=60)


def count_at(scores: list[float], threshold: float) -> int:
    """The number of hands the page should draw at this slider value."""
    return sum(score >= threshold for score in scores)


def changing_threshold(scores: list[float]) -> float:
    """A slider position (a multiple of its step, 0.01) whose count differs from the default's,
    not within rounding of any score, nearest to the default."""
    candidates = [
        k / 100
        for k in range(101)
        if count_at(scores, k / 100) != count_at(scores, DEFAULT_MIN_SCORE)
        and all(abs(score - k / 100) > 1e-4 for score in scores)
    ]
    assert candidates, f"no slider value changes the count for scores {scores}"
    return min(candidates, key=lambda t: abs(t - DEFAULT_MIN_SCORE))


def upload(page: Page, name: str, data: bytes, state: str) -> None:
    """Choose the file in the page's file input and wait until it has shown the reply."""
    with page.expect_response(lambda r: r.url.split("?")[0].endswith("/predict")) as response:
        page.set_input_files("#file", {"name": name, "mimeType": "image/png", "buffer": data})
    assert response.value.status == (200 if state == "done" else 400)
    page.wait_for_function("['done', 'error'].includes(document.body.dataset.state)")
    assert page.evaluate("document.body.dataset.state") == state


def test_the_page_uploads_once_filters_by_score_and_shows_errors(
    browser, url, demo_image, tmp_path
):
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1000, "height": 900})
    uploads: list[str] = []
    page.on(
        "request",
        lambda r: r.method == "POST" and "/predict" in r.url and uploads.append(r.url),
    )
    page.goto(url)
    assert page.evaluate("document.body.dataset.state") == "idle"
    assert page.input_value("#min-score") == str(DEFAULT_MIN_SCORE)
    expect(page.locator("#error")).to_be_empty()

    photo = demo_image.read_bytes()
    upload(page, "hand.png", photo, "done")
    assert len(uploads) == 1 and uploads[0].endswith("/predict?min_score=0&mask_format=rle")
    reply = server_reply(url, "hand.png", photo)
    assert reply.status_code == 200, reply.text
    scores = [p["score"] for p in reply.json()["predictions"]]
    default_count = count_at(scores, DEFAULT_MIN_SCORE)
    expect(page.locator("#count")).to_have_text(str(default_count))
    expect(page.locator("#latency")).to_contain_text("ms")
    version = reply.json()["model"]["version"]
    expect(page.locator("#model")).to_have_text(f"model: handray-tiny {version}")
    expect(page.locator("#model")).to_have_attribute("title", TINY_EXPORT_ABOUT)  # its model card
    screenshot = tmp_path / "page.png"
    page.screenshot(path=screenshot, full_page=True)
    assert screenshot.stat().st_size > 0
    assert screenshot.read_bytes().startswith(PNG_SIGNATURE)

    threshold = changing_threshold(scores)
    page.locator("#min-score").fill(str(threshold))
    assert float(page.input_value("#min-score")) == threshold
    expect(page.locator("#count")).to_have_text(str(count_at(scores, threshold)))
    assert count_at(scores, threshold) != default_count
    assert page.evaluate("document.body.dataset.state") == "done"
    assert len(uploads) == 1, "moving the slider must not upload again"

    truncated = photo[: len(photo) // 2]
    for name, data in (("broken.png", b"not an image"), ("truncated.png", truncated)):
        upload(page, name, data, "error")
        reply = server_reply(url, name, data)
        assert reply.status_code == 400, reply.text
        message = reply.json()["error"]["message"]
        expect(page.locator("#error")).to_have_text(message)
        assert page.text_content("#error") == message  # verbatim, not only whitespace-alike

    upload(page, "hand.png", photo, "done")  # a good upload again clears the error
    expect(page.locator("#error")).to_be_empty()
    expect(page.locator("#count")).to_have_text(str(count_at(scores, threshold)))
    assert len(uploads) == 4, uploads
    page.close()
