"""A soak: closed-loop load (`loadgen`) against `serve run` with both deployments at 2
replicas, a `/healthz` poller, each deployment's replica memory, optionally replicas killed
on cue (one deployment after another, each once the last one's replacement serves), and the
targets the run must meet (`verdicts`). `benchmarks/soak.py` runs it for minutes;
`tests/serve/test_faults.py` runs the kill mode short, ending it once the load has gone on
for a while after the last replacement."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np

from handray.serve.launcher import ServeProcess, deployments, free_port, shipped_config
from handray.serve.loadgen import Outcome, Probe, client, outcome_of, probes
from handray.serve.replicas import replicas, resident_bytes

RSS_EVERY_S = 30
REPLACED_WITHIN_S = 60
DEPLOYMENTS = ("Ingress", "HandModel")
HEALTH_PROBE = Probe("GET /healthz", b"")


def _retryable(outcome: Outcome) -> bool:
    """A JSON 503 with Retry-After: what a request in flight on a lost replica should get."""
    return outcome.status == 503 and bool(outcome.json_error) and bool(outcome.retry_after)


@dataclass
class Kill:
    """One replica killed: of which deployment, when, and when a new one of it served."""

    deployment: str
    at: float  # seconds into the soak
    replaced_after_s: float | None = None  # from the kill to a new replica's first reply


@dataclass
class SoakReport:
    """What a soak saw: every request's outcome, health polls, RSS samples and the kill."""

    seconds: float
    request_timeout_s: float
    outcomes: list[Outcome] = field(default_factory=list)
    health: list[Outcome] = field(default_factory=list)  # the /healthz polls
    rss: dict[str, list[tuple[float, int]]] = field(default_factory=lambda: defaultdict(list))
    kills: list[Kill] = field(default_factory=list)

    @property
    def killed(self) -> bool:
        return bool(self.kills)

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
            and not (self.killed and _retryable(o))
        ]

    def failures_not_503_json(self) -> list[Outcome]:
        """Failed good requests that are not a JSON 503 with Retry-After."""
        return [o for o in self.failures() if not _retryable(o)]

    def hung(self) -> list[Outcome]:
        """Requests that waited longer than the proxy's timeout (plus a second of slack)."""
        return [o for o in self.outcomes if o.seconds > self.request_timeout_s + 1]

    def health_failures(self) -> list[Outcome]:
        """/healthz polls that did not get a 200, except a JSON 503 with Retry-After sent while
        a killed replica was being replaced: a poll in flight on it is lost like a request."""
        return [
            poll
            for poll in self.health
            if poll.status != 200 and not (_retryable(poll) and self._replacing(poll))
        ]

    def _replacing(self, outcome: Outcome) -> bool:
        """`outcome` was in flight between a kill and its replacement's first reply."""
        sent, ended = outcome.started, outcome.started + outcome.seconds
        for kill in self.kills:
            replaced = kill.at + (kill.replaced_after_s or self.seconds)  # never: to the end
            if ended >= kill.at and sent <= replaced:
                return True
        return False

    def rss_growth(self, deployment: str, from_s: float = 120) -> float:
        """Relative RSS growth of the replicas alive at the end, from `from_s` to the end."""
        samples = self.rss[deployment]
        if not samples:
            return 0.0
        start = [rss for t, rss in samples if t >= from_s] or [samples[-1][1]]
        return samples[-1][1] / start[0] - 1.0


