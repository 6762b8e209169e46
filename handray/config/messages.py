"""pydantic's ValidationError as the one-line ConfigError a user can act on.

Messages start with the dotted key and say what was expected and what came, in the words the
config has always used, e.g. ``train.learning_rate: expected float, got str 'fast'``.
"""

import difflib
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from handray.core.errors import ConfigError

# The strict scalar types' errors, by the type they expected.
_EXPECTED_SCALAR = {
    "float_type": "float",
    "int_type": "int",
    "bool_type": "bool",
    "string_type": "str",
}


def config_error(err: ValidationError, model: type[BaseModel], section: str = "") -> ConfigError:
    """The first problem in `err`, from validating `model`, which sits at `section` of the tree."""
    error = err.errors()[0]
    loc, value = error["loc"], error["input"]
    prefix = tuple(section.split(".")) if section else ()
    path = _dotted((*prefix, *loc))
    match error["type"]:
        case "extra_forbidden":
            known = list(_declared_type(model, loc[:-1]).model_fields)
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
            message = f"unknown key {path!r}{hint}"
        case "model_type":
            message = f"{path or 'config'}: expected a mapping of keys, got {value!r}"
        case "literal_error":
            choices = list(typing.get_args(_declared_type(model, loc)))
            message = f"{path}: {value!r} is not one of {choices}"
        case "tuple_type":
            message = f"{path}: expected a list, got {_describe(value)}"
        case "dict_type":
            message = f"{path}: expected a mapping, got {_describe(value)}"
        case "too_long":  # a fixed-length tuple given too many values
            message = f"{path}: expected {error['ctx']['max_length']} values, got {len(value)}"
        case "missing" if isinstance(loc[-1], int):  # ... or too few: its first empty slot
            size = len(typing.get_args(_declared_type(model, loc[:-1])))
            message = f"{_dotted((*prefix, *loc[:-1]))}: expected {size} values, got {len(value)}"
        case kind if kind in _EXPECTED_SCALAR:
            message = f"{path}: expected {_EXPECTED_SCALAR[kind]}, got {_describe(value)}"
        case _:
            message = f"{path}: {error['msg']}"
    return ConfigError(message)


def _dotted(loc: Sequence[str | int]) -> str:
    """``("model", "mask_shape", 1)`` as ``model.mask_shape[1]``; dict keys are dotted too."""
    path = ""
    for part in loc:
        if part == "[key]":  # pydantic's marker for a bad dict key rather than a bad value
            continue
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else part
    return path


def _declared_type(model: type[BaseModel], fields: Sequence[str | int]) -> Any:
    """The annotation of the field that `fields` names, section by section from `model` down."""
    declared: Any = model
    for name in fields:
        declared = declared.model_fields[name].annotation
    return declared


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"
