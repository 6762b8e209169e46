"""Weight averages (`handray.train.averaging`): the update against a numpy reference, the swap,
the update's place in the compiled train step, and two workers holding the same averages."""

import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import ray.cloudpickle
import tensorflow as tf

from handray.config import load_config
from handray.data.coco import load_dataset
from handray.data.pipeline import build_dataset
from handray.data.synthetic import generate_dataset
from handray.inference.checkpoints import OPTIMIZER_FILE, WEIGHTS_FILE
from handray.model import build_model
from handray.model.weights import load_weights
from handray.train.averaging import WeightAverages
from handray.train.checkpoint import RAW_PREFIX
from handray.train.step import make_train_step

# Ray Train workers unpickle this module's worker function by value: pytest imports it by a
# name worker processes cannot import.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def reference_decay(decay: float, n: int) -> float:
    return min(decay, (1 + n) / (10 + n))


def random_variables(rng, shapes):
    return [keras.Variable(rng.normal(size=shape).astype("float32")) for shape in shapes]


def test_update_follows_the_numpy_reference_with_the_decay_warm_up():
    rng = np.random.default_rng(0)
    trained = random_variables(rng, [(3, 4), (5,)])
    frozen = keras.Variable(rng.normal(size=(2, 2)).astype("float32"))
    steps = keras.Variable(0, dtype="int64")
    averages = WeightAverages([*trained, frozen], 0.9, steps)
    update = tf.function(averages.update)  # compiled, as in the train step
    expected = [v.numpy().astype(np.float64) for v in (*trained, frozen)]
    for n in (1, 2, 3, 100, 101):  # the warm-up of the decay, then the decay itself (0.9)
        for variable in trained:
            variable.assign(rng.normal(size=variable.shape).astype("float32"))
        steps.assign(n)
        update()
        d = reference_decay(0.9, n)
        expected = [
            d * e + (1 - d) * v.numpy() for e, v in zip(expected, (*trained, frozen), strict=True)
        ]
        for shadow, value in zip(averages.shadows, expected, strict=True):
            np.testing.assert_allclose(shadow.numpy(), value, rtol=1e-5, atol=1e-6)
    assert reference_decay(0.9, 1) == pytest.approx(2 / 11)  # the first steps barely keep the start
    # A variable that does not change keeps a shadow exactly equal to it.
    np.testing.assert_array_equal(averages.shadows[-1].numpy(), frozen.numpy())


def test_applied_swaps_the_averages_in_and_restores_the_raw_weights_exactly():
    rng = np.random.default_rng(1)
    variables = random_variables(rng, [(4, 3), (7,)])
    steps = keras.Variable(5, dtype="int64")
    averages = WeightAverages(variables, 0.99, steps)
    for variable in variables:
        variable.assign(rng.normal(size=variable.shape).astype("float32"))
    averages.update()
    raw = [v.numpy() for v in variables]
    shadows = [s.numpy() for s in averages.shadows]
    assert not any(np.array_equal(r, s) for r, s in zip(raw, shadows, strict=True))
    with averages.applied():
        for variable, shadow in zip(variables, shadows, strict=True):
            np.testing.assert_array_equal(variable.numpy(), shadow)
    for variable, value in zip(variables, raw, strict=True):
        np.testing.assert_array_equal(variable.numpy(), value)
    with pytest.raises(RuntimeError, match="inside"), averages.applied():
        raise RuntimeError("inside")
    for variable, value in zip(variables, raw, strict=True):
        np.testing.assert_array_equal(variable.numpy(), value)
    for shadow, value in zip(averages.shadows, shadows, strict=True):  # shadows untouched
        np.testing.assert_array_equal(shadow.numpy(), value)


