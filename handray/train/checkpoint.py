"""Writing training checkpoints (the folder layout is `handray.inference.checkpoints`'), and
restoring the optimizer from one.

Files are written under temporary names and renamed, and state.json comes last listing every
other file's size, so a worker killed mid-write never leaves a checkpoint that looks complete.

Under weight averaging (`train.ema_decay`) weights.h5 holds the averages, since every consumer
reads that file, and the optimizer file also keeps the raw weights (`raw/<variable path>`),
which a resumed run goes on training from.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from handray.config import Config, save_config
from handray.core.atomic import atomic_write
from handray.inference.checkpoints import (
    CONFIG_FILE,
    OPTIMIZER_FILE,
    STATE_FILE,
    WEIGHTS_FILE,
    TrainingState,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    import keras

    from handray.model.maskrcnn import MaskRCNN
    from handray.train.averaging import WeightAverages

RAW_PREFIX = "raw/"  # the optimizer file's entries for the raw weights under averaging


def write_checkpoint(
    directory: str | os.PathLike,
    model: MaskRCNN,
    config: Config,
    state: TrainingState,
    optimizer: keras.optimizers.Optimizer | None = None,
    averages: WeightAverages | None = None,
) -> Path:
    """Write a complete checkpoint into `directory` (created if needed); returns it.

    With `averages` (and an optimizer), weights.h5 gets the averaged weights and the optimizer
    file the model's raw ones too.
    """
    from handray.model.weights import save_weights

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if averages is None:
        save_weights(model, directory / WEIGHTS_FILE)
    else:
        with averages.applied():
            save_weights(model, directory / WEIGHTS_FILE)
    if optimizer is not None:
        values = {v.path: np.asarray(v.numpy()) for v in optimizer.variables}
        if averages is not None:
            values.update((RAW_PREFIX + v.path, v.numpy()) for v in averages.variables)
        with atomic_write(directory / OPTIMIZER_FILE, "wb") as handle:
            np.savez(handle, **values)
    save_config(config, directory / CONFIG_FILE)
    written = [WEIGHTS_FILE, CONFIG_FILE] + ([OPTIMIZER_FILE] if optimizer is not None else [])
    sizes = {name: (directory / name).stat().st_size for name in written}
    with atomic_write(directory / STATE_FILE) as handle:
        json.dump({**state.to_json(), "files": sizes}, handle, indent=1)
    return directory


def restore_optimizer(optimizer: keras.optimizers.Optimizer, directory: str | os.PathLike) -> int:
    """Assign saved optimizer variables by name to a built optimizer; returns how many matched.

    Variables the file lacks (layers that join training in a later stage) keep their zeros.
    """
    return _assign_saved(optimizer.variables, directory, prefix="")


def restore_raw_weights(variables: Sequence[keras.Variable], directory: str | os.PathLike) -> int:
    """Assign the raw weights that a checkpoint written under averaging kept to `variables` (the
    model holds weights.h5's averages by then); returns how many matched (0: none kept)."""
    return _assign_saved(variables, directory, prefix=RAW_PREFIX)


def _assign_saved(variables: Sequence, directory: str | os.PathLike, prefix: str) -> int:
    """Assign the optimizer file's `prefix + path` entry of each variable's shape to it."""
    path = Path(directory) / OPTIMIZER_FILE
    if not path.is_file():
        return 0
    with np.load(path) as saved:
        matched = 0
        for variable in variables:
            name = prefix + variable.path
            if name in saved.files:
                value = saved[name]
                if tuple(value.shape) == tuple(variable.shape):
                    variable.assign(value)
                    matched += 1
    return matched
