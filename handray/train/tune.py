"""Ray Tune sweeps: the learning rate and anchor scales that suit a dataset, and the best model.

A sweep runs `tune.trials` trials, each one Ray Train run of the base config with its sampled
values (`search_space`; `trainer.build_trainer`, whose workers run the usual loop).
`TuneReportCallback` forwards each epoch's report to Tune, where ASHA stops the trials that fall
behind at its rungs, epochs counted by the reported `epoch` so that a resumed trial keeps its
place.

A trial's Tune function only waits on its Train run, so it holds a small CPU share; the workers
take their own CPUs and GPUs from Ray Train, outside it. Tune cannot see those, so the number of
trials running at once is capped to what fits the cluster, driver shares and workers together:
a driver never waits for workers that cannot start.

A sweep lives in `OUT/NAME/`: Tune's experiment state and per-trial results, `runs/TRIAL/` (each
trial's Train run and checkpoints), `config.yaml` (the base config), and at the end `trials.csv`
and `best.json` (`sweep_report`). Starting a sweep of an existing name resumes it: Tune restarts
the trials that had not ended, each from its own newest checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from handray.config import Config, TuneConfig, config_from_dict, load_config, save_config
from handray.core.errors import HandrayError
from handray.inference.checkpoints import CONFIG_FILE, DEFAULT_TUNE_OUT
from handray.train import placement
from handray.train.driver import check_inputs, new_name, start_driver
from handray.train.resources import WorkerResources
from handray.train.search_space import check_search_space, search_space, trial_config
from handray.train.sweep_report import MODES, Sweep, TrialProgress, finish_sweep
from handray.train.trainer import build_trainer

DRIVER_CPUS = 0.25  # a trial's Tune function: it only waits on its Train run
RUNS_DIR = "runs"  # the trials' Train runs, inside the sweep folder
TRIAL_WORKERS = WorkerResources(workers=1)  # `handray tune`'s default: one one-CPU worker


def run_tune(
    config: Config,
    dataset_dir: str | os.PathLike,
    *,
    weights: str = "none",
    resources: WorkerResources = TRIAL_WORKERS,
    name: str | None = None,
    out: str | os.PathLike = DEFAULT_TUNE_OUT,
    resume: bool = False,
    verbose: bool = True,
) -> Sweep:
    """Run (or resume) a sweep of `config.tune.trials` Ray Train runs on the running Ray
    cluster (or a local one) and write `trials.csv` and `best.json` into `OUT/NAME`.

    `resources` are each trial's workers. `resume` continues the sweep `name`, or without a
    name the newest sweep under `out`; a sweep of an existing `name` resumes without it too.
    """
    inputs = check_inputs(config, dataset_dir, resources, out, "--out", verbose=verbose)
    out, dataset_dir, say = inputs.folder, inputs.dataset_dir, inputs.say
    check_search_space(config)
    sweep_dir, resuming = _sweep_folder(out, name, resume, config.preset)
    if resuming:
        _check_same_config(config, sweep_dir)
    start_driver(config, weights, say, resuming=resuming)
    concurrency = concurrent_trials(config.tune, ray.cluster_resources(), resources)
    trainable = tune.with_resources(
        tune.with_parameters(
            _run_trial,
            sweep={
                "config": config.to_dict(),
                "dataset": str(dataset_dir),
                "weights": weights,
                "resources": resources,
                "runs": str(sweep_dir / RUNS_DIR),
            },
        ),
        {"cpu": DRIVER_CPUS},
    )
    if resuming:
        say(f"resuming sweep {sweep_dir}")
        tuner = tune.Tuner.restore(
            str(sweep_dir), trainable, resume_unfinished=True, resume_errored=True
        )
    else:
        say(
            f"{config.tune.trials} trials of {resources.workers} worker(s), {concurrency} at a "
            f"time, {config.train.epochs} epochs at most; sweep folder {sweep_dir}"
        )
        sweep_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, sweep_dir / CONFIG_FILE)
        tuner = tune.Tuner(
            trainable,
            param_space=search_space(config.tune),
            tune_config=_tune_settings(config, concurrency),
            run_config=tune.RunConfig(
                name=sweep_dir.name,
                storage_path=str(out),
                failure_config=tune.FailureConfig(max_failures=0),
                callbacks=[TrialProgress(config.tune.metric, config.train.epochs)],
                verbose=0,  # TrialProgress and the trials' epoch lines instead of Tune's tables
            ),
        )
    results = tuner.fit()
    return finish_sweep(config, sweep_dir, results, say)


def concurrent_trials(
    settings: TuneConfig, cluster: dict[str, float], resources: WorkerResources
) -> int:
    """Trials that run at once: `tune.max_concurrent` when set (an autoscaling cluster grows
    to it), else as many as the cluster's CPUs and GPUs hold with their drivers."""
    if settings.max_concurrent:
        return min(settings.max_concurrent, settings.trials)
    count = resources.runs_that_fit(cluster, DRIVER_CPUS)
    if count < 1:
        gpus = f" and {resources.gpus:g} GPUs" if resources.gpus_per_worker else ""
        raise HandrayError(
            f"one trial needs {resources.cpus + DRIVER_CPUS:g} CPUs ({resources.workers} "
            f"worker(s) x {resources.cpus_per_worker:g} + {DRIVER_CPUS:g} for its driver){gpus}, "
            f"but the Ray cluster has {cluster.get('CPU', 0.0):g} CPUs and "
            f"{cluster.get('GPU', 0.0):g} GPUs; use "
            "fewer --workers-per-trial, or on an autoscaling cluster set tune.max_concurrent"
        )
    return min(count, settings.trials)


