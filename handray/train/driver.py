"""The driver's preamble of `handray train` and `handray tune`: what is checked before Ray runs
anything (a bad folder, dataset, worker count or start weights would otherwise fail in every
worker, or every trial, after its restarts), the config printed, and Ray started, so both
commands refuse and start alike."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from handray.config import Config, dump_config
from handray.core.errors import HandrayError
from handray.data.coco import load_dataset
from handray.train.resources import WorkerResources


@dataclass(frozen=True)
class RunInputs:
    """A run's inputs once checked: its output folder and dataset as absolute paths, and where
    its progress lines go (`print`, or nowhere when not verbose)."""

    folder: Path
    dataset_dir: Path
    say: Callable[..., None]


def check_inputs(
    config: Config,
    dataset_dir: str | os.PathLike,
    resources: WorkerResources,
    folder: str | os.PathLike,
    option: str,
    *,
    verbose: bool,
) -> RunInputs:
    """Check the output `folder` (given as `option`), the workers and the dataset for `config`;
    the first problem raises `HandrayError`."""
    say = print if verbose else (lambda *a, **k: None)
    folder = shared_folder(folder, option)
    dataset_dir = Path(dataset_dir).resolve()
    resources.check()
    check_dataset(dataset_dir, resources.workers, config)
    return RunInputs(folder, dataset_dir, say)


def start_driver(
    config: Config,
    weights: str,
    say: Callable[..., None],
    *,
    resuming: bool,
    plan: str | None = None,
) -> None:
    """Check the start `weights` of a new run (a resumed one starts from its checkpoints), print
    the config and the `plan`, and start Ray."""
    from handray.train.loop import start_weights_file

    if not resuming:
        start_weights_file(weights, config)  # fail here, not in every worker or trial
    say(f"config ({config.preset}):\n{dump_config(config)}")
    if plan:
        say(plan)
    start_ray()


def new_name(preset: str) -> str:
    """A new run's or sweep's name when none is given: its preset and the local time."""
    return f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}"


def start_ray() -> None:
    """Connect to the running Ray cluster (`RAY_ADDRESS`, or one `ray start` began here) or
    start a local one that knows its address (`core.local_ray`); its dashboard is on, as Ray
    Train's cleanup of a killed run (a trial that Tune stops) asks the state API that the
    dashboard serves."""
    import ray

    from handray.core.local_ray import join_or_start_ray

    if not ray.is_initialized():
        join_or_start_ray(include_dashboard=True, log_to_driver=True)


def shared_folder(folder: str | os.PathLike, option: str) -> Path:
    """`folder` as an absolute local path, refusing object-store URIs up front."""
    if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]+:/", str(folder)):  # s3://, gs://, also as a Path
        raise HandrayError(
            f"{option} {folder}: give a folder every node reaches at the same path (local "
            "disk on one machine, an NFS/EFS mount on a cluster); object-store URIs are not "
            "supported, as handray reads its checkpoints back as files"
        )
    return Path(folder).expanduser().resolve()


def check_dataset(dataset_dir: Path, workers: int, config: Config) -> None:
    """Fail on the driver, not after every worker's restarts, when the data cannot be used."""
    from handray.data.pipeline import check_classes

    for split in ("train", "val"):
        dataset = load_dataset(dataset_dir, split)
        check_classes(dataset, config)
        if len(dataset) < workers:
            raise HandrayError(
                f"{dataset.annotation_file}: {len(dataset)} image(s) cannot be shared by "
                f"{workers} workers; use fewer --workers or a larger {split} split"
            )
