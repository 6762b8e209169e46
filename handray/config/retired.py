"""Keys that older versions wrote and this one no longer reads, or reads under a new name.

Retired keys are dropped with a warning instead of refused as unknown, and renamed ones become
their new key, so the handray.yaml stored with an old checkpoint or export still loads and means
what it meant. Any other unknown key is still an error.
"""

import logging
from typing import Any

from handray.core.errors import ConfigError

logger = logging.getLogger(__name__)

_HTTP_ADDRESS = "the HTTP address is set in serve_config.yaml's http_options"
# Dotted key -> why it is ignored now.
RETIRED_KEYS: dict[str, str] = {"serve.host": _HTTP_ADDRESS, "serve.port": _HTTP_ADDRESS}


def upgrade_old_keys(tree: dict[str, Any]) -> None:
    """Rename the renamed keys of a config tree and drop the retired ones."""
    _read_mixed_precision(tree)
    _drop_retired_keys(tree)


def _read_mixed_precision(tree: dict[str, Any]) -> None:
    """`train.mixed_precision` (a bool, before bfloat16) as `train.precision`: true is float16
    with loss scaling; false only says "not float16", so the preset's precision stands unless
    that is float16. As an override of a newer tree, the old key is the later word and wins."""
    train = tree.get("train")
    if not isinstance(train, dict) or "mixed_precision" not in train:
        return
    old = train.pop("mixed_precision")
    if not isinstance(old, bool):
        raise ConfigError(f"train.mixed_precision: expected true or false, got {old!r}")
    if old:
        train["precision"] = "mixed_float16"
    elif train.get("precision", "mixed_float16") == "mixed_float16":
        train["precision"] = "float32"


def _drop_retired_keys(tree: dict[str, Any]) -> None:
    """Remove every retired key from a config tree, with one warning that names them and why."""
    dropped = [key for key in RETIRED_KEYS if _pop_dotted(tree, key)]
    if dropped:
        reasons = "; ".join(dict.fromkeys(RETIRED_KEYS[key] for key in dropped))
        logger.warning("ignoring %s (no longer used): %s", ", ".join(dropped), reasons)


def _pop_dotted(tree: dict[str, Any], dotted: str) -> bool:
    *parents, leaf = dotted.split(".")
    node: Any = tree
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict) or leaf not in node:
        return False
    del node[leaf]
    return True
