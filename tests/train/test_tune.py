"""Ray Tune sweeps: the search space, and a real sweep of four Ray Train runs on a local cluster
whose ASHA stops a trial early, whose best checkpoint loads, and which resumes; run while another
Ray cluster runs on the machine, which once made such a sweep hang."""

import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray

from handray.cli import main
from handray.config import ANCHOR_SETS, load_config
from handray.core.errors import ConfigError, HandrayError
from handray.data.synthetic import generate_dataset
from handray.inference.checkpoints import load_trained_model, read_state, resolve_checkpoint
from handray.train.resources import WorkerResources
from handray.train.search_space import check_search_space, search_space, trial_config
from handray.train.tune import concurrent_trials
from tests.cluster import bystander_cluster, hold_cpus, still_held

pytestmark = pytest.mark.slow  # a Ray cluster and a Tune sweep

# Four trials of two epochs, two at a time, so the last two reach ASHA's first rung (epoch 1)
# after the first two are recorded there. Seed 4 samples the learning rates 0.01, 5.1e-05,
# 0.015 and 2.7e-07: the last trial barely trains and ends its first epoch clearly behind.
# One anchor set, as a validation loss compares trials only when their anchors match.
SWEEP = [
    "--preset",
    "tiny",
    "--trials",
    "4",
    "--epochs",
    "2",
    "--metric",
    "val_loss",
    "--set",
    "data.image_size=64",
    "train.steps_per_epoch=16",
    "train.validation_steps=2",
    "train.images_per_worker=2",
    "train.warmup_steps=2",
    "train.optimizer=sgd",  # the lowest rate then learns slowest, the trial ASHA must stop
    "train.eval_every=0",
    "tune.learning_rate=[1.0e-7, 0.02]",
    "tune.anchor_sets=[hand-small]",
    "tune.max_concurrent=2",
    "tune.seed=4",
]


@pytest.fixture(scope="module")
def hands(tmp_path_factory):
    root = tmp_path_factory.mktemp("hands")
    generate_dataset(root, train=8, val=4, size=64, seed=5, workers=1, progress=False)
    return root


@pytest.fixture(scope="module")
def bystander(ray_cluster):
    """Another Ray cluster on the machine for the module's length; what its own task got from
    the state API."""
    with bystander_cluster() as report:
        yield report


@pytest.fixture(scope="module")
def sweep(ray_cluster, bystander, hands, tmp_path_factory):
    """A finished sweep, run as a user would, beside another cluster: the runs folder, the
    sweep folder, its command."""
    storage = tmp_path_factory.mktemp("runs")
    command = ["tune", "--dataset", str(hands), "--out", str(storage / "tune"), *SWEEP]
    assert main([*command, "--name", "lr"]) == 0
    return storage, storage / "tune" / "lr", command


