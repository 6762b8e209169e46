"""Ray Train on a real local cluster: two CPU workers kept in sync (the run checks every
variable on both after each epoch), checkpoints, a worker killed mid-run, and a finished run
continued."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray

from handray.config import load_config
from handray.core.errors import HandrayError
from handray.data.synthetic import generate_dataset
from handray.inference.checkpoints import (
    WEIGHTS_FILE,
    read_state,
    run_checkpoints,
)
from handray.train.resources import WorkerResources
from handray.train.trainer import run_training
from tests.cluster import hold_cpus, still_held

pytestmark = pytest.mark.slow  # a Ray cluster, training runs, a killed worker


@pytest.fixture(scope="module")
def hands(tmp_path_factory):
    root = tmp_path_factory.mktemp("hands")
    generate_dataset(root, train=8, val=4, size=64, seed=5, workers=1, progress=False)
    return root


def small_config(epochs: int, steps: int = 3, **overrides):
    """`tiny` at 64 px for a few steps; `overrides` by dotted key, as a dict's items."""
    return load_config(
        "tiny",
        {
            "data.image_size": 64,
            "train.epochs": epochs,
            "train.steps_per_epoch": steps,
            "train.validation_steps": 1,
            "train.images_per_worker": 2,
            "train.eval_every": 0,
            "train.warmup_steps": 2,
            "train.max_failures": 2,
            **overrides,
        },
    )


def kill_a_worker_mid_run(run_dir: Path, killed: list[int]) -> None:
    """SIGKILL one Ray Train worker process of this cluster once the run has two checkpoints
    (a report returns only once Ray has registered its checkpoint, so the first is surely
    known by then). The state API names this cluster's workers: a scan of /proc would also
    find those of any other Ray cluster on the machine."""
    from ray.util.state import list_actors

    deadline = time.time() + 300
    while time.time() < deadline and len(run_checkpoints(run_dir)) < 2:
        time.sleep(0.1)
    workers = list_actors(
        ray.get_runtime_context().gcs_address,
        filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
        raise_on_missing_output=False,
    )
    if workers:
        pid = min(worker.pid for worker in workers)
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)


def averaged_config(epochs: int):
    """The runs below: four steps an epoch, with weight averages, which the workers must
    also hold alike."""
    return small_config(epochs=epochs, steps=4, **{"train.ema_decay": 0.9})


@pytest.fixture(scope="module")
def crashed_run(ray_cluster, hands, tmp_path_factory):
    storage = tmp_path_factory.mktemp("storage")
    killed: list[int] = []
    killer = threading.Thread(target=kill_a_worker_mid_run, args=(storage / "crash", killed))
    killer.start()
    run = run_training(
        averaged_config(epochs=5),
        hands,
        resources=WorkerResources(2),
        name="crash",
        storage=storage,
    )
    killer.join()
    return run, killed


def test_a_killed_worker_is_restarted_and_the_run_resumes(crashed_run):
    run, killed = crashed_run
    assert killed, "no Ray Train worker process was found to kill"
    state = run.state
    assert state.epoch == 5 and state.step == 20
    assert state.sessions == 2  # the first session died; the second resumed
    assert [int(m["epoch"]) for m in state.history] == [1, 2, 3, 4, 5]
    # After every epoch, in both sessions, the two workers held the same weights, batch
    # norm statistics, optimizer slots and weight averages (`handray.train.replica_sync`): they
    # trained as one cluster, not each alone.
    assert [m["replicas_in_sync"] for m in state.history] == [2.0] * 5
    assert state.history[-1]["loss"] < state.history[0]["loss"]
    assert run.checkpoint.parent == run.run_dir and (run.checkpoint / WEIGHTS_FILE).is_file()
    assert run.curves.is_file()
    assert (run.run_dir / "tensorboard").is_dir()


def test_a_killed_worker_run_leaves_every_cpu_free(crashed_run):
    assert still_held() is None


def test_a_run_whose_workers_cannot_be_placed_fails_naming_what_holds_them(
    ray_cluster, hands, tmp_path
):
    free = ray.available_resources()["CPU"]
    hog = hold_cpus(free - 0.5)  # half a CPU stays free: the one-CPU worker cannot start
    config = small_config(epochs=1)
    config.train.start_timeout_s = 5
    started = time.monotonic()
    try:
        with pytest.raises(HandrayError) as raised:
            run_training(config, hands, resources=WorkerResources(1), storage=tmp_path)
    finally:
        ray.kill(hog)
    message = str(raised.value)
    assert "1 worker(s) of 1 CPU each" in message and "within 5 s" in message, message
    total = ray.cluster_resources()["CPU"]
    assert f"0.5 of {total:g} CPUs free" in message and f"actor Hog ({free - 0.5:g} CPU)" in message
    assert time.monotonic() - started < 60  # one bounded try, not Ray Train's endless retries
    assert still_held() is None  # the failed start gave its placement group back


def test_a_finished_run_continues_from_its_last_epoch(crashed_run, hands, capsys):
    run, _ = crashed_run
    more = run_training(
        averaged_config(epochs=6),
        hands,
        resources=WorkerResources(2),
        name=run.run_dir.name,
        storage=run.run_dir.parent,
    )
    assert more.state.epoch == 6 and more.state.step == 24
    assert [int(m["epoch"]) for m in more.state.history] == [1, 2, 3, 4, 5, 6]
    assert more.state.history[-1]["replicas_in_sync"] == 2.0
    assert more.state.sessions == 3 and read_state(more.checkpoint).epoch == 6
    # `last` finds this run again and has nothing left to do at 6 epochs: no worker starts
    # (a worker session would count itself in `sessions`).
    capsys.readouterr()
    same = run_training(
        averaged_config(epochs=6),
        hands,
        resources=WorkerResources(2),
        weights="last",
        storage=run.run_dir.parent,
    )
    assert same.run_dir == run.run_dir and same.state.epoch == 6 and same.state.sessions == 3
    assert same.checkpoint == more.checkpoint and same.curves.is_file()
    assert f"run {run.run_dir.name} already has 6 of 6 epochs" in capsys.readouterr().out


def test_bad_requests_fail_before_any_worker_starts(hands, tmp_path):
    with pytest.raises(HandrayError, match="cannot be shared by 9 workers"):
        run_training(small_config(epochs=1), hands, resources=WorkerResources(9), storage=tmp_path)
    with pytest.raises(HandrayError, match="model.num_classes=2"):
        config = small_config(epochs=1)
        config.model.num_classes, config.model.class_names = 2, ("hand",)
        run_training(config, hands, storage=tmp_path)
    with pytest.raises(HandrayError, match="no run with checkpoints"):
        run_training(small_config(epochs=1), hands, weights="last", storage=tmp_path)
    with pytest.raises(HandrayError, match="not found"):
        run_training(
            small_config(epochs=1), hands, weights=str(tmp_path / "nope.h5"), storage=tmp_path
        )


def test_job_entry_point_and_cli_errors(hands, tmp_path, capsys):
    from handray.cli import main

    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, str(repo / "jobs" / "train.py"), "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "--gpus-per-worker" in done.stdout and "--weights" in done.stdout
    code = main(["train", "--dataset", str(hands), "--storage", "s3://bucket/runs"])
    assert code == 2 and "object-store URIs" in capsys.readouterr().err
    code = main(["train", "--dataset", str(tmp_path / "missing"), "--preset", "tiny"])
    assert code == 2 and "missing" in capsys.readouterr().err
