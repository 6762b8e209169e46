"""Ray Tune sweeps: the learning rate and anchor scales that suit a dataset, and the best model.

Hands are small objects of a narrow size range, so the anchors and the learning rate that work
depend on the dataset and the image size. A sweep runs `tune.trials` trials; each samples a
learning rate (log-uniform over `tune.learning_rate`), one named anchor set (`tune.anchor_sets`,
see `config.ANCHOR_SETS`) and a choice for each `tune.extra` key, and is one Ray Train run of the
base config with those values (`trainer.build_trainer`, whose workers run the usual loop).
`TuneReportCallback` forwards each epoch's report to Tune, where ASHA stops the trials that fall
behind at its rungs, epochs counted by the reported `epoch` so that a resumed trial keeps its
place.

A trial's Tune function only waits on its Train run, so it holds a small CPU share; the workers
take their own CPUs and GPUs from Ray Train, outside it. Tune cannot see those, so the number of
trials running at once is capped to what fits the cluster, driver shares and workers together:
a driver never waits for workers that cannot start.

A sweep lives in `OUT/NAME/`: Tune's experiment state and per-trial results, `runs/TRIAL/` (each
trial's Train run and checkpoints), `config.yaml` (the base config), and at the end `trials.csv`
(every trial: values, metric, epochs, stopped early or not) and `best.json` (the best trial and
its checkpoint, which `--weights best` finds). Starting a sweep of an existing name resumes it:
Tune restarts the trials that had not ended, each from its own newest checkpoint.
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from handray.atomic import atomic_write
from handray.config import (
    ANCHOR_SETS,
    Config,
    TuneConfig,
    config_from_dict,
    dump_config,
    load_config,
    save_config,
    with_overrides,
)
from handray.errors import ConfigError, HandrayError
from handray.train.checkpoint import BEST_FILE, CONFIG_FILE, DEFAULT_TUNE_OUT
from handray.train.trainer import (
    build_trainer,
    check_dataset,
    check_workers,
    shared_folder,
    start_ray,
)

MODES = {"val_mask_ap": "max", "val_loss": "min"}  # tune.metric -> better when higher/lower
DRIVER_CPUS = 0.25  # a trial's Tune function: it only waits on its Train run
RUNS_DIR = "runs"  # the trials' Train runs, inside the sweep folder
TRIALS_FILE = "trials.csv"
LEARNING_RATE, ANCHORS = "learning_rate", "anchors"  # sampled values besides tune.extra keys


@dataclass
class TrialRow:
    """One trial as the table shows it: sampled values, the metric's last value, epochs run."""

    trial: str
    params: dict[str, Any]
    value: float | None
    epochs: int
    stopped_early: bool
    error: str  # its last line; empty when the trial ended normally
    checkpoint: Path | None  # the checkpoint of the last reported epoch


@dataclass
class Sweep:
    """The outcome of `run_tune`: where the sweep lives, every trial and the best one."""

    sweep_dir: Path
    metric: str
    trials: list[TrialRow]
    best: TrialRow