def read_trials(sweep_dir):
    with open(sweep_dir / "trials.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_every_trial_ends_and_asha_stops_the_worst_early(sweep):
    _, sweep_dir, _ = sweep
    rows = read_trials(sweep_dir)
    assert len(rows) == 4
    assert all(row["error"] == "" for row in rows)
    for row in rows:
        stopped = row["stopped_early"] == "True"
        assert int(row["epochs"]) == (1 if stopped else 2)
    slowest = min(rows, key=lambda row: float(row["learning_rate"]))
    assert slowest["stopped_early"] == "True"
    assert {row["anchors"] for row in rows} == {"hand-small"}


@ray.remote(num_cpus=0)
def nodes_the_state_api_names() -> list[str]:
    from ray.util.state import list_nodes

    return [node.node_id for node in list_nodes()]


def test_beside_another_cluster_the_state_api_still_answers_inside_this_one(sweep, bystander):
    """Ray Train's placement-group cleaner asks the state API, without an address, whether a
    run's controller lives. In a plain cluster beside another that call is refused (the
    bystander's own task, the reference), the cleaner's thread died, the placement group of
    the trial ASHA stopped was never removed, and the next trial waited for its CPUs for good.
    The shared cluster, started by `handray.core.local_ray`, answers for itself; the sweep above
    ran beside the bystander, ended every trial and freed every CPU
    (`test_the_sweep_leaves_every_cpu_free`)."""
    assert bystander.startswith("refused: Found multiple active Ray instances"), bystander
    assert "RAY_ADDRESS" not in os.environ  # only the cluster's processes were told it
    here = ray.get_runtime_context().get_node_id()
    assert ray.get(nodes_the_state_api_names.remote(), timeout=120) == [here]


def test_best_json_names_the_best_trial_and_its_checkpoint_loads(sweep):
    storage, sweep_dir, _ = sweep
    rows = read_trials(sweep_dir)
    best = json.loads((sweep_dir / "best.json").read_text())
    lowest = min(rows, key=lambda row: float(row["val_loss"]))
    assert (best["trial"], best["metric"], best["mode"]) == (lowest["trial"], "val_loss", "min")
    assert best["value"] == pytest.approx(float(lowest["val_loss"]))
    checkpoint = sweep_dir / best["checkpoint"]
    assert str(checkpoint) == lowest["checkpoint"]
    for spec in (sweep_dir, sweep_dir / "best.json"):
        assert resolve_checkpoint(spec) == checkpoint
    model, config, path = load_trained_model("best", storage=storage, jit_compile=False)
    assert path == checkpoint and read_state(path).epoch == best["epochs"]
    assert config.train.learning_rate == pytest.approx(best["config"]["learning_rate"])
    assert config.model.rpn_anchor_scales == ANCHOR_SETS[best["config"]["anchors"]]
    assert model.get_layer("mrcnn_mask").get_weights()  # weights loaded by name, none missing


def test_a_finished_sweep_resumes_without_training_again(sweep, capsys):
    _, sweep_dir, command = sweep
    before = read_trials(sweep_dir)
    checkpoints = sorted(sweep_dir.glob("runs/*/checkpoint_*"))
    assert main([*command, "--resume"]) == 0  # the newest sweep under --out
    assert f"resuming sweep {sweep_dir}" in capsys.readouterr().out
    assert read_trials(sweep_dir) == before
    assert sorted(sweep_dir.glob("runs/*/checkpoint_*")) == checkpoints


def test_the_sweep_leaves_every_cpu_free(sweep):
    # Its trials ended: two finished, one stopped by ASHA at its first rung, one resumed.
    assert still_held() is None


def test_a_trial_that_cannot_be_placed_ends_errored_in_trials_csv(ray_cluster, hands, tmp_path):
    """Another actor holds all but 0.5 CPU: the trial's driver (0.25 CPU) starts, its
    one-CPU worker cannot; the sweep must end within the bound with the reason."""
    free = ray.available_resources().get("CPU", 0.0)  # Ray leaves out a resource all in use
    hog = hold_cpus(free - 0.5)
    out = tmp_path / "tune"
    command = ["tune", "--dataset", str(hands), "--out", str(out), "--name", "held", *SWEEP]
    command += ["--trials", "1", "--set", "train.start_timeout_s=5"]
    started = time.monotonic()
    try:
        assert main(command) == 2  # no trial reported its metric
    finally:
        ray.kill(hog)
    assert time.monotonic() - started < 120
    (row,) = read_trials(out / "held")
    assert "could not be placed within 5 s" in row["error"], row
    assert f"actor Hog ({free - 0.5:g} CPU)" in row["error"] and row["checkpoint"] == ""
    assert still_held() is None


def test_search_space_applies_named_anchor_sets_and_extra_keys():
    config = load_config(
        "tiny",
        {
            "tune.anchor_sets": ["hand-small", "coco"],
            "tune.extra": {"train.weight_decay": [0.0001, 0.001]},
        },
    )
    check_search_space(config)
    assert set(search_space(config.tune)) == {"learning_rate", "anchors", "train.weight_decay"}
    trial = trial_config(
        config, {"learning_rate": 0.003, "anchors": "coco", "train.weight_decay": 0.001}
    )
    assert trial.train.learning_rate == 0.003 and trial.train.weight_decay == 0.001
    assert trial.model.rpn_anchor_scales == (32, 64, 128, 256, 512)
    assert trial.train.eval_every == 1  # AP, the default metric, is compared every epoch


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tune.extra": {"train.weight_decay": ["high"]}}, "train.weight_decay: expected float"),
        ({"tune.extra": {"train.nope": [1]}}, "unknown key 'train.nope'"),
        ({"model.backbone_strides": [4, 8, 16, 32]}, "one scale per pyramid level"),
        ({"tune.grace_period": 5, "train.epochs": 2}, "tune.grace_period: 5 epochs"),
    ],
)
def test_a_search_space_that_builds_a_bad_trial_is_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_search_space(load_config("tiny", overrides))


def test_concurrency_leaves_every_trial_its_workers():
    settings = load_config("tiny", {"tune.trials": 8}).tune
    one_worker, two_workers = WorkerResources(1), WorkerResources(2)
    two_gpu_workers = WorkerResources(2, gpus_per_worker=1, cpus_per_worker=1)
    assert concurrent_trials(settings, {"CPU": 4.0}, one_worker) == 3  # 1.25 CPUs a trial
    assert concurrent_trials(settings, {"CPU": 16.0, "GPU": 2.0}, two_gpu_workers) == 1
    with pytest.raises(HandrayError, match="one trial needs 2.25 CPUs"):
        concurrent_trials(settings, {"CPU": 2.0}, two_workers)
    settings.max_concurrent = 4  # an autoscaling cluster: trusted as given
    assert concurrent_trials(settings, {"CPU": 2.0}, two_workers) == 4


def handray_lines(stderr: str) -> list[str]:
    """The command's own lines: Ray forwards other actors' logs of the shared cluster, e.g.
    "(PlacementGroupCleaner pid=1) ...", to this driver's stderr too."""
    forwarded = re.compile(r"^(\x1b\[\d+m)?\(\w+ pid=\d+")
    return [line for line in stderr.splitlines() if not forwarded.match(line)]


def test_job_entry_point_and_bad_requests_are_one_error_line(hands, tmp_path, capsys):
    job = Path(__file__).resolve().parents[2] / "jobs" / "tune.py"
    done = subprocess.run(
        [sys.executable, str(job), "--help"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and "--workers-per-trial" in done.stdout, done.stderr
    out = str(tmp_path / "tune")
    cases = [
        (["--dataset", str(tmp_path / "missing")], "missing"),
        (["--dataset", str(hands), "--metric", "accuracy"], "tune.metric: 'accuracy'"),
        (["--dataset", str(hands), "--set", "tune.anchor_sets=[huge]"], "unknown anchor set"),
        (["--dataset", str(hands), "--resume"], "no sweep to resume"),
    ]
    for args, message in cases:
        assert main(["tune", "--preset", "tiny", "--out", out, *args]) == 2
        err = handray_lines(capsys.readouterr().err)
        assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err
    with pytest.raises(HandrayError, match="no finished sweep"):
        resolve_checkpoint("best", storage=tmp_path)
