"""Config trees in and out: presets by name, YAML files, dotted overrides, dicts for workers.

Every command builds its settings here: a named preset (or a YAML file, which may start from a
preset), then dotted overrides such as ``--set train.learning_rate=0.002``. A bad key or value
raises ConfigError naming it, so a typo fails before any work starts.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from handray.config.messages import config_error
from handray.config.presets import PRESETS
from handray.config.retired import upgrade_old_keys
from handray.config.schema import Config, ServeConfig
from handray.core.atomic import atomic_write
from handray.core.errors import ConfigError

Model = TypeVar("Model", bound=BaseModel)


def load_config(preset_or_yaml_path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """A validated Config from a preset name or a YAML file, with dotted-key overrides applied.

    A YAML file may name a `preset:` to start from and then change only some keys.
    """
    source = str(preset_or_yaml_path)
    if source in PRESETS:
        tree: dict[str, Any] = {"preset": source}
    elif Path(source).is_file():
        tree = _read_yaml(Path(source))
    else:
        raise ConfigError(
            f"{source!r} is neither a preset ({', '.join(PRESETS)}) nor an existing YAML file"
        )
    preset = tree.get("preset", "hand-r101")
    if preset not in PRESETS:
        raise ConfigError(f"preset: unknown preset {preset!r}; choose one of {list(PRESETS)}")
    merged = _merge(copy.deepcopy(PRESETS[preset]), copy.deepcopy(tree))
    for key, value in (overrides or {}).items():
        _set_dotted(merged, key, value)
    return _validated(Config, merged)


def config_from_dict(tree: dict[str, Any]) -> Config:
    """The inverse of `Config.to_dict`, validated: how a config travels to worker processes."""
    return _validated(Config, copy.deepcopy(tree))


def updated_serve_config(base: ServeConfig, changes: dict[str, Any]) -> ServeConfig:
    """`base` with some keys changed (a Serve deployment's `user_config`), checked like any
    config; unknown keys and bad values raise ConfigError naming `serve.KEY`."""
    return _validated(ServeConfig, {**base.model_dump(), **copy.deepcopy(dict(changes))}, "serve")


def with_overrides(config: Config, overrides: dict[str, Any]) -> Config:
    """A validated copy of `config` with dotted-key overrides applied (a sweep's trial)."""
    tree = config.to_dict()
    for key, value in overrides.items():
        _set_dotted(tree, key, value)
    return config_from_dict(tree)


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """Turn ``["train.learning_rate=0.002", ...]`` into a dict; values are parsed as YAML."""
    overrides: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.learning_rate=0.002")
        try:
            overrides[key.strip()] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {item!r}: value is not valid YAML ({err})") from None
    return overrides


def dump_config(config: Config) -> str:
    """The config as YAML text that `load_config` reads back to an equal Config."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=None)


def save_config(config: Config, path: str | Path) -> None:
    """Write the config YAML atomically (stored next to checkpoints and exports)."""
    with atomic_write(path) as handle:
        handle.write(dump_config(config))


def _validated(model: type[Model], tree: dict[str, Any], section: str = "") -> Model:
    """`tree` (the caller's to change) checked as `model`, which sits at `section` of the tree."""
    upgrade_old_keys({section: tree} if section else tree)  # old keys are dotted from the top
    try:
        return model.model_validate(tree)
    except ValidationError as err:
        raise config_error(err, model, section) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        tree = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read config file {path}: {err}") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of sections, not {type(tree).__name__}"
        )
    return tree


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Apply `changes` onto `base` section by section (both are owned by the caller)."""
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {part!r} is a value, not a section")
    node[leaf] = value
