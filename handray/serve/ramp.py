"""A load ramp against a running app: closed-loop clients stepped up and down in phases while
a watcher records, every few seconds, each deployment's replicas, the ongoing requests Ray's
autoscaler sees for it and the throughput. `benchmarks/autoscale.py` runs the shipped config
through it; `tests/serve/test_autoscaling.py` runs a short ramp with short delays."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from handray.serve.loadgen import Outcome, Probe, client, percentile
from handray.serve.replicas import APP

DEPLOYMENTS = ("Ingress", "HandModel")
# The parts of a request's server time, in the order they happen (the reply's timing_ms).
TIMING_PARTS = ("receive", "hop", "queue", "batch", "encode", "total")


@dataclass
class Sample:
    """The serving state at `at` seconds into the ramp."""

    at: float
    clients: int
    running: dict[str, int]  # deployment -> RUNNING replicas
    starting: dict[str, int]  # deployment -> replicas asked for but not yet serving
    seen: dict[str, float]  # deployment -> ongoing requests the autoscaler averages over
    answered_per_s: float  # 200 replies per second since the previous sample


@dataclass(frozen=True)
class Phase:
    """`clients` closed-loop clients (0: the server idles) for `seconds`, or until `done`
    holds for the samples taken since the phase began, if that comes first: a test ends a
    phase once it has seen what it waits for, not after a window sized for the slowest
    machine."""

    clients: int
    seconds: float
    done: Callable[[list[Sample]], bool] | None = None


@dataclass
class RampReport:
    phases: Sequence[Phase]
    outcomes: list[Outcome] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)  # each ended phase's end, into the ramp

    def phase_bounds(self) -> list[tuple[float, float]]:
        """Each phase's (start, end), seconds into the ramp: where it ended, for a phase that
        has; its planned end otherwise."""
        bounds, start = [], 0.0
        for index, phase in enumerate(self.phases):
            end = self.ends[index] if index < len(self.ends) else start + phase.seconds
            bounds.append((start, end))
            start = end
        return bounds

    def in_phase(self, index: int, settle_s: float = 0.0) -> list[Outcome]:
        """Requests sent during phase `index`, `settle_s` after its start."""
        start, end = self.phase_bounds()[index]
        return [o for o in self.outcomes if start + settle_s <= o.started < end]

    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != 200]

    def first_time(self, deployment: str, replicas: int, after: float, most: bool) -> float | None:
        """Seconds after `after` until `deployment` ran at least (`most`: at most) `replicas`
        RUNNING replicas, with none starting; None if it never did."""
        for sample in self.samples:
            running = sample.running.get(deployment, 0)
            settled = sample.starting.get(deployment, 0) == 0
            reached = running <= replicas if most else running >= replicas
            if sample.at >= after and reached and (settled or not most):
                return sample.at - after
        return None


def phase_summary(report: RampReport, index: int, settle_s: float) -> dict[str, float]:
    """Phase `index` after `settle_s`: replies/s, p50/p99 seconds and the median of each
    timing part (ms) over its 200 replies."""
    start, end = report.phase_bounds()[index]
    sent = report.in_phase(index, settle_s)
    answered = [o for o in sent if o.status == 200]
    summary = {
        "requests": float(len(sent)),
        "failed": float(sum(o.status != 200 for o in sent)),
        "per_s": len(answered) / max(1e-9, end - start - settle_s),
    }
    if answered:
        latencies = [o.seconds for o in answered]
        summary |= {"p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99)}
        for part in TIMING_PARTS:
            values = [o.timing_ms[part] for o in answered if o.timing_ms and part in o.timing_ms]
            if values:
                summary[part] = percentile(values, 0.5)
    return summary


def serving_state() -> tuple[dict[str, int], dict[str, int], dict[str, float]]:
    """RUNNING and starting replicas per deployment of APP, and the request count the Serve
    controller's autoscaler works from (the controller's own accessor: what it decides on,
    not a re-derivation of it)."""
    import ray
    from ray import serve
    from ray.serve._private.common import DeploymentID
    from ray.serve.context import _get_global_client

    statuses = serve.status().applications[APP].deployments
    running = {name: statuses[name].replica_states.get("RUNNING", 0) for name in statuses}
    starting = {
        name: sum(n for state, n in statuses[name].replica_states.items() if state != "RUNNING")
        for name in statuses
    }
    controller = _get_global_client()._controller
    calls = {
        name: controller._get_total_num_requests_for_deployment_for_testing.remote(
            DeploymentID(name=name, app_name=APP)
        )
        for name in statuses
    }
    seen = {name: float(ray.get(call)) for name, call in calls.items()}
    return running, starting, seen


async def _watch(report: RampReport, began: float, every_s: float, finished: asyncio.Event) -> None:
    answered_before = 0
    while not finished.is_set():
        now = time.monotonic() - began
        running, starting, seen = await asyncio.to_thread(serving_state)
        answered = sum(o.status == 200 for o in report.outcomes)
        previous = report.samples[-1].at if report.samples else None
        rate = 0.0 if previous is None else (answered - answered_before) / max(1e-9, now - previous)
        answered_before = answered
        clients = next(
            (
                phase.clients
                for phase, (start, end) in zip(report.phases, report.phase_bounds(), strict=True)
                if start <= now < end
            ),
            0,
        )
        report.samples.append(Sample(now, clients, running, starting, seen, rate))
        with contextlib.suppress(TimeoutError):  # the next sample, or the ramp has ended
            await asyncio.wait_for(finished.wait(), every_s)


async def _drive(
    url: str,
    mix: list[Probe],
    report: RampReport,
    began: float,
    timeout_s: float,
    finished: asyncio.Event,
) -> None:
    """Start each phase's clients at its start; they stop at its end (after their last
    reply), when the next phase's clients have already started. A phase ends after its
    seconds or once its `done` holds."""
    clients, seed, start = [], 0, 0.0
    for phase in report.phases:
        stop, end = asyncio.Event(), start + phase.seconds
        for _ in range(phase.clients):
            seed += 1
            options = {"began": began, "seconds": end, "timeout_s": timeout_s, "seed": seed}
            task = client(url, mix, report.outcomes, **options, stop=stop)
            clients.append(asyncio.create_task(task))
        while (now := time.monotonic() - began) < end:
            if phase.done and phase.done([s for s in report.samples if s.at >= start]):
                break
            await asyncio.sleep(min(0.25, end - now))
        stop.set()
        start = min(end, time.monotonic() - began)
        report.ends.append(start)
    finished.set()
    await asyncio.gather(*clients)


def run_ramp(
    url: str,
    mix: list[Probe],
    phases: Sequence[Phase],
    *,
    every_s: float = 2.0,
    timeout_s: float = 60.0,
) -> RampReport:
    """Drive `phases` of closed-loop load on `url` (good probes from `mix` only, unless it
    holds bad ones) and sample the serving state every `every_s` seconds. Needs a Ray driver
    connected to the cluster Serve runs on."""
    report = RampReport(phases)

    async def ramp() -> None:
        began, finished = time.monotonic(), asyncio.Event()
        await asyncio.gather(
            _watch(report, began, every_s, finished),
            _drive(url, mix, report, began, timeout_s, finished),
        )

    asyncio.run(ramp())
    return report