async def pause(stop: asyncio.Event, seconds: float) -> None:
    """Sleep `seconds`, or less if the soak is stopped meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max(0.0, seconds))


def running(report: SoakReport, began: float, stop: asyncio.Event) -> bool:
    """The soak has neither run its length nor been ended early (`kill_in_turn`'s settle)."""
    return time.monotonic() - began < report.seconds and not stop.is_set()


async def poll_health(url: str, report: SoakReport, began: float, stop: asyncio.Event) -> None:
    timeout = aiohttp.ClientTimeout(total=report.request_timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while running(report, began, stop):
            request = session.get(f"{url}/healthz")
            report.health.append(await outcome_of(request, HEALTH_PROBE, time.monotonic(), began))
            await pause(stop, 1)


async def watch_memory(address: str, report: SoakReport, began: float, stop: asyncio.Event) -> None:
    """Total RSS of each deployment's replicas, every RSS_EVERY_S seconds and at the end."""
    while True:
        elapsed = time.monotonic() - began
        for deployment in DEPLOYMENTS:
            pids = (await asyncio.to_thread(replicas, address, deployment)).values()
            report.rss[deployment].append((elapsed, sum(resident_bytes(pid) for pid in pids)))
        if not running(report, began, stop):
            return
        await pause(stop, min(RSS_EVERY_S, report.seconds - elapsed))


async def kill_one(
    url: str, address: str, deployment: str, report: SoakReport, began: float, stop: asyncio.Event
) -> Kill:
    """SIGKILL one replica of `deployment`, then time until a new one serves (its id shows up
    in a `/healthz` reply, which both deployments write into)."""
    before = await asyncio.to_thread(replicas, address, deployment)
    _, pid = sorted(before.items())[0]
    os.kill(pid, signal.SIGKILL)
    kill = Kill(deployment, time.monotonic() - began)
    report.kills.append(kill)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        while running(report, began, stop):
            try:
                async with session.get(f"{url}/healthz") as reply:
                    payload = await reply.json()
                ingress = deployment == "Ingress"
                seen = payload["ingress"] if ingress else payload["model"]["replica"]
                if seen not in before:
                    kill.replaced_after_s = time.monotonic() - began - kill.at
                    return kill
            except (TimeoutError, aiohttp.ClientError, ValueError, KeyError):
                pass
            await pause(stop, 0.5)
    return kill


async def kill_in_turn(
    url: str,
    address: str,
    kills: Sequence[str],
    after_s: float,
    settle_s: float | None,
    report: SoakReport,
    began: float,
    stop: asyncio.Event,
) -> None:
    """Kill a replica of each deployment in `kills`, the first after `after_s`, each next one
    once the last one's replacement serves; with `settle_s`, end the soak that long after the
    last replacement (the load has shown it goes on) instead of at its full length."""
    await pause(stop, after_s)
    for deployment in kills:
        if not running(report, began, stop):
            return
        if (await kill_one(url, address, deployment, report, began, stop)).replaced_after_s is None:
            return
    if settle_s is not None:
        await pause(stop, settle_s)
        stop.set()


async def load(
    url: str,
    address: str,
    mix: list[Probe],
    report: SoakReport,
    clients: int,
    kills: Sequence[str],
    after_s: float,
    settle_s: float | None,
) -> None:
    """`clients` closed-loop clients, the health poller, the memory watch and the kills, at
    once."""
    began, stop = time.monotonic(), asyncio.Event()
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
            stop=stop,
        )
        for seed in range(clients)
    ]
    tasks += [poll_health(url, report, began, stop), watch_memory(address, report, began, stop)]
    if kills:
        tasks.append(kill_in_turn(url, address, kills, after_s, settle_s, report, began, stop))
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
    kills: Sequence[str] = (),
    kill_after_s: float = 120,
    settle_s: float | None = None,
    adjust: Callable[[dict], None] | None = None,
) -> SoakReport:
    """Serve `export` with `serve run` on the cluster at `address` (started with the proxy
    middleware) and soak it with `picture` at several sizes (`loadgen.probes`) and bad inputs
    for `seconds` (or until `settle_s` after the last kill's replacement); `adjust(config)` may
    change the config first (replica CPUs)."""
    config = soak_config(export, free_port())
    if adjust:
        adjust(config)
    report = SoakReport(seconds, config["http_options"]["request_timeout_s"])
    mix = probes(picture)
    server = ServeProcess(config, folder, address)
    try:
        asyncio.run(load(server.url, address, mix, report, clients, kills, kill_after_s, settle_s))
    finally:
        server.stop()
    return report


def describe_polls(polls: list[Outcome], shown: int = 3) -> str:
    """How many polls, and when the first few were sent and what they got."""
    seen = [f"{p.status or 'no reply'} at {p.started:.0f} s" for p in polls[:shown]]
    return f"{len(polls)} ({', '.join(seen)})" if polls else "0"


def verdicts(report: SoakReport) -> list[tuple[str, str, bool]]:
    """(measure, value, met) for each target."""
    failures, good = report.failures(), report.good()
    rows = []
    if not report.killed:
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
        (
            "/healthz failures",
            describe_polls(report.health_failures()),
            not report.health_failures(),
        ),
    ]
    if not report.killed:
        for deployment in DEPLOYMENTS:
            growth = report.rss_growth(deployment)
            rows.append((f"{deployment} RSS growth from minute 2", f"{growth:+.1%}", growth < 0.10))
        return rows
    share = len(failures) / max(1, len(good))
    rows += [
        ("failed good requests", f"{len(failures)} ({share:.2%})", share < 0.01),
        (
            "failures not a JSON 503 + Retry-After",
            str(len(report.failures_not_503_json())),
            not report.failures_not_503_json(),
        ),
    ]
    for kill in report.kills:
        replaced = kill.replaced_after_s
        rows.append(
            (
                f"a new {kill.deployment} replica served after",
                f"{replaced if replaced is not None else float('nan'):.0f} s",
                replaced is not None and replaced <= REPLACED_WITHIN_S,
            )
        )
    return rows
