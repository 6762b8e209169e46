"""Worker resources: one run's Ray Train scaling, its workers' threads, and what fits a cluster."""

import pytest

from handray.core.errors import HandrayError
from handray.train.resources import WorkerResources


def test_scaling_config_asks_for_gpus_only_when_workers_have_them():
    cpu = WorkerResources(3, cpus_per_worker=2).scaling_config()
    assert (cpu.num_workers, cpu.use_gpu, cpu.resources_per_worker) == (3, False, {"CPU": 2})
    gpu = WorkerResources(2, gpus_per_worker=0.5).scaling_config()
    assert gpu.use_gpu and gpu.resources_per_worker == {"CPU": 1, "GPU": 0.5}


def test_threads_are_the_whole_cpus_of_a_worker_and_at_least_one():
    assert [WorkerResources(1, cpus_per_worker=c).threads for c in (0.5, 1, 2.7)] == [1, 1, 2]


def test_runs_that_fit_count_each_run_with_its_driver():
    assert WorkerResources(2).runs_that_fit({"CPU": 9.0}, driver_cpus=0.25) == 4
    gpus = WorkerResources(2, gpus_per_worker=1)
    assert gpus.runs_that_fit({"CPU": 64.0, "GPU": 3.0}, driver_cpus=0.25) == 1
    assert gpus.runs_that_fit({"CPU": 64.0}, driver_cpus=0.25) == 0


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        (WorkerResources(0), "--workers must be at least 1"),
        (WorkerResources(1, gpus_per_worker=-1), "--gpus-per-worker must be >= 0"),
        (WorkerResources(1, cpus_per_worker=0), "CPUs per worker positive"),
    ],
)
def test_senseless_counts_are_refused(resources, message):
    with pytest.raises(HandrayError, match=message):
        resources.check()
