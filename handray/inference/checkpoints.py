"""Checkpoints on disk as inference finds them, and the model they hold.

A checkpoint is a folder that Ray Train stores under `STORAGE/RUN_NAME/checkpoint_*`
(`handray.train.checkpoint` writes it):

  weights.h5      every weighted layer by name (the Keras-2 layout the old model used, so the
                  weights loader reads old and new files alike); with `train.ema_decay` the
                  averaged weights, which evaluation, predictions and exports use
  optimizer.npz   optimizer variables by name (momentum, step counter) and, with averaging, the
                  raw weights as `raw/<variable>`, for an exact resume
  config.yaml     the config the run trained with; `evaluate`, `predict` and `export` rebuild
                  the model from it
  state.json      epoch, step, the metrics of every epoch so far, how often the run started,
                  and the size of every other file (written last)

Since Ray Train copies a checkpoint into storage file by file, in no set order, a folder counts
as complete only when every file state.json lists is there with its recorded size.

A Tune sweep writes `best.json` into its folder, naming its best trial's checkpoint relative to
that folder; `best`, a sweep folder or its `best.json` resolve to that checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py

from handray.config import Config, load_config, with_overrides
from handray.core.errors import HandrayError

if TYPE_CHECKING:
    from handray.model.maskrcnn import MaskRCNN

logger = logging.getLogger(__name__)
WEIGHTS_FILE = "weights.h5"
OPTIMIZER_FILE = "optimizer.npz"
CONFIG_FILE = "config.yaml"
STATE_FILE = "state.json"
DEFAULT_STORAGE = Path("runs")
TUNE_DIR = "tune"  # sweeps, inside a runs folder
DEFAULT_TUNE_OUT = DEFAULT_STORAGE / TUNE_DIR
BEST_FILE = "best.json"


@dataclass
class TrainingState:
    """Where a run stands: completed epochs and optimizer steps, the per-epoch metrics, and
    how many times training started (a restart after a failure or a resume adds one)."""

    epoch: int = 0
    step: int = 0
    history: list[dict[str, float]] | None = None
    sessions: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "history": self.history or [],
            "sessions": self.sessions,
        }


def read_state(directory: str | os.PathLike) -> TrainingState:
    """The state.json of a checkpoint folder."""
    path = Path(directory) / STATE_FILE
    try:
        data = json.loads(path.read_text())
        return TrainingState(
            epoch=int(data["epoch"]),
            step=int(data["step"]),
            history=list(data.get("history", [])),
            sessions=int(data.get("sessions", 0)),
        )
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise HandrayError(
            f"{path}: not a readable handray checkpoint state ({err}); "
            "point at a checkpoint folder written by `handray train`"
        ) from None


def is_checkpoint(path: Path) -> bool:
    """A folder with a state file, every file it lists at its recorded size, and a weights file
    that opens: not one still being copied."""
    if not ((path / WEIGHTS_FILE).is_file() and (path / STATE_FILE).is_file()):
        return False
    try:
        listed = json.loads((path / STATE_FILE).read_text()).get("files", {})
        if any(_size(path / name) != size for name, size in listed.items()):
            return False
        with h5py.File(path / WEIGHTS_FILE, "r"):
            return True
    except (OSError, ValueError, AttributeError):
        return False


def _size(path: Path) -> int | None:
    return path.stat().st_size if path.is_file() else None


def run_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """A run folder's complete checkpoints, oldest epoch first; one still being copied into
    place (its state unreadable) is left out."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for path in run_dir.iterdir():
        if path.is_dir() and is_checkpoint(path):
            try:
                found.append((read_state(path).epoch, path.stat().st_mtime, path))
            except HandrayError:
                continue
    return [path for _, _, path in sorted(found)]


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    checkpoints = run_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def newest_run(storage: str | os.PathLike = DEFAULT_STORAGE) -> Path | None:
    """The run folder under `storage` whose latest checkpoint was written last."""
    storage = Path(storage)
    runs = [p for p in storage.iterdir() if p.is_dir()] if storage.is_dir() else []
    latest = [(c.stat().st_mtime, run) for run in runs if (c := latest_checkpoint(run))]
    return max(latest)[1] if latest else None


