"""Distributed training with Ray Train: workers, checkpoints, failures and resumption.

Ray Train starts one process per worker and `worker_cluster.MultiWorkerConfig` sets its
`TF_CONFIG`, so each worker builds a `MultiWorkerMirroredStrategy` and runs `loop.train_worker`
on its own shard of the dataset. The chief (rank 0) writes a checkpoint each epoch and every
rank reports its metrics with `ray.train.report`; Ray keeps the checkpoints under
`STORAGE/NAME/`.

A run is known by its name: starting a run whose folder already holds checkpoints resumes from
the newest (weights, optimizer and epoch), whether it failed, was interrupted or finished and
is now given more epochs. Within a run Ray restarts failed workers up to `train.max_failures`
times, each time from the last checkpoint.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from handray.config import LOSS_NAMES, Config, config_from_dict
from handray.core.errors import HandrayError
from handray.inference.checkpoints import (
    CONFIG_FILE,
    DEFAULT_STORAGE,
    TrainingState,
    latest_checkpoint,
    newest_run,
    read_state,
)
from handray.train import placement
from handray.train.driver import check_inputs, new_name, start_driver
from handray.train.resources import WorkerResources
from handray.train.worker_cluster import MultiWorkerConfig

TENSORBOARD_DIR = "tensorboard"  # inside the run folder
TRAINING_WORKERS = WorkerResources(workers=2)  # `handray train`'s default: two one-CPU workers
LOSS_PANELS = (
    (
        "training losses",
        ("loss", *LOSS_NAMES),
    ),
    ("validation loss", ("loss", "val_loss")),
    (
        "validation AP (fixed subset)",
        (
            "val_mask_ap",
            "val_mask_ap50",
            "val_box_ap",
            "val_agnostic_mask_ap50",
            "val_side_accuracy",
        ),
    ),
    (
        "stages (validation batches): RPN, proposals, heads",
        (
            "val_proposal_recall_50",
            "val_proposal_recall_70",
            "roi_positive_ratio",
            "val_head_fg_accuracy",
            "val_handedness_accuracy",
        ),
    ),
    ("RPN positive anchors per hand", ("rpn_positives_per_hand",)),
)


@dataclass
class TrainingRun:
    """The outcome a user needs: where the run lives, its last checkpoint, its final state."""

    run_dir: Path
    checkpoint: Path
    state: TrainingState
    curves: Path | None


def run_training(
    config: Config,
    dataset_dir: str | os.PathLike,
    *,
    weights: str = "none",
    resources: WorkerResources = TRAINING_WORKERS,
    name: str | None = None,
    storage: str | os.PathLike = DEFAULT_STORAGE,
    verbose: bool = True,
) -> TrainingRun:
    """Train `config` on the dataset with Ray Train (connecting to the running Ray cluster, or
    starting a local one); returns the finished run.

    `weights` is `none`, `coco`, `imagenet`, a checkpoint/run folder or `.h5` file, or `last`
    (continue the newest run in `storage`).
    """
    import ray

    inputs = check_inputs(config, dataset_dir, resources, storage, "--storage", verbose=verbose)
    storage, dataset_dir, say = inputs.folder, inputs.dataset_dir, inputs.say
    if weights == "last":
        run = newest_run(storage)
        if run is None:
            raise HandrayError(f"--weights last: no run with checkpoints under {storage}")
        name = name or run.name
    name = name or new_name(config.preset)
    run_dir = storage / name
    resume = latest_checkpoint(run_dir)
    if resume is not None:
        _check_same_model(config, resume)
        if (state := read_state(resume)).epoch >= config.train.epochs:
            # Nothing to train: no cluster, no workers, nothing waits for resources.
            say(f"run {name} already has {state.epoch} of {config.train.epochs} epochs")
            return _finished(run_dir, resume, state, say)
        say(f"resuming run {name} from {resume} (epoch {state.epoch})")
    start_driver(
        config,
        weights,
        say,
        resuming=resume is not None or weights == "last",
        plan=f"training on {resources.workers} worker(s); run folder {run_dir}",
    )
    trainer = build_trainer(
        config,
        dataset_dir,
        weights=None if weights == "last" else weights,
        resources=resources,
        name=name,
        storage=storage,
    )
    try:
        result = placement.fit(
            trainer, resources, config.train.start_timeout_s, f"training run {name}"
        )
    except ray.train.TrainingFailedError as err:
        raise HandrayError(
            f"training run {name} failed after {config.train.max_failures} restarts: {err}\n"
            f"Its checkpoints are in {run_dir}; the same command resumes from the last one."
        ) from None
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise HandrayError(f"training run {name} finished without a checkpoint in {run_dir}")
    if result.best_checkpoints:
        best = min(result.best_checkpoints, key=lambda pair: pair[1].get("val_loss", 1e30))
        say(f"lowest validation loss: {best[0].path}")
    return _finished(run_dir, checkpoint, read_state(checkpoint), say)


def _finished(
    run_dir: Path, checkpoint: Path, state: TrainingState, say: Callable[[str], None]
) -> TrainingRun:
    """The run as its newest checkpoint (whose `state` is given) leaves it, with its loss
    curves drawn again."""
    curves = None
    if state.history:
        from handray.core.plot import plot_history

        curves = plot_history(state.history, run_dir / "loss_curves.png", LOSS_PANELS)
    say(f"finished {state.epoch} epochs ({state.step} steps) of run {run_dir.name}")
    say(f"checkpoint: {checkpoint}")
    say(f"loss curves: {curves}\nTensorBoard: tensorboard --logdir {run_dir / TENSORBOARD_DIR}")
    return TrainingRun(run_dir, checkpoint, state, curves)


def build_trainer(
    config: Config,
    dataset_dir: Path,
    *,
    weights: str | None,
    resources: WorkerResources,
    name: str,
    storage: Path,
    callbacks: list | None = None,
    log_prefix: str = "",
):
    """The Ray Train trainer of one run, `STORAGE/NAME`, whose workers run `worker_loop`;
    `callbacks` are Ray Train user callbacks (a Tune trial forwards its reports with one) and
    `log_prefix` starts each progress line (which trial of a sweep it comes from)."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    return DataParallelTrainer(
        worker_loop,
        backend_config=MultiWorkerConfig(),
        train_loop_config={
            "config": config.to_dict(),
            "dataset_dir": str(dataset_dir),
            "start_weights": weights,
            "cpu_threads": resources.threads,
            "run_dir": str(storage / name),
            "log_prefix": log_prefix,
        },
        scaling_config=resources.scaling_config(),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage),
            # Worker failures restart the run; a start that cannot be placed within
            # train.start_timeout_s fails at once instead (placement.fit says why).
            failure_config=FailureConfig(
                max_failures=config.train.max_failures, controller_failure_limit=0
            ),
            checkpoint_config=CheckpointConfig(
                num_to_keep=config.train.keep_checkpoints,
                checkpoint_score_attribute="val_loss",
                checkpoint_score_order="min",
            ),
            logging_config=LoggingConfig(log_level="WARNING"),
            callbacks=callbacks,
            worker_runtime_env={"env_vars": _worker_environment(resources)},
        ),
    )


