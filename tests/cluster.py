"""The shared test cluster's resources: every CPU and GPU free again once a run, a trial or an
app has ended, or the names of what still holds them."""

from __future__ import annotations

import time

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