def best_checkpoint(sweep: str | os.PathLike) -> Path:
    """The checkpoint that a sweep folder's (or a `best.json` file's) best trial names."""
    path = Path(sweep)
    record_file = path if path.is_file() else path / BEST_FILE
    try:
        relative = json.loads(record_file.read_text())["checkpoint"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise HandrayError(
            f"{record_file}: not a readable sweep result ({err}); point at a finished sweep's "
            f"folder or its {BEST_FILE} (written by `handray tune`)"
        ) from None
    checkpoint = record_file.parent / relative
    if not is_checkpoint(checkpoint):
        raise HandrayError(f"{record_file} names {checkpoint}, which is no complete checkpoint")
    return checkpoint


def newest_sweep(storage: str | os.PathLike = DEFAULT_STORAGE) -> Path | None:
    """The sweep folder under `STORAGE/tune` whose `best.json` was written last."""
    sweeps = Path(storage) / TUNE_DIR
    found = list(sweeps.glob(f"*/{BEST_FILE}")) if sweeps.is_dir() else []
    return max(found, key=lambda p: p.stat().st_mtime).parent if found else None


def resolve_checkpoint(
    spec: str | os.PathLike, storage: str | os.PathLike = DEFAULT_STORAGE
) -> Path:
    """A weights argument as a path: `last` (newest run's latest checkpoint), `best` (the best
    trial of the newest finished sweep), a checkpoint folder, a run folder (its latest
    checkpoint), a sweep folder or its `best.json` (its best trial's checkpoint), or an `.h5`
    weight file."""
    if str(spec) == "best":
        sweep = newest_sweep(storage)
        if sweep is None:
            raise HandrayError(
                f"--weights best: no finished sweep ({BEST_FILE}) under "
                f"{(Path(storage) / TUNE_DIR).resolve()}; run one first (handray tune) or give "
                "the sweep's folder"
            )
        return best_checkpoint(sweep)
    if str(spec) == "last":
        run = newest_run(storage)
        if run is None:
            raise HandrayError(
                f"--weights last: no run with checkpoints under {Path(storage).resolve()}; "
                "train one first (handray train) or give --storage the folder runs were written to"
            )
        return latest_checkpoint(run)
    path = Path(spec).expanduser()
    if (path.name == BEST_FILE and path.is_file()) or (path / BEST_FILE).is_file():
        return best_checkpoint(path)
    if path.is_file():
        return path
    if path.is_dir():
        if is_checkpoint(path):
            return path
        latest = latest_checkpoint(path)
        if latest is not None:
            return latest
        raise HandrayError(
            f"{path}: neither a checkpoint (no {WEIGHTS_FILE} + {STATE_FILE}) nor a run folder "
            "holding checkpoints"
        )
    raise HandrayError(
        f"weights {str(spec)!r} not found: give `last`, `best`, a checkpoint, run or sweep "
        "folder, or an .h5 file"
    )


def load_trained_model(
    spec: str | os.PathLike,
    config_source: str | os.PathLike | None = None,
    overrides: dict[str, Any] | None = None,
    storage: str | os.PathLike = DEFAULT_STORAGE,
    jit_compile: bool | str = "auto",
) -> tuple[MaskRCNN, Config, Path]:
    """A model with trained weights for inference, the config it was built from, and the
    weights path used.

    A checkpoint brings its own config; `config_source` (preset or YAML) replaces it, and is
    required for a bare `.h5` file such as the old model's weights. An optional ROI head whose
    layers the file lacks entirely (a file from before the keypoint head) is left out of the
    model, with a warning, rather than predict with untrained layers. The model computes in
    `serve.precision`, as its export would.
    """
    from handray.model import build_model
    from handray.model.heads import ROI_HEADS
    from handray.model.precision import computing_in
    from handray.model.weights import layer_names_in, load_weights

    path = resolve_checkpoint(spec, storage)
    if config_source is not None:
        config = load_config(config_source, overrides)
    elif path.is_dir():
        config = load_config(path / CONFIG_FILE, overrides)
    else:
        raise HandrayError(
            f"{path} is a bare weight file: say which architecture it holds with --preset "
            "(e.g. matterport or hand-r101) or --config FILE"
        )
    weights = path / WEIGHTS_FILE if path.is_dir() else path
    in_file = layer_names_in(weights)
    for head in ROI_HEADS:
        removable = head.optional and head.enabled(config.model)
        if removable and not any(name.startswith(head.layer_prefix) for name in in_file):
            logger.warning(
                "%s has no %s layers (%s*); predicting without its %s (%s). Train from it "
                "(--weights) to learn them.",
                weights,
                head.__name__,
                head.layer_prefix,
                head.output,
                ", ".join(f"{key}={value}" for key, value in head.optional.items()),
            )
            config = with_overrides(config, head.optional)
    with computing_in(config.serve.precision):
        model = build_model(config, jit_compile=jit_compile)
    report = load_weights(model, weights)
    unusable = report.missing + report.skipped
    if unusable:
        raise HandrayError(
            f"{weights} does not fit the {config.preset} model: {len(report.missing)} layers "
            f"missing, {len(report.skipped)} skipped ({', '.join(unusable[:5])} ...); check "
            "the preset and model.num_classes / model.class_names"
        )
    return model, config, path
