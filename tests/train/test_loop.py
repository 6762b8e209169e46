"""The training loop in one process: schedule, stages, checkpoints and exact resumption."""

import json
import re
import shutil

import keras
import numpy as np
import pytest

from handray.config import load_config
from handray.core.errors import ConfigError
from handray.data.synthetic import generate_dataset
from handray.inference.checkpoints import (
    OPTIMIZER_FILE,
    WEIGHTS_FILE,
    latest_checkpoint,
    read_state,
)
from handray.model import build_model
from handray.model.weights import load_weights
from handray.train import loop
from handray.train.checkpoint import RAW_PREFIX, write_checkpoint
from handray.train.loop import (
    WarmupCosineDecay,
    WarmupStepDecay,
    WorkerContext,
    make_optimizer,
    stage_at,
    train_worker,
)


@pytest.fixture(scope="module")
def hands(tmp_path_factory):
    root = tmp_path_factory.mktemp("hands")
    generate_dataset(root, train=8, val=4, size=64, seed=3, workers=1, progress=False)
    return root


def small_config(**overrides):
    return load_config(
        "tiny",
        {
            "data.image_size": 64,
            "train.epochs": 2,
            "train.steps_per_epoch": 3,
            "train.validation_steps": 1,
            "train.images_per_worker": 2,
            "train.eval_every": 0,
            "train.warmup_steps": 4,
            **overrides,
        },
    )


class Collector:
    """A report callback that keeps each epoch's metrics and a copy of each checkpoint."""

    def __init__(self, root):
        self.root, self.metrics, self.checkpoints = root, [], []

    def __call__(self, metrics, staging):
        self.metrics.append(metrics)
        target = self.root / f"epoch_{int(metrics['epoch'])}"
        target.mkdir(parents=True)
        for path in staging.iterdir():
            (target / path.name).write_bytes(path.read_bytes())
        self.checkpoints.append(target)


def test_warmup_and_step_decay_follow_the_numpy_reference():
    schedule = WarmupStepDecay(0.02, warmup_steps=10, boundaries=[30, 50], factor=0.1)
    steps = np.arange(0, 70)
    expected = (
        0.02
        * np.minimum(1.0, 0.1 + 0.9 * steps / 10)
        * 0.1 ** ((steps >= 30).astype(int) + (steps >= 50).astype(int))
    )
    actual = np.array([float(schedule(s)) for s in steps])
    np.testing.assert_allclose(actual, expected, rtol=1e-6)


def test_warmup_and_cosine_decay_follow_the_closed_form():
    schedule = WarmupCosineDecay(0.02, warmup_steps=10, total_steps=70)
    steps = np.arange(0, 80)
    progress = np.clip((steps - 10) / 60, 0.0, 1.0)
    expected = 0.02 * np.minimum(1.0, 0.1 + 0.9 * steps / 10) * 0.5 * (1 + np.cos(np.pi * progress))
    actual = np.array([float(schedule(s)) for s in steps])
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-9)
    assert float(schedule(0)) == pytest.approx(0.002)  # a tenth at the start of the warm-up
    assert float(schedule(5)) == pytest.approx(0.02 * 0.55)  # halfway up the ramp
    assert float(schedule(10)) == pytest.approx(0.02)  # the full rate after the warm-up
    assert float(schedule(40)) == pytest.approx(0.01)  # half of it halfway through the decay
    assert float(schedule(70)) == 0.0 and float(schedule(79)) == 0.0  # zero at the end


