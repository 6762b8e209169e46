"""What a sweep tells its user: a line per trial as it starts and ends, and once it is over the
trials table (printed and `trials.csv`) and the best trial (`best.json`, which `--weights best`
finds).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from handray.config import Config
from handray.core.atomic import atomic_write
from handray.core.errors import HandrayError
from handray.inference.checkpoints import BEST_FILE
from handray.train.search_space import sampled_keys

MODES = {"val_mask_ap": "max", "val_loss": "min"}  # tune.metric -> better when higher/lower
TRIALS_FILE = "trials.csv"


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


class TrialProgress(tune.Callback):
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


def finish_sweep(config: Config, sweep_dir: Path, results, say: Callable[..., Any]) -> Sweep:
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


def _trial_row(result, config: Config) -> TrialRow:
    metrics = result.metrics or {}
    epochs = int(metrics.get("epoch", 0))
    # The error's last line, long enough for a placement error's list of what holds the cluster.
    error = "" if result.error is None else str(result.error).strip().splitlines()[-1][:500]
    checkpoint = metrics.get("checkpoint_path")
    return TrialRow(
        trial=Path(result.path).name,
        params={key: result.config[key] for key in sampled_keys(config.tune)},
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