def _run_trial(params: dict[str, Any], sweep: dict[str, Any]) -> None:
    """One trial, in its Tune actor: the Train run of this trial's config, every epoch's report
    forwarded to Tune. A restarted trial's run continues from its own newest checkpoint."""
    trial = tune.get_context().get_trial_id()
    config = trial_config(config_from_dict(sweep["config"]), params)
    trainer = build_trainer(
        config,
        Path(sweep["dataset"]),
        weights=sweep["weights"],
        resources=sweep["resources"],
        name=trial,
        storage=Path(sweep["runs"]),
        callbacks=[TuneReportCallback()],
        log_prefix=f"[{trial}] ",
    )
    placement.fit(trainer, sweep["resources"], config.train.start_timeout_s, f"trial {trial}")


def _tune_settings(config: Config, concurrency: int) -> tune.TuneConfig:
    settings = config.tune
    return tune.TuneConfig(
        metric=settings.metric,
        mode=MODES[settings.metric],
        scheduler=ASHAScheduler(
            time_attr="epoch",
            max_t=config.train.epochs,
            grace_period=settings.grace_period,
            reduction_factor=settings.reduction_factor,
        ),
        # Its own limit: Tune's `max_concurrent_trials` applies to other search algorithms only.
        search_alg=BasicVariantGenerator(max_concurrent=concurrency, random_state=settings.seed),
        num_samples=settings.trials,
        trial_dirname_creator=_trial_dirname,
    )


def _trial_dirname(trial) -> str:
    """Tune's folder of a trial is named by its id, like the trial's Train run."""
    return trial.trial_id


def _sweep_folder(out: Path, name: str | None, resume: bool, preset: str) -> tuple[Path, bool]:
    """The sweep's folder, and whether it holds a sweep to resume."""
    if name is None and resume:
        folders = list(out.iterdir()) if out.is_dir() else []
        sweeps = [p for p in folders if tune.Tuner.can_restore(str(p))]
        if not sweeps:
            raise HandrayError(f"--resume: no sweep to resume under {out}")
        sweep_dir = max(sweeps, key=lambda p: p.stat().st_mtime)
    else:
        sweep_dir = out / (name or new_name(preset))
    resuming = tune.Tuner.can_restore(str(sweep_dir))
    if resume and not resuming:
        raise HandrayError(f"--resume: {sweep_dir} holds no sweep to resume")
    return sweep_dir, resuming


def _check_same_config(config: Config, sweep_dir: Path) -> None:
    """A resumed sweep's trials must train what it started with."""
    saved = load_config(sweep_dir / CONFIG_FILE)
    if saved != config:
        raise HandrayError(
            f"sweep {sweep_dir} was started with another config ({sweep_dir / CONFIG_FILE}); "
            "resume it with the same --preset/--config, --set, --epochs, --trials and --metric, "
            "or choose a new --name"
        )
