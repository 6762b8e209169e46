"""A soak: closed-loop load (`loadgen`) against `serve run` with both deployments at 2
replicas, a `/healthz` poller, each deployment's replica memory, optionally one replica killed
on cue, and the targets the run must meet (`verdicts`). `benchmarks/soak.py` runs it for
minutes; `tests/serve/test_faults.py` runs the kill mode short."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np

from handray.serve.launcher import ServeProcess, deployments, free_port, shipped_config
from handray.serve.loadgen import Outcome, Probe, client, probes
from handray.serve.replicas import replicas, resident_bytes

RSS_EVERY_S = 30
REPLACED_WITHIN_S = 60
DEPLOYMENTS = ("Ingress", "HandModel")


def _retryable(outcome: Outcome) -> bool:
    """A JSON 503 with Retry-After: what a request in flight on a lost replica should get."""
    return outcome.status == 503 and bool(outcome.json_error) and bool(outcome.retry_after)


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
        """Bad inputs not refused with a JSON 4xx. With a replica killed, a bad input in
        flight on it may get what a good request gets then, a JSON 503 with Retry-After: the
        server never read it."""
        return [
            o
            for o in self.outcomes
            if o.probe.bad
            and not (o.status and 400 <= o.status < 500 and o.json_error)
            and not (self.killed is not None and _retryable(o))
        ]

    def failures_not_503_json(self) -> list[Outcome]:
        """Failed good requests that are not a JSON 503 with Retry-After."""
        return [o for o in self.failures() if not _retryable(o)]

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


async def load(
    url: str,
    address: str,
    mix: list[Probe],
    report: SoakReport,
    clients: int,
    kill: str | None,
    after_s: float,
) -> None:
    """`clients` closed-loop clients, the health poller, the memory watch and the kill, at once."""
    began = time.monotonic()
    timeout_s = report.request_timeout_s + 30
    tasks = [
        client(
            url,
            mix,
            report.outcomes,
            began=began,
            seconds=report.seconds,
            timeout_s=timeout_s,
            seed=seed,
        )
        for seed in range(clients)
    ]
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
    picture: np.ndarray,
    seconds: float,
    clients: int,
    kill: str | None = None,
    kill_after_s: float = 120,
    adjust: Callable[[dict], None] | None = None,
) -> SoakReport:
    """Serve `export` with `serve run` on the cluster at `address` (started with the proxy
    middleware) and soak it with `picture` at several sizes (`loadgen.probes`) and bad inputs;
    `adjust(config)` may change the config first (replica CPUs)."""
    config = soak_config(export, free_port())
    if adjust:
        adjust(config)
    report = SoakReport(seconds, config["http_options"]["request_timeout_s"])
    mix = probes(picture)
    server = ServeProcess(config, folder, address)
    try:
        asyncio.run(load(server.url, address, mix, report, clients, kill, kill_after_s))
    finally:
        server.stop()
    return report


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
