"""Soak: a crowd of closed-loop HTTP clients against `serve run` for a long time, and
optionally a replica killed in the middle of it.

`serve run` of serve_config.yaml as shipped, except that both deployments are held at 2
replicas, on a Ray cluster of this machine with handray's proxy middleware on (JSON errors from
the proxy too). Each client posts the next request as soon as the last one is answered: good
images of several sizes and formats (PNG and JPEG, 96 to 640 px, multipart or raw) and, about
one request in ten, a bad input that must get a 4xx JSON error. A health poller asks `/healthz`
every second. Each replica's resident memory is read from /proc (Linux) every 30 s.

Targets: zero 5xx and zero connection errors for good requests, every bad input a 4xx JSON
error, replica RSS growth under 10 % from minute 2 to the end. With `--kill model|ingress`:
one replica of that deployment is killed with SIGKILL after `--kill-after` seconds; then no
request may wait past the proxy's timeout, a failed request must be a JSON 503 with
Retry-After, under 1 % of the requests may fail, `/healthz` stays up, and a new replica serves
within 60 s.

    .venv/bin/python benchmarks/soak.py [--minutes 10] [--clients 200] [--kill model|ingress]
        [--model-dir runs/demo/model]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import signal
import struct
import tempfile
import time
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import aiohttp
import numpy as np
from PIL import Image
from serve_process import ServeProcess, deployments, free_port, percentile, shipped_config

from handray.serve.proxy import CALLBACK, CALLBACK_VARIABLE

ROOT = Path(__file__).resolve().parents[1]
GOOD_SIZES = ((96, 128), (128, 128), (240, 320), (480, 640))
BAD_SHARE = 0.1
RSS_EVERY_S = 30
REPLACED_WITHIN_S = 60
DEPLOYMENTS = ("Ingress", "HandModel")
DEPLOYMENTS_BY_FLAG = {"model": "HandModel", "ingress": "Ingress"}


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
    started: float  # seconds since the soak began
    probe: Probe
    status: int | None  # None: the connection failed or the client gave up
    seconds: float
    json_error: bool = False  # the reply is {"success": false, "error": {...}}
    retry_after: bool = False


@dataclass
class SoakReport:
    """What a soak saw: every request's outcome, health polls, RSS samples and the kill."""

    seconds: float
    request_timeout_s: float
    outcomes: list[Outcome] = field(default_factory=list)
    health: list[tuple[float, int | None]] = field(default_factory=list)
    rss: dict[str, list[tuple[float, int]]] = field(default_factory=lambda: defaultdict(list))
    killed: str | None = None  # the deployment one replica of which was killed
    killed_at: float | None = None
    replaced_after_s: float | None = None  # a new replica of it served a request

    def good(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.probe.bad]

    def failures(self) -> list[Outcome]:
        """Good requests that did not get a 200."""
        return [o for o in self.good() if o.status != 200]

    def bad_not_4xx_json(self) -> list[Outcome]:
        return [
            o
            for o in self.outcomes
            if o.probe.bad and not (o.status and 400 <= o.status < 500 and o.json_error)
        ]

    def failures_not_503_json(self) -> list[Outcome]:
        """Failed good requests that are not a JSON 503 with Retry-After."""
        return [
            o for o in self.failures() if not (o.status == 503 and o.json_error and o.retry_after)
        ]

    def hung(self) -> list[Outcome]:
        """Requests that waited longer than the proxy's timeout (plus a second of slack)."""
        return [o for o in self.outcomes if o.seconds > self.request_timeout_s + 1]

    def health_failures(self) -> list[tuple[float, int | None]]:
        return [poll for poll in self.health if poll[1] != 200]

    def rss_growth(self, deployment: str, from_s: float = 120) -> float:
        """Relative RSS growth of the replicas alive at the end, from `from_s` to the end."""
        samples = self.rss[deployment]
        if not samples:
            return 0.0
        start = [rss for t, rss in samples if t >= from_s] or [samples[-1][1]]
        return samples[-1][1] / start[0] - 1.0


def probes(folder: Path) -> list[Probe]:
    """Synthetic hand images at several sizes and formats, and a set of bad inputs."""
    from handray.data.synthetic import generate_dataset

    generate_dataset(folder / "images", train=1, val=1, size=640, progress=False)
    source = Image.open(sorted((folder / "images" / "images").rglob("*.png"))[0]).convert("RGB")
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
    status, json_error, retry_after = None, False, False
    try:
        async with request as reply:
            body = await reply.read()
            status, retry_after = reply.status, "Retry-After" in reply.headers
            if reply.content_type == "application/json":
                parsed = json.loads(body)
                json_error = parsed.get("success") is False and "message" in parsed.get("error", {})
    except (TimeoutError, aiohttp.ClientError, ValueError):
        pass
    now = time.monotonic()
    return Outcome(started - began, probe, status, now - started, json_error, retry_after)