@pytest.mark.slow  # compiles a train step
def test_the_train_step_averages_the_weights_after_each_update(tmp_path):
    """The shadows follow the reference computed from the weights after each optimizer
    update: an update run before `apply_gradients` would average the previous weights."""
    generate_dataset(tmp_path, train=4, val=1, size=64, seed=2, workers=1, progress=False)
    config = load_config(
        "tiny",
        {"data.image_size": 64, "data.augment": False, "train.optimizer": "sgd"},
    )
    batches = iter(build_dataset(load_dataset(tmp_path), config, training=True, repeat=True))
    keras.utils.set_random_seed(0)
    model = build_model(config, jit_compile=False)
    optimizer = keras.optimizers.SGD(0.05, name="sgd")
    optimizer.build(model.trainable_variables)
    averages = WeightAverages(model.trainable_variables, 0.9, optimizer.iterations)
    step = make_train_step(model, optimizer, config, after_update=averages.update)
    expected = [v.numpy().astype(np.float64) for v in model.trainable_variables]
    start = [v.numpy() for v in model.trainable_variables]
    for n in (1, 2, 3):
        step(next(batches))
        d = reference_decay(0.9, n)
        expected = [
            d * e + (1 - d) * v.numpy()
            for e, v in zip(expected, model.trainable_variables, strict=True)
        ]
        for shadow, value in zip(averages.shadows, expected, strict=True):
            np.testing.assert_allclose(shadow.numpy(), value, rtol=1e-4, atol=1e-6)
    changed = sum(
        not np.array_equal(a, v.numpy())
        for a, v in zip(start, model.trainable_variables, strict=True)
    )
    assert changed > len(start) // 2  # the steps did move the weights


def every_rank_checkpoints(loop_config):
    """One Ray Train worker under `MultiWorkerMirroredStrategy` that keeps its own last
    checkpoint (each rank acts as chief), so the ranks' files can be compared."""
    import ray.train
    import tensorflow as tf

    from handray.config import config_from_dict
    from handray.train.loop import WorkerContext, train_worker

    rank = ray.train.get_context().get_world_rank()
    out = Path(loop_config["out"]) / f"rank{rank}"

    def report(metrics, staging):
        out.mkdir(parents=True, exist_ok=True)
        for path in staging.iterdir():
            (out / path.name).write_bytes(path.read_bytes())
        ray.train.report(metrics)

    context = WorkerContext(
        strategy=tf.distribute.MultiWorkerMirroredStrategy(), is_chief=True, report=report
    )
    train_worker(config_from_dict(loop_config["config"]), loop_config["dataset"], context)


@pytest.mark.slow  # a Ray cluster and a two-worker training run
def test_two_workers_hold_identical_averages(ray_cluster, tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    generate_dataset(tmp_path / "hands", train=8, val=4, size=64, seed=5, workers=1, progress=False)
    config = load_config(
        "tiny",
        {
            "data.image_size": 64,
            "train.epochs": 1,
            "train.steps_per_epoch": 3,
            "train.validation_steps": 1,
            "train.images_per_worker": 2,
            "train.eval_every": 0,
            "train.warmup_steps": 2,
            "train.ema_decay": 0.9,
        },
    )
    TensorflowTrainer(
        every_rank_checkpoints,
        train_loop_config={
            "config": config.to_dict(),
            "dataset": str(tmp_path / "hands"),
            "out": str(tmp_path / "out"),
        },
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name="averages", storage_path=str(tmp_path / "storage")),
    ).fit()
    averaged, raw = [], []
    for rank in (0, 1):
        model = build_model(config, jit_compile=False)
        load_weights(model, tmp_path / "out" / f"rank{rank}" / WEIGHTS_FILE)
        averaged.append({v.path: v.numpy() for v in model.weights})
        with np.load(tmp_path / "out" / f"rank{rank}" / OPTIMIZER_FILE) as saved:
            raw.append({k: saved[k] for k in saved.files if k.startswith(RAW_PREFIX)})
    assert averaged[0].keys() == averaged[1].keys() and raw[0].keys() == raw[1].keys()
    for path in averaged[0]:
        np.testing.assert_array_equal(averaged[0][path], averaged[1][path], err_msg=path)
    for name in raw[0]:
        np.testing.assert_array_equal(raw[0][name], raw[1][name], err_msg=name)
    differing = [
        name
        for name in raw[0]
        if not np.array_equal(raw[0][name], averaged[0][name.removeprefix(RAW_PREFIX)])
    ]
    assert len(differing) > len(raw[0]) // 2  # the files do hold averages beside raw weights