def test_make_optimizer_decays_to_zero_at_the_runs_last_step_under_cosine():
    config = load_config(
        "tiny",
        {
            "train.lr_schedule": "cosine",
            "train.epochs": 4,
            "train.steps_per_epoch": 25,
            "train.warmup_steps": 20,
            "train.lr_decay_epochs": [2],  # the step schedule's; cosine ignores it
        },
    )
    optimizer = make_optimizer(config.train)
    rate = config.train.learning_rate
    for step, expected in [(20, rate), (60, rate / 2), (99, None), (100, 0.0)]:
        optimizer.iterations.assign(step)
        if expected is None:
            assert 0 < float(optimizer.learning_rate) < rate * 1e-3
        else:
            assert float(optimizer.learning_rate) == pytest.approx(expected, abs=1e-9)
    stepped = load_config("tiny", {"train.lr_decay_epochs": [2]}).train
    optimizer = make_optimizer(stepped)
    optimizer.iterations.assign(10_000)
    assert float(optimizer.learning_rate) == pytest.approx(0.1 * stepped.learning_rate)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train.lr_schedule": "linear"}, "train.lr_schedule: 'linear' is not one of"),
        (
            {"train.lr_schedule": "cosine", "train.epochs": 2, "train.steps_per_epoch": 3},
            "train.warmup_steps: must be below the run's 6 steps",
        ),
        ({"train.ema_decay": 1.0}, "train.ema_decay: must be 0 (off) or within (0, 1)"),
        ({"train.ema_decay": -0.1}, "train.ema_decay: must be 0 (off) or within (0, 1)"),
    ],
)
def test_bad_schedule_and_averaging_values_are_named(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config("tiny", overrides)


def test_stages_follow_the_old_recipe():
    train = load_config("hand-r101").train
    assert [stage_at(train, e) for e in (0, 39, 40, 119, 120, 159, 200)] == [
        "heads",
        "heads",
        "4+",
        "4+",
        "all",
        "all",
        "all",
    ]
    assert stage_at(load_config("tiny").train, 5) == "all"


def spy_on_runs(monkeypatch) -> list[tuple[dict, dict]]:
    """Record each `train_worker` run's raw weights and averages at its start and end: what
    the model and the shadows hold, which the checkpoint files are compared with."""
    runs = []
    original = loop._Epochs.run

    def snapshot(epochs) -> dict:
        averages = epochs.averages
        return {
            "raw": {v.path: v.numpy() for v in averages.variables},
            "average": {
                v.path: s.numpy() for v, s in zip(averages.variables, averages.shadows, strict=True)
            },
        }

    def run(epochs):
        start = snapshot(epochs)
        original(epochs)
        runs.append((start, snapshot(epochs)))

    monkeypatch.setattr(loop._Epochs, "run", run)
    return runs


def checkpoint_weights(config, checkpoint) -> tuple[dict, dict]:
    """weights.h5 and the raw weights of the optimizer file, by variable path."""
    model = build_model(config, jit_compile=False)
    load_weights(model, checkpoint / WEIGHTS_FILE)
    with np.load(checkpoint / OPTIMIZER_FILE) as saved:
        raw = {
            k.removeprefix(RAW_PREFIX): saved[k] for k in saved.files if k.startswith(RAW_PREFIX)
        }
    return {v.path: v.numpy() for v in model.weights}, raw


STAGED_EMA = {"train.ema_decay": 0.9, "train.stages": {"heads": 1, "all": 2}}


class StagedRun:
    """Two epochs (heads, then all layers) with weight averaging, then resumed for a third:
    the runs of `train_worker` two tests read, each for its own part. `runs` holds each
    run's raw weights and averages at its start and end (`spy_on_runs`)."""

    def __init__(self, hands, root, runs):
        keras.utils.set_random_seed(0)
        self.config = small_config(**STAGED_EMA)
        self.first = Collector(root / "first")
        self.first_state = train_worker(self.config, hands, WorkerContext(report=self.first))
        self.longer = small_config(**STAGED_EMA, **{"train.epochs": 3})
        self.second = Collector(root / "second")
        self.second_state = train_worker(
            self.longer,
            hands,
            WorkerContext(report=self.second),
            resume_from=self.first.checkpoints[-1],
        )
        self.runs = list(runs)


@pytest.fixture(scope="module")
def staged_run(hands, tmp_path_factory) -> StagedRun:
    with pytest.MonkeyPatch.context() as monkeypatch:
        return StagedRun(hands, tmp_path_factory.mktemp("staged"), spy_on_runs(monkeypatch))


@pytest.mark.slow  # a training run
def test_loop_trains_checkpoints_and_resumes_exactly(staged_run, hands):
    first, state = staged_run.first, staged_run.first_state
    assert (state.epoch, state.step, state.sessions) == (2, 6, 1)
    assert [m["epoch"] for m in first.metrics] == [1, 2]
    assert first.metrics[-1]["loss"] < first.metrics[0]["loss"]
    assert all(m["val_loss"] > 0 for m in first.metrics)
    for checkpoint in first.checkpoints:
        assert {p.name for p in checkpoint.iterdir()} >= {WEIGHTS_FILE, OPTIMIZER_FILE}
    saved = read_state(first.checkpoints[-1])
    assert saved.epoch == 2 and len(saved.history) == 2
    # The heads stage froze the backbone: its first epoch's checkpoint has untouched conv1.
    momentum = np.load(first.checkpoints[0] / OPTIMIZER_FILE)
    conv1 = [k for k in momentum.files if k.endswith("/conv1_kernel_momentum")]
    heads = [k for k in momentum.files if k.endswith("/mrcnn_mask_conv1_kernel_momentum")]
    assert conv1 and heads
    assert not np.any(momentum[conv1[0]]) and np.any(momentum[heads[0]])

    # Resuming with one more epoch continues the step counter and keeps the history.
    second, state = staged_run.second, staged_run.second_state
    assert (state.epoch, state.step, state.sessions) == (3, 9, 2)
    assert [m["epoch"] for m in state.history] == [1, 2, 3]
    assert [m["epoch"] for m in second.metrics] == [3]
    assert np.isfinite(second.metrics[0]["val_loss"])

    # Nothing to do when the run already has its epochs.
    again = train_worker(
        staged_run.longer,
        hands,
        WorkerContext(report=second),
        resume_from=second.checkpoints[-1],
    )
    assert again.epoch == 3 and len(second.metrics) == 1


@pytest.mark.slow  # a training run
def test_checkpoint_round_trip_restores_weights_and_optimizer(hands, tmp_path):
    from handray.inference.checkpoints import TrainingState
    from handray.model import build_model
    from handray.train.checkpoint import restore_optimizer
    from handray.train.loop import make_optimizer

    config = small_config()
    model = build_model(config)
    optimizer = make_optimizer(config.train)
    optimizer.build(model.trainable_variables)
    for variable in optimizer.variables:
        variable.assign(np.random.default_rng(0).normal(size=variable.shape).astype(variable.dtype))
    checkpoint = tmp_path / "run" / "checkpoint_a"
    write_checkpoint(
        checkpoint, model, config, TrainingState(epoch=4, step=12, history=[]), optimizer
    )
    assert json.loads((checkpoint / "state.json").read_text())["epoch"] == 4
    assert latest_checkpoint(tmp_path / "run") == checkpoint

    other = build_model(config)
    report = load_weights(other, checkpoint / WEIGHTS_FILE)
    assert not report.missing and not report.skipped
    for a, b in zip(model.get_weights(), other.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    fresh = make_optimizer(config.train)
    fresh.build(other.trainable_variables)
    assert restore_optimizer(fresh, checkpoint) == len(fresh.variables)
    for a, b in zip(optimizer.variables, fresh.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())

    # Ray copies a checkpoint into storage file by file: a later folder whose state.json has
    # arrived but whose optimizer file is still short or absent must not be resumed from.
    copying = tmp_path / "run" / "checkpoint_b"
    shutil.copytree(checkpoint, copying)
    state = json.loads((copying / "state.json").read_text())
    (copying / "state.json").write_text(json.dumps({**state, "epoch": 5}))
    data = (copying / "optimizer.npz").read_bytes()
    (copying / "optimizer.npz").write_bytes(data[: len(data) // 2])
    assert latest_checkpoint(tmp_path / "run") == checkpoint
    (copying / "optimizer.npz").unlink()
    assert latest_checkpoint(tmp_path / "run") == checkpoint
    (copying / "optimizer.npz").write_bytes(data)
    assert latest_checkpoint(tmp_path / "run") == copying


# Each mixed precision trains once, with the from-scratch recipe's group norm and one of
# Adam or AdamW: two runs cover the four settings, and two tests read each run.
SHORT_RUNS = [("mixed_float16", "adam"), ("mixed_bfloat16", "adamw")]


@pytest.fixture(scope="module", params=SHORT_RUNS, ids=["-".join(run) for run in SHORT_RUNS])
def short_run(request, hands, tmp_path_factory):
    """One epoch of `train_worker` under (precision, optimizer) with group norm: its config,
    its `Collector` and its log lines."""
    precision, optimizer = request.param
    config = small_config(
        **{
            "train.precision": precision,
            "train.optimizer": optimizer,
            "model.norm": "group",
            "train.epochs": 1,
        }
    )
    collector, said = Collector(tmp_path_factory.mktemp("short")), []
    train_worker(config, hands, WorkerContext(report=collector, log=said.append))
    return config, collector, said


@pytest.mark.slow  # a training run
def test_mixed_precision_trains_with_finite_losses_and_float32_checkpoints(short_run):
    config, collector, said = short_run
    precision = config.train.precision
    assert np.isfinite(collector.metrics[0]["loss"])
    assert f"computing in {precision} (train.precision={precision})" in said
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    with np.load(collector.checkpoints[0] / OPTIMIZER_FILE) as saved:
        assert {saved[k].dtype.name for k in saved.files} <= {"float32", "int64"}
    float32_model = build_model(config, jit_compile=False)  # built under the global policy
    assert float32_model.get_layer("conv1").compute_dtype == "float32"
    report = load_weights(float32_model, collector.checkpoints[0] / WEIGHTS_FILE)
    assert not report.missing and not report.skipped  # a float32 model reads its weights


@pytest.mark.slow  # a training run
def test_group_norm_with_adam_trains_and_checkpoints_its_optimizer(short_run):
    """The from-scratch recipe: group norm (no moving statistics to average across workers)
    with Adam or AdamW (whose decay replaces the loss's weight-decay term)."""
    config, collector, _ = short_run
    metrics = collector.metrics[0]
    assert np.isfinite(metrics["loss"])
    assert ("weight_decay_loss" in metrics) == (config.train.optimizer == "adam")
    assert 0.0 <= metrics["val_proposal_recall_50"] <= 1.0

    from handray.train.checkpoint import restore_optimizer

    model = build_model(config)
    assert not [v for v in model.weights if v.name in ("moving_mean", "moving_variance")]
    assert model.get_layer("bn_conv1").__class__.__name__ == "GroupNormalization"
    fresh = make_optimizer(config.train)
    fresh.build(model.trainable_variables)
    assert restore_optimizer(fresh, collector.checkpoints[0]) == len(fresh.variables)


@pytest.mark.slow  # a training run
def test_averaged_weights_are_checkpointed_and_a_resume_trains_on_the_raw_ones(staged_run):
    config, first = staged_run.config, staged_run.first
    start, end = staged_run.runs[0]
    in_file, raw = checkpoint_weights(config, first.checkpoints[-1])
    assert raw.keys() == end["raw"].keys()
    for path, average in end["average"].items():
        np.testing.assert_array_equal(in_file[path], average, err_msg=path)  # weights.h5
        np.testing.assert_array_equal(raw[path], end["raw"][path], err_msg=path)
    differing = [p for p in raw if not np.array_equal(raw[p], in_file[p])]
    assert len(differing) > len(raw) // 2  # the averages are not the raw weights
    # The heads stage froze the backbone: after it, conv1's average is its start value exactly.
    in_file, raw = checkpoint_weights(config, first.checkpoints[0])
    conv1 = "conv1/kernel"  # the backbone's first convolution
    np.testing.assert_array_equal(in_file[conv1], start["raw"][conv1])
    np.testing.assert_array_equal(raw[conv1], start["raw"][conv1])

    # The resumed run starts from the raw weights, with the averages in its shadows.
    resumed, _ = staged_run.runs[1]
    for path in end["raw"]:
        np.testing.assert_array_equal(resumed["raw"][path], end["raw"][path], err_msg=path)
        np.testing.assert_array_equal(resumed["average"][path], end["average"][path], err_msg=path)
