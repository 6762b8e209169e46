"""One typed configuration tree for data, model, training, serving and tuning.

`schema` declares the sections, `presets` the named starting points and `names` the stage and
loss names the model shares. `loading` reads, overrides, checks and writes whole trees, with
`messages` wording pydantic's errors and `retired` dropping keys that old files may still hold.
"""

from handray.config.loading import (
    config_from_dict,
    dump_config,
    load_config,
    parse_overrides,
    save_config,
    updated_serve_config,
    with_overrides,
)
from handray.config.names import (
    LAYER_SELECTIONS,
    LAYER_STAGES,
    LOSS_NAMES,
    MASK_THRESHOLD,
    PRECISIONS,
)
from handray.config.presets import ANCHOR_SETS, PRESETS
from handray.config.schema import (
    AppearanceConfig,
    Config,
    DataConfig,
    ModelConfig,
    ServeConfig,
    TrainConfig,
    TuneConfig,
)

__all__ = [
    "ANCHOR_SETS",
    "LAYER_SELECTIONS",
    "LAYER_STAGES",
    "LOSS_NAMES",
    "MASK_THRESHOLD",
    "PRECISIONS",
    "PRESETS",
    "AppearanceConfig",
    "Config",
    "DataConfig",
    "ModelConfig",
    "ServeConfig",
    "TrainConfig",
    "TuneConfig",
    "config_from_dict",
    "dump_config",
    "load_config",
    "parse_overrides",
    "save_config",
    "updated_serve_config",
    "with_overrides",
]
