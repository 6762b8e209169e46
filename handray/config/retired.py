"""Keys that older versions wrote and this one no longer reads.

They are dropped with a warning instead of refused as unknown, so the handray.yaml stored with an
old checkpoint or export still loads. Any other unknown key is still an error.
"""

import logging
from typing import Any

logger = logging.getLogger(__name__)

_HTTP_ADDRESS = "the HTTP address is set in serve_config.yaml's http_options"
# Dotted key -> why it is ignored now.
RETIRED_KEYS: dict[str, str] = {"serve.host": _HTTP_ADDRESS, "serve.port": _HTTP_ADDRESS}


def drop_retired_keys(tree: dict[str, Any]) -> None:
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
