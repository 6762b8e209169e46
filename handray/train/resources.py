"""What one Ray Train run asks of the cluster: its workers and the CPUs and GPUs each holds.

The same numbers size the run's `ScalingConfig`, its workers' thread pools and, in a sweep, how
many trials fit the cluster at once, so they travel together from the command line down.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from handray.core.errors import HandrayError

if TYPE_CHECKING:
    from ray.train import ScalingConfig


@dataclass(frozen=True)
class WorkerResources:
    """The workers of one run; `gpus_per_worker` may be a fraction (workers sharing a GPU)."""

    workers: int
    gpus_per_worker: float = 0
    cpus_per_worker: float = 1

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0

    @property
    def threads(self) -> int:
        """Threads a worker's TensorFlow and input pipeline get: the CPUs Ray gave it."""
        return max(1, int(self.cpus_per_worker))

    @property
    def cpus(self) -> float:
        """CPUs of all the run's workers together."""
        return self.workers * self.cpus_per_worker

    @property
    def gpus(self) -> float:
        """GPUs of all the run's workers together."""
        return self.workers * self.gpus_per_worker

    def check(self) -> None:
        """Fail on the driver when the worker counts make no sense."""
        if self.workers < 1:
            raise HandrayError(f"--workers must be at least 1, got {self.workers}")
        if self.gpus_per_worker < 0 or self.cpus_per_worker <= 0:
            raise HandrayError("--gpus-per-worker must be >= 0 and CPUs per worker positive")

    def runs_that_fit(self, cluster: dict[str, float], driver_cpus: float) -> int:
        """How many such runs the cluster's CPUs and GPUs hold at once, each run with a driver
        of `driver_cpus` besides its workers."""
        fits = [cluster.get("CPU", 0.0) / (self.cpus + driver_cpus)]
        if self.gpus_per_worker:
            fits.append(cluster.get("GPU", 0.0) / self.gpus)
        return int(min(fits) + 1e-9)

    def scaling_config(self) -> ScalingConfig:
        """Ray Train's `ScalingConfig` for these workers."""
        from ray.train import ScalingConfig

        per_worker: dict[str, float] = {"CPU": self.cpus_per_worker}
        if self.gpus_per_worker:
            per_worker["GPU"] = self.gpus_per_worker
        return ScalingConfig(
            num_workers=self.workers, use_gpu=self.use_gpu, resources_per_worker=per_worker
        )