async def client(url: str, mix: list[Probe], report: SoakReport, began: float, seed: int) -> None:
    """One closed-loop client: the next request goes as soon as the last one is answered."""
    rng = random.Random(seed)
    good = [p for p in mix if not p.bad]
    bad = [p for p in mix if p.bad]
    timeout = aiohttp.ClientTimeout(total=report.request_timeout_s + 30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while time.monotonic() - began < report.seconds:
            probe = rng.choice(bad if rng.random() < BAD_SHARE else good)
            report.outcomes.append(await post(session, url, probe, began))


async def poll_health(url: str, report: SoakReport, began: float) -> None:
    timeout = aiohttp.ClientTimeout(total=report.request_timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while time.monotonic() - began < report.seconds:
            status = None
            try:
                async with session.get(f"{url}/healthz") as reply:
                    await reply.read()
                    status = reply.status
            except (TimeoutError, aiohttp.ClientError):
                pass
            report.health.append((time.monotonic() - began, status))
            await asyncio.sleep(1)


def replicas(address: str, deployment: str) -> dict[str, int]:
    """Alive replicas of `deployment` in the app "handray": unique replica id -> process id."""
    from ray.util.state import list_actors

    prefix = f"SERVE_REPLICA::handray#{deployment}#"
    alive = list_actors(
        address, filters=[("state", "=", "ALIVE")], limit=1000, raise_on_missing_output=False
    )
    return {a.name[len(prefix) :]: a.pid for a in alive if (a.name or "").startswith(prefix)}


def resident_bytes(pid: int) -> int:
    """A process's resident memory, from /proc (0 once it is gone)."""
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


async def watch_memory(address: str, report: SoakReport, began: float) -> None:
    """Total RSS of each deployment's replicas, every RSS_EVERY_S seconds and at the end."""
    while True:
        elapsed = time.monotonic() - began
        for deployment in DEPLOYMENTS:
            pids = (await asyncio.to_thread(replicas, address, deployment)).values()
            report.rss[deployment].append((elapsed, sum(resident_bytes(pid) for pid in pids)))
        if elapsed >= report.seconds:
            return
        await asyncio.sleep(min(RSS_EVERY_S, max(0.0, report.seconds - elapsed)))


async def kill_one(
    url: str, address: str, deployment: str, after_s: float, report: SoakReport, began: float
) -> None:
    """SIGKILL one replica of `deployment` after `after_s`, then time until a new one serves
    (its id shows up in a `/healthz` reply, which both deployments write into)."""
    await asyncio.sleep(after_s)
    before = await asyncio.to_thread(replicas, address, deployment)
    _, pid = sorted(before.items())[0]
    os.kill(pid, signal.SIGKILL)
    report.killed, report.killed_at = deployment, time.monotonic() - began
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        while time.monotonic() - began < report.seconds:
            try:
                async with session.get(f"{url}/healthz") as reply:
                    payload = await reply.json()
                ingress = deployment == "Ingress"
                seen = payload["ingress"] if ingress else payload["model"]["replica"]
                if seen not in before:
                    report.replaced_after_s = time.monotonic() - began - report.killed_at
                    return
            except (TimeoutError, aiohttp.ClientError, ValueError, KeyError):
                pass
            await asyncio.sleep(0.5)


async def load(url, address, mix, report, clients, kill, after_s) -> None:
    began = time.monotonic()
    tasks = [client(url, mix, report, began, seed) for seed in range(clients)]
    tasks += [poll_health(url, report, began), watch_memory(address, report, began)]
    if kill:
        tasks.append(kill_one(url, address, kill, after_s, report, began))
    await asyncio.gather(*tasks)


def soak_config(export: Path, port: int) -> dict:
    """The shipped serve_config.yaml with each deployment held at 2 replicas."""
    config = shipped_config(export, port)
    for deployment in deployments(config).values():
        deployment["autoscaling_config"].update(min_replicas=2, max_replicas=2)
    return config


def run_soak(
    export: Path,
    address: str,
    folder: Path,
    *,
    seconds: float,
    clients: int,
    kill: str | None = None,
    kill_after_s: float = 120,
    adjust=None,
) -> SoakReport:
    """Serve `export` with `serve run` on the cluster at `address` (started with the proxy
    middleware) and soak it; `adjust(config)` may change the config first (replica CPUs)."""
    config = soak_config(export, free_port())
    if adjust:
        adjust(config)
    report = SoakReport(seconds, config["http_options"]["request_timeout_s"])
    mix = probes(folder)
    server = ServeProcess(config, folder, address)
    try:
        asyncio.run(load(server.url, address, mix, report, clients, kill, kill_after_s))
    finally:
        server.stop()
    return report


def minute_table(report: SoakReport) -> list[str]:
    rows = [
        "| minute | requests | good 200 | good 5xx | conn. errors | bad 4xx JSON | bad other "
        "| p50 ms | p99 ms |",
        "|--------|----------|----------|----------|--------------|--------------|-----------"
        "|--------|--------|",
    ]
    by_minute: dict[int, list[Outcome]] = defaultdict(list)
    for outcome in report.outcomes:
        by_minute[int(outcome.started // 60)].append(outcome)
    wrong_bad = set(map(id, report.bad_not_4xx_json()))
    for minute, outcomes in sorted(by_minute.items()):
        good = [o for o in outcomes if not o.probe.bad]
        ok = [o.seconds for o in good if o.status == 200] or [0.0]
        bad = [o for o in outcomes if o.probe.bad]
        rows.append(
            f"| {minute + 1:>6} | {len(outcomes):>8} | {sum(o.status == 200 for o in good):>8} "
            f"| {sum((o.status or 0) >= 500 for o in good):>8} "
            f"| {sum(o.status is None for o in outcomes):>12} "
            f"| {sum(id(o) not in wrong_bad for o in bad):>12} "
            f"| {sum(id(o) in wrong_bad for o in bad):>9} "
            f"| {percentile(ok, 0.5) * 1e3:>6.0f} | {percentile(ok, 0.99) * 1e3:>6.0f} |"
        )
    return rows


def verdicts(report: SoakReport) -> list[tuple[str, str, bool]]:
    """(measure, value, met) for each target."""
    failures, good = report.failures(), report.good()
    rows = []
    if report.killed is None:
        rows.append(
            ("good requests with 5xx", str(sum((o.status or 0) >= 500 for o in good)), not failures)
        )
    rows += [
        (
            "connection errors",
            str(sum(o.status is None for o in report.outcomes)),
            all(o.status is not None for o in report.outcomes),
        ),
        (
            "bad inputs not a 4xx JSON",
            str(len(report.bad_not_4xx_json())),
            not report.bad_not_4xx_json(),
        ),
        ("requests past the timeout", str(len(report.hung())), not report.hung()),
        ("/healthz failures", str(len(report.health_failures())), not report.health_failures()),
    ]
    if report.killed is None:
        for deployment in DEPLOYMENTS:
            growth = report.rss_growth(deployment)
            rows.append((f"{deployment} RSS growth from minute 2", f"{growth:+.1%}", growth < 0.10))
    else:
        share = len(failures) / max(1, len(good))
        rows += [
            ("failed good requests", f"{len(failures)} ({share:.2%})", share < 0.01),
            (
                "failures not a JSON 503 + Retry-After",
                str(len(report.failures_not_503_json())),
                not report.failures_not_503_json(),
            ),
            (
                "a new replica served after",
                f"{report.replaced_after_s or float('nan'):.0f} s",
                (report.replaced_after_s or 1e9) <= REPLACED_WITHIN_S,
            ),
        ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--kill", choices=DEPLOYMENTS_BY_FLAG, help="kill one replica under load")
    parser.add_argument("--kill-after", type=float, default=120.0, help="seconds into the soak")
    parser.add_argument("--model-dir", type=Path, default=ROOT / "runs" / "demo" / "model")
    args = parser.parse_args()
    if not (args.model_dir / "saved_model.pb").is_file():
        parser.error(f"--model-dir {args.model_dir}: no export there; run `make demo` first")
    import ray

    os.environ[CALLBACK_VARIABLE] = CALLBACK  # before the cluster starts: its proxy reads it
    context = ray.init(address="local", num_cpus=4, include_dashboard=True, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            report = run_soak(
                args.model_dir.resolve(),
                context.address_info["gcs_address"],
                Path(tmp),
                seconds=args.minutes * 60,
                clients=args.clients,
                kill=DEPLOYMENTS_BY_FLAG.get(args.kill),
                kill_after_s=args.kill_after,
            )
    finally:
        ray.shutdown()
    kill = f", {args.kill} replica killed at {report.killed_at:.0f} s" if report.killed else ""
    print(
        f"\nSoak: {args.clients} closed-loop clients, {args.minutes:g} min, 2 Ingress + 2 "
        f"HandModel replicas, {os.cpu_count()} CPU cores{kill}"
    )
    print("\n".join(minute_table(report)))
    print("\n| replica RSS MiB | start | minute 2 | end |")
    print("|-----------------|-------|----------|-----|")
    for deployment in DEPLOYMENTS:
        samples = report.rss[deployment]
        at_2 = next((rss for t, rss in samples if t >= 120), samples[-1][1])
        print(
            f"| {deployment:<15} | {samples[0][1] / 2**20:5.0f} | {at_2 / 2**20:8.0f} | "
            f"{samples[-1][1] / 2**20:3.0f} |"
        )
    failed = Counter(f"{o.status}{' JSON' if o.json_error else ''}" for o in report.failures())
    print(f"\nfailed good requests by status: {dict(failed) or 'none'}")
    print("\n| target | measured | met |")
    print("|--------|----------|-----|")
    for measure, value, met in verdicts(report):
        print(f"| {measure} | {value} | {'yes' if met else 'NO'} |")


if __name__ == "__main__":
    main()
