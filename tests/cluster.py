"""The shared test cluster's resources: every CPU and GPU free again once a run, a trial or an
app has ended, or the names of what still holds them; work that holds CPUs, and another
cluster running beside it."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import ray

from handray.train.placement import cluster_usage


def still_held(timeout_s: float = 60.0) -> str | None:
    """None once the cluster's CPUs and GPUs are all free (within `timeout_s`: Ray releases an
    ended actor's resources a moment later), else what is free and who holds the rest."""
    deadline = time.monotonic() + timeout_s
    while True:
        total, free = ray.cluster_resources(), ray.available_resources()
        if all(free.get(key, 0.0) >= total.get(key, 0.0) - 1e-6 for key in ("CPU", "GPU")):
            return None
        if time.monotonic() > deadline:
            return cluster_usage()
        time.sleep(1)


@ray.remote
class Hog:
    """Holds the CPUs it is started with, as other work on a shared cluster would."""

    def ready(self) -> bool:
        return True


def hold_cpus(cpus: float):
    """An actor holding `cpus` CPUs of the running cluster, once it is placed."""
    hog = Hog.options(num_cpus=cpus).remote()
    ray.get(hog.ready.remote(), timeout=60)
    return hog


# A plain `ray.init` cluster in its own process: it reports what its own tasks' state-API calls
# get while another cluster runs (the failure `handray.core.local_ray` protects against), then
# waits until its stdin closes.
_BYSTANDER = """
import sys, ray

@ray.remote(num_cpus=0)
def ask_the_state_api():
    from ray.util.state import list_nodes
    try:
        return f"answered: {len(list_nodes())} node(s)"
    except ConnectionError as error:
        return f"refused: {error}"

ray.init(address="local", num_cpus=1, include_dashboard=False)
print(ray.get(ask_the_state_api.remote()).replace(chr(10), " "), flush=True)
sys.stdin.read()
"""


def environment_without_ray_address() -> dict[str, str]:
    """This process's environment for a driver that must not join a cluster by `RAY_ADDRESS`."""
    return {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}


@contextlib.contextmanager
def driver_until_closed(script: str) -> Iterator[str]:
    """A Python driver running `script` in its own process, with no `RAY_ADDRESS`, for as long
    as the block runs; yields the first line it prints. The script waits for its stdin to
    close, then exits, and with it any cluster it started."""
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=environment_without_ray_address(),
    )
    try:
        yield process.stdout.readline().strip()
    finally:
        process.stdin.close()
        process.wait(timeout=60)


def bystander_cluster() -> contextlib.AbstractContextManager[str]:
    """Another Ray cluster on this machine, started as a plain `ray.init()` starts one, for as
    long as the block runs; yields what its own task got from the state API."""
    return driver_until_closed(_BYSTANDER)
