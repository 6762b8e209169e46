"""Closed-loop HTTP load on `/predict`: each client posts the next request as soon as the last
one is answered, a mix of good images and bad inputs, and records every outcome.

aiohttp (which `ray[serve]` installs) keeps hundreds of clients in one process; a thread per
client would not."""

from __future__ import annotations

import asyncio
import io
import json
import random
import struct
import time
import zlib
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

import aiohttp
import numpy as np
from PIL import Image

GOOD_SIZES = ((96, 128), (128, 128), (240, 320), (480, 640))
BAD_SHARE = 0.1


@dataclass(frozen=True)
class Probe:
    """One kind of request: its name, body and how it is sent; `bad` ones must get a 4xx."""

    name: str
    body: bytes
    content_type: str = "image/png"
    multipart: bool = True
    query: str = ""
    bad: bool = False


@dataclass
class Outcome:
    started: float  # seconds since the load began
    probe: Probe
    status: int | None  # None: the connection failed or the client gave up
    seconds: float
    json_error: bool = False  # the reply is {"success": false, "error": {...}}
    retry_after: bool = False
    timing_ms: dict[str, float] | None = None  # a 200 reply's server-side times


def probes(picture: np.ndarray) -> list[Probe]:
    """An RGB picture at several sizes and formats, and a set of bad inputs."""
    source = Image.fromarray(picture)
    good = []
    for height, width in GOOD_SIZES:
        pixels = np.asarray(source.resize((width, height)))
        for fmt, mime in (("PNG", "image/png"), ("JPEG", "image/jpeg")):
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format=fmt)
            name = f"{width}x{height}.{fmt.lower()}"
            good.append(Probe(name, buffer.getvalue(), mime))
            good.append(Probe(f"{name} raw", buffer.getvalue(), mime, multipart=False))
    png = good[0].body
    bad = [
        Probe("text as image", b"this is not an image", bad=True),
        Probe("truncated png", png[: len(png) // 2], bad=True),
        Probe("empty body", b"", bad=True),
        Probe("bomb header", _png_header(100_000, 100_000), bad=True),
        Probe("json body", b'{"image": 1}', "application/json", multipart=False, bad=True),
        Probe("bad min_score", png, query="min_score=2", bad=True),
        Probe("bad mask_format", png, query="mask_format=gif", bad=True),
    ]
    return good + bad


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` pixels (a decompression bomb's first bytes)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    return (
        b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    )


async def post(session: aiohttp.ClientSession, url: str, probe: Probe, began: float) -> Outcome:
    """Send one probe to `url`/predict; a failed connection is an outcome too (status None)."""
    started = time.monotonic()
    target = f"{url}/predict" + (f"?{probe.query}" if probe.query else "")
    if probe.multipart:
        form = aiohttp.FormData()
        form.add_field("image", probe.body, filename="upload", content_type=probe.content_type)
        request = session.post(target, data=form)
    else:
        request = session.post(
            target, data=probe.body, headers={"Content-Type": probe.content_type}
        )
    return await outcome_of(request, probe, started, began)


async def outcome_of(
    request: AbstractAsyncContextManager[aiohttp.ClientResponse],
    probe: Probe,
    started: float,
    began: float,
) -> Outcome:
    """The outcome of one sent `request` (an aiohttp request context) carrying `probe`."""
    status, json_error, retry_after, timing = None, False, False, None
    try:
        async with request as reply:
            body = await reply.read()
            status, retry_after = reply.status, "Retry-After" in reply.headers
            if reply.content_type == "application/json":
                parsed = json.loads(body)
                json_error = parsed.get("success") is False and "message" in parsed.get("error", {})
                timing = parsed.get("timing_ms")
    except (TimeoutError, aiohttp.ClientError, ValueError):
        pass
    now = time.monotonic()
    return Outcome(started - began, probe, status, now - started, json_error, retry_after, timing)


async def client(
    url: str,
    mix: list[Probe],
    outcomes: list[Outcome],
    *,
    began: float,
    seconds: float,
    timeout_s: float,
    seed: int,
    stop: asyncio.Event | None = None,
) -> None:
    """One closed-loop client until `seconds` after `began` (or, sooner, once `stop` is set):
    the next request goes as soon as the last one is answered, a bad one (if `mix` has any)
    with chance BAD_SHARE; each gives up after `timeout_s`."""
    rng = random.Random(seed)
    good = [p for p in mix if not p.bad]
    bad = [p for p in mix if p.bad]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        while time.monotonic() - began < seconds and not (stop and stop.is_set()):
            probe = rng.choice(bad if bad and rng.random() < BAD_SHARE else good)
            outcomes.append(await post(session, url, probe, began))


def percentile(values: list[float], fraction: float) -> float:
    """The value at `fraction` of the sorted values (nearest rank; latencies' p50, p99)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]