def worker_loop(loop_config: dict[str, Any]) -> None:
    """What each Ray Train worker runs: its strategy, then the shared loop from the run's newest
    checkpoint (Ray's after a failure, or the newest in the run folder when a run of this name
    is started again) or else from the start weights."""
    from handray.core.xla_cache import use_xla_cache

    use_xla_cache()  # this node's cache, before TensorFlow runs its first op here
    import ray.train
    import tensorflow as tf

    from handray.train.loop import WorkerContext, train_worker

    # Else TensorFlow logs a line per all-reduce and Ray Train one per report (with all metrics).
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    context = ray.train.get_context()
    is_chief = context.get_world_rank() == 0
    prefix = loop_config["log_prefix"]

    def report(metrics: dict[str, float], staging: Path | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(str(staging)) if staging else None
        ray.train.report(metrics, checkpoint=checkpoint)

    worker = WorkerContext(
        strategy=tf.distribute.MultiWorkerMirroredStrategy(),
        is_chief=is_chief,
        report=report,
        tensorboard_dir=Path(loop_config["run_dir"]) / TENSORBOARD_DIR,
        cpu_threads=loop_config["cpu_threads"],
        log=(lambda line: print(prefix + line, flush=True)) if is_chief else (lambda line: None),
    )
    config = config_from_dict(loop_config["config"])
    dataset_dir = loop_config["dataset_dir"]
    checkpoint = ray.train.get_checkpoint()
    on_disk = latest_checkpoint(loop_config["run_dir"])
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            if on_disk is None or read_state(on_disk).epoch <= read_state(directory).epoch:
                train_worker(config, dataset_dir, worker, resume_from=directory)
                return
    if on_disk is not None:
        # Ray registers reports when it polls the workers; a worker that dies right after
        # writing a checkpoint can leave the newest one on disk but unknown to Ray.
        train_worker(config, dataset_dir, worker, resume_from=on_disk)
        return
    train_worker(config, dataset_dir, worker, start_weights=loop_config["start_weights"])


def _worker_environment(resources: WorkerResources) -> dict[str, str]:
    """Worker process variables, read before TensorFlow starts: its thread pools sized to the
    CPUs Ray gave the worker (workers share machines), and quiet logs."""
    threads = str(resources.threads)
    return {
        "TF_NUM_INTRAOP_THREADS": threads,
        "TF_NUM_INTEROP_THREADS": threads,
        "OMP_NUM_THREADS": threads,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        # Ray Train routes `print` through its logger, which shows lines twice and defeats
        # pycocotools' silenced summaries.
        "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    }


def _check_same_model(config: Config, checkpoint: Path) -> None:
    """A resumed run must build the model its checkpoint holds."""
    from handray.config import load_config

    saved = load_config(checkpoint / CONFIG_FILE)
    if saved.model != config.model or saved.data.image_size != config.data.image_size:
        raise HandrayError(
            f"{checkpoint.parent} was trained with a different model (preset {saved.preset}); "
            "resume it with the same preset and model settings, or choose a new --name"
        )
