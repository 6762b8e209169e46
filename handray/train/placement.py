"""Bounded worker placement: a run whose workers cannot be placed fails with what it asked for
and what holds the cluster, instead of waiting forever.

Ray Train waits `RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S` (60 s) for a run's placement group,
then counts a controller failure and tries again, without limit by default: a run or a sweep
trial asking for CPUs that other work holds waits as long as that work lasts, silently. Here
the wait is `train.start_timeout_s` and one try (`FailureConfig.controller_failure_limit=0`,
set by `trainer.build_trainer`), after which the error names the resources.

`fit` also gives back the controller: Ray Train's SIGINT handler keeps a handle on each run's
controller actor, which keeps it alive after the run until the next run replaces the handler.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from handray.core.errors import HandrayError
from handray.train.resources import WorkerResources

START_TIMEOUT_VARIABLE = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"  # read by Ray Train's driver


@dataclass(frozen=True)
class Holder:
    """An actor or placement group that holds CPUs or GPUs of the cluster."""

    what: str
    cpus: float
    gpus: float

    def __str__(self) -> str:
        gpus = f", {self.gpus:g} GPU" if self.gpus else ""
        return f"{self.what} ({self.cpus:g} CPU{gpus})"


def resource_holders() -> list[Holder]:
    """Alive actors and placement groups holding CPUs or GPUs outside placement groups, from
    Ray's state API (actors inside a placement group are counted with their group), on the
    cluster this process is connected to: with the address left out, the state API refuses
    to choose when a machine runs several clusters."""
    import ray
    from ray.util.state import list_actors, list_placement_groups

    listing = {
        "address": ray.get_runtime_context().gcs_address,
        "detail": True,
        "limit": 10_000,
        "raise_on_missing_output": False,
    }
    holders = []
    for actor in list_actors(filters=[("state", "=", "ALIVE")], **listing):
        needs = actor.required_resources or {}
        if needs.get("CPU", 0) or needs.get("GPU", 0):
            label = actor.class_name + (f" {actor.name}" if actor.name else "")
            holders.append(Holder(f"actor {label}", needs.get("CPU", 0), needs.get("GPU", 0)))
    for group in list_placement_groups(filters=[("state", "=", "CREATED")], **listing):
        bundles = [b.get("unit_resources", {}) for b in group.bundles or []]
        cpus = sum(b.get("CPU", 0) for b in bundles)
        gpus = sum(b.get("GPU", 0) for b in bundles)
        if cpus or gpus:
            label = group.name or group.placement_group_id
            holders.append(Holder(f"placement group {label}", cpus, gpus))
    return holders


def cluster_usage() -> str:
    """What the cluster has free and who holds the rest, in one line for an error message."""
    import ray

    total, free = ray.cluster_resources(), ray.available_resources()
    line = f"{free.get('CPU', 0):g} of {total.get('CPU', 0):g} CPUs free"
    if total.get("GPU"):
        line += f", {free.get('GPU', 0):g} of {total['GPU']:g} GPUs"
    try:
        holders = resource_holders()
    except Exception as err:  # the state API needs the dashboard; the numbers above do not
        return f"{line} (who holds them is unknown: {type(err).__name__})"
    return f"{line}; held by: {', '.join(map(str, holders)) or 'nothing alive'}"


@contextmanager
def _start_bound(timeout_s: float) -> Iterator[None]:
    """Ray Train reads the start timeout from the driver's environment when `fit` starts its
    controller; the old value comes back afterwards."""
    before = os.environ.get(START_TIMEOUT_VARIABLE)
    os.environ[START_TIMEOUT_VARIABLE] = f"{timeout_s:g}"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(START_TIMEOUT_VARIABLE, None)
        else:
            os.environ[START_TIMEOUT_VARIABLE] = before


@contextmanager
def _sigint_handler_kept() -> Iterator[None]:
    """Put back the SIGINT handler `fit` replaces (its closure holds the controller)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # Ray Train registers no handler off the main thread (Tune trials)
        return
    before = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def fit(trainer: Any, resources: WorkerResources, timeout_s: float, run: str) -> Any:
    """`trainer.fit()` with its workers' placement bounded by `timeout_s`: past it, a
    `HandrayError` that names the run's request and the cluster's free resources."""
    from ray.train import ControllerError
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

    with _start_bound(timeout_s), _sigint_handler_kept():
        try:
            return trainer.fit()
        except ControllerError as err:
            if not isinstance(err.controller_failure, WorkerGroupStartupTimeoutError):
                raise
            raise HandrayError(placement_message(resources, timeout_s, run)) from None


def placement_message(resources: WorkerResources, timeout_s: float, run: str) -> str:
    """One line (Tune keeps an error's last line in trials.csv): the request, the cluster now,
    what to do."""
    gpus = f" and {resources.gpus_per_worker:g} GPU" if resources.gpus_per_worker else ""
    return (
        f"{run}: its {resources.workers} worker(s) of {resources.cpus_per_worker:g} CPU{gpus} "
        f"each could not be placed within {timeout_s:g} s (train.start_timeout_s); the Ray "
        f"cluster has {cluster_usage()}. Free those resources, ask for fewer workers, or "
        "raise train.start_timeout_s."
    )