def run_tune(
    config: Config,
    dataset_dir: str | os.PathLike,
    *,
    weights: str = "none",
    workers_per_trial: int = 1,
    gpus_per_worker: float = 0,
    cpus_per_worker: float = 1,
    name: str | None = None,
    out: str | os.PathLike = DEFAULT_TUNE_OUT,
    resume: bool = False,
    verbose: bool = True,
) -> Sweep:
    """Run (or resume) a sweep of `config.tune.trials` Ray Train runs on the running Ray
    cluster (or a local one) and write `trials.csv` and `best.json` into `OUT/NAME`.

    `resume` continues the sweep `name`, or without a name the newest sweep under `out`;
    a sweep of an existing `name` resumes without it too.
    """
    from handray.train.loop import start_weights_file

    say = print if verbose else (lambda *a, **k: None)
    out = shared_folder(out, "--out")
    dataset_dir = Path(dataset_dir).resolve()
    check_workers(workers_per_trial, gpus_per_worker, cpus_per_worker)
    check_dataset(dataset_dir, workers_per_trial, config)
    check_search_space(config)
    sweep_dir, resuming = _sweep_folder(out, name, resume, config.preset)
    if resuming:
        _check_same_config(config, sweep_dir)
    else:
        start_weights_file(weights, config)  # fail here, not in every trial
    say(f"config ({config.preset}):\n{dump_config(config)}")
    start_ray()
    concurrency = concurrent_trials(
        config.tune, ray.cluster_resources(), workers_per_trial, cpus_per_worker, gpus_per_worker
    )
    trainable = tune.with_resources(
        tune.with_parameters(
            _run_trial,
            sweep={
                "config": config.to_dict(),
                "dataset": str(dataset_dir),
                "weights": weights,
                "workers": workers_per_trial,
                "gpus_per_worker": gpus_per_worker,
                "cpus_per_worker": cpus_per_worker,
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
            f"{config.tune.trials} trials of {workers_per_trial} worker(s), {concurrency} at a "
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
                callbacks=[_Progress(config.tune.metric, config.train.epochs)],
                verbose=0,  # _Progress and the trials' epoch lines instead of Tune's tables
            ),
        )
    results = tuner.fit()
    return _finish(config, sweep_dir, results, say)


def check_search_space(config: Config) -> None:
    """Every value a trial may sample must build a valid config: fail before any trial runs."""
    settings = config.tune
    if settings.grace_period > config.train.epochs:
        raise ConfigError(
            f"tune.grace_period: {settings.grace_period} epochs before ASHA may stop a trial "
            f"is more than the {config.train.epochs} epochs a trial trains (train.epochs)"
        )
    low, high = settings.learning_rate
    first = {
        LEARNING_RATE: low,
        ANCHORS: settings.anchor_sets[0],
        **{key: choices[0] for key, choices in settings.extra.items()},
    }
    variants = [first, {**first, LEARNING_RATE: high}]
    variants += [{**first, ANCHORS: anchors} for anchors in settings.anchor_sets]
    variants += [
        {**first, key: choice} for key, choices in settings.extra.items() for choice in choices
    ]
    for params in variants:
        try:
            trial_config(config, params)
        except ConfigError as err:
            raise ConfigError(f"a trial of the sweep would have {params}: {err}") from None


def trial_config(config: Config, params: dict[str, Any]) -> Config:
    """The base config with one trial's sampled values applied. A sweep that optimises AP
    measures it every epoch, as ASHA compares trials epoch by epoch."""
    overrides = {k: v for k, v in params.items() if k not in (LEARNING_RATE, ANCHORS)}
    overrides["train.learning_rate"] = params[LEARNING_RATE]
    overrides["model.rpn_anchor_scales"] = list(ANCHOR_SETS[params[ANCHORS]])
    if config.tune.metric == "val_mask_ap":
        overrides["train.eval_every"] = 1
    return with_overrides(config, overrides)


def search_space(settings: TuneConfig) -> dict[str, Any]:
    """Tune's param space: the sampled values `trial_config` applies."""
    low, high = settings.learning_rate
    space = {
        LEARNING_RATE: tune.loguniform(low, high) if low < high else low,
        ANCHORS: tune.choice(list(settings.anchor_sets)),
    }
    space.update({key: tune.choice(list(choices)) for key, choices in settings.extra.items()})
    return space


def concurrent_trials(
    settings: TuneConfig,
    resources: dict[str, float],
    workers: int,
    cpus_per_worker: float,
    gpus_per_worker: float,
) -> int:
    """Trials that run at once: `tune.max_concurrent` when set (an autoscaling cluster grows
    to it), else as many as the cluster's CPUs and GPUs hold with their drivers."""
    if settings.max_concurrent:
        return min(settings.max_concurrent, settings.trials)
    trial_cpus = workers * cpus_per_worker + DRIVER_CPUS
    fits = [resources.get("CPU", 0.0) / trial_cpus]
    if gpus_per_worker:
        fits.append(resources.get("GPU", 0.0) / (workers * gpus_per_worker))
    count = int(min(fits) + 1e-9)
    if count < 1:
        gpus = f" and {workers * gpus_per_worker:g} GPUs" if gpus_per_worker else ""
        raise HandrayError(
            f"one trial needs {trial_cpus:g} CPUs ({workers} worker(s) x {cpus_per_worker:g} "
            f"+ {DRIVER_CPUS:g} for its driver){gpus}, but the Ray cluster has "
            f"{resources.get('CPU', 0.0):g} CPUs and {resources.get('GPU', 0.0):g} GPUs; use "
            "fewer --workers-per-trial, or on an autoscaling cluster set tune.max_concurrent"
        )
    return min(count, settings.trials)


def format_trials(rows: list[TrialRow], metric: str, best: TrialRow | None) -> str:
    """The trials as a text table, the best one marked with `*`."""
    header = ["trial", *(rows[0].params if rows else ()), metric, "epochs", "result"]
    table = [header]
    for row in rows:
        result = "error" if row.error else "stopped early" if row.stopped_early else "finished"
        mark = "*" if row is best else " "
        table.append(
            [
                f"{mark}{row.trial}",
                *(_text(value) for value in row.params.values()),
                "-" if row.value is None else f"{row.value:.4f}",
                str(row.epochs),
                result,
            ]
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in table
    )


def _run_trial(params: dict[str, Any], sweep: dict[str, Any]) -> None:
    """One trial, in its Tune actor: the Train run of this trial's config, every epoch's report
    forwarded to Tune. A restarted trial's run continues from its own newest checkpoint."""
    trial = tune.get_context().get_trial_id()
    config = trial_config(config_from_dict(sweep["config"]), params)
    trainer = build_trainer(
        config,
        Path(sweep["dataset"]),
        weights=sweep["weights"],
        workers=sweep["workers"],
        gpus_per_worker=sweep["gpus_per_worker"],
        cpus_per_worker=sweep["cpus_per_worker"],
        name=trial,
        storage=Path(sweep["runs"]),
        callbacks=[TuneReportCallback()],
        log_prefix=f"[{trial}] ",
    )
    trainer.fit()


class _Progress(tune.Callback):
    """One line per trial started and ended (Tune's own tables list every metric each time)."""

    def __init__(self, metric: str, epochs: int):
        self.metric, self.epochs = metric, epochs

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        values = ", ".join(f"{key} {_text(value)}" for key, value in trial.config.items())
        print(f"trial {trial.trial_id} started: {values}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        result = trial.last_result or {}
        epochs = int(result.get("epoch", 0))
        value = result.get(self.metric)
        line = f"trial {trial.trial_id} ended after {epochs} of {self.epochs} epochs"
        if value is not None:
            line += f": {self.metric} {value:.4f}"
        if epochs < self.epochs:
            line += " (stopped early by ASHA)"
        print(line, flush=True)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        print(f"trial {trial.trial_id} failed; its error is in {trial.path}", flush=True)


def _sampled_keys(settings: TuneConfig) -> list[str]:
    return [LEARNING_RATE, ANCHORS, *settings.extra]


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
        sweep_dir = out / (name or f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}")
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


def _finish(config: Config, sweep_dir: Path, results, say) -> Sweep:
    """The trials table and best trial of a finished sweep, written into its folder."""
    metric = config.tune.metric
    unfinished = len(results) - results.num_terminated - results.num_errors
    if unfinished:
        raise HandrayError(
            f"sweep {sweep_dir.name} stopped with {unfinished} trial(s) unfinished; its state "
            "is saved: run the same command again (or with --resume) to continue it"
        )
    rows = sorted((_trial_row(result, config) for result in results), key=lambda row: row.trial)
    candidates = [row for row in rows if row.value is not None and row.checkpoint is not None]
    pick = max if MODES[metric] == "max" else min
    best = pick(candidates, key=lambda row: row.value) if candidates else None
    _write_trials(rows, metric, sweep_dir / TRIALS_FILE)
    say(format_trials(rows, metric, best))
    say(f"trials: {sweep_dir / TRIALS_FILE}")
    if best is None:
        raise HandrayError(
            f"no trial of sweep {sweep_dir.name} reported {metric}; see the errors in "
            f"{sweep_dir / TRIALS_FILE} and the trials' logs in {sweep_dir}"
        )
    record = {
        "sweep": sweep_dir.name,
        "trial": best.trial,
        "metric": metric,
        "mode": MODES[metric],
        "value": best.value,
        "epochs": best.epochs,
        "config": best.params,
        "checkpoint": str(best.checkpoint.relative_to(sweep_dir)),
    }
    with atomic_write(sweep_dir / BEST_FILE) as handle:
        json.dump(record, handle, indent=1)
    say(f"best trial {best.trial}: {metric} {best.value:.4f} after {best.epochs} epochs")
    say(f"best checkpoint: {best.checkpoint}\nbest.json: {sweep_dir / BEST_FILE}")
    return Sweep(sweep_dir, metric, rows, best)


def _trial_row(result, config: Config) -> TrialRow:
    metrics = result.metrics or {}
    epochs = int(metrics.get("epoch", 0))
    error = "" if result.error is None else str(result.error).strip().splitlines()[-1][:200]
    checkpoint = metrics.get("checkpoint_path")
    return TrialRow(
        trial=Path(result.path).name,
        params={key: result.config[key] for key in _sampled_keys(config.tune)},
        value=metrics.get(config.tune.metric),
        epochs=epochs,
        stopped_early=not error and epochs < config.train.epochs,
        error=error,
        checkpoint=Path(checkpoint) if checkpoint else None,
    )


def _write_trials(rows: list[TrialRow], metric: str, path: Path) -> None:
    with atomic_write(path) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        params = list(rows[0].params) if rows else []
        writer.writerow(
            ["trial", *params, metric, "epochs", "stopped_early", "error", "checkpoint"]
        )
        for row in rows:
            writer.writerow(
                [
                    row.trial,
                    *(_text(row.params[key]) for key in params),
                    "" if row.value is None else row.value,
                    row.epochs,
                    row.stopped_early,
                    row.error,
                    row.checkpoint or "",
                ]
            )


def _text(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
