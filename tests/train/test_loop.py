"""The training loop in one process: schedule, stages, checkpoints and exact resumption."""

import json
import shutil

import keras
import numpy as np
import pytest

from handray.config import load_config
from handray.data.synthetic import generate_dataset
from handray.inference.checkpoints import (
    OPTIMIZER_FILE,
    WEIGHTS_FILE,
    latest_checkpoint,
    read_state,
)
from handray.model.weights import load_weights
from handray.train.checkpoint import write_checkpoint
from handray.train.loop import WarmupStepDecay, WorkerContext, stage_at, train_worker


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


@pytest.mark.slow  # a training run
def test_loop_trains_checkpoints_and_resumes_exactly(hands, tmp_path):
    keras.utils.set_random_seed(0)
    config = small_config(**{"train.stages": {"heads": 1, "all": 2}})
    first = Collector(tmp_path / "first")
    state = train_worker(config, hands, WorkerContext(report=first))
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
    longer = small_config(**{"train.stages": {"heads": 1, "all": 2}, "train.epochs": 3})
    second = Collector(tmp_path / "second")
    state = train_worker(
        longer, hands, WorkerContext(report=second), resume_from=first.checkpoints[-1]
    )
    assert (state.epoch, state.step, state.sessions) == (3, 9, 2)
    assert [m["epoch"] for m in state.history] == [1, 2, 3]
    assert [m["epoch"] for m in second.metrics] == [3]

    # Nothing to do when the run already has its epochs.
    again = train_worker(
        longer, hands, WorkerContext(report=second), resume_from=second.checkpoints[-1]
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


@pytest.mark.slow  # a training run
def test_mixed_precision_trains_with_finite_losses(hands, tmp_path):
    config = small_config(**{"train.mixed_precision": True, "train.epochs": 1})
    collector = Collector(tmp_path)
    train_worker(config, hands, WorkerContext(report=collector))
    assert np.isfinite(collector.metrics[0]["loss"])
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored


@pytest.mark.slow  # training runs
@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_group_norm_with_adam_trains_and_checkpoints_its_optimizer(hands, tmp_path, optimizer):
    """The from-scratch recipe: group norm (no moving statistics to average across workers)
    with Adam or AdamW (whose decay replaces the loss's weight-decay term)."""
    config = small_config(
        **{"model.norm": "group", "train.optimizer": optimizer, "train.epochs": 1}
    )
    collector = Collector(tmp_path)
    train_worker(config, hands, WorkerContext(report=collector))
    metrics = collector.metrics[0]
    assert np.isfinite(metrics["loss"])
    assert ("weight_decay_loss" in metrics) == (optimizer == "adam")
    assert 0.0 <= metrics["val_proposal_recall_50"] <= 1.0

    from handray.model import build_model
    from handray.train.checkpoint import restore_optimizer
    from handray.train.loop import make_optimizer

    model = build_model(config)
    assert not [v for v in model.weights if v.name in ("moving_mean", "moving_variance")]
    assert model.get_layer("bn_conv1").__class__.__name__ == "GroupNormalization"
    fresh = make_optimizer(config.train)
    fresh.build(model.trainable_variables)
    assert restore_optimizer(fresh, collector.checkpoints[0]) == len(fresh.variables)
