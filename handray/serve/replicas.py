"""The processes behind a deployment's replicas, found through Ray's state API, so a soak can
read their memory and kill one as a crash would."""

from __future__ import annotations

import os
from pathlib import Path

APP = "handray"  # the application's name in serve_config.yaml
REPLICA_PREFIX = "SERVE_REPLICA::"  # Serve's replica actor names: SERVE_REPLICA::APP#DEPLOYMENT#ID


def replicas(address: str, deployment: str) -> dict[str, int]:
    """Alive replicas of `deployment` in the app APP: unique replica id -> process id."""
    from ray.util.state import list_actors

    prefix = f"{REPLICA_PREFIX}{APP}#{deployment}#"
    alive = list_actors(
        address, filters=[("state", "=", "ALIVE")], limit=1000, raise_on_missing_output=False
    )
    return {a.name[len(prefix) :]: a.pid for a in alive if (a.name or "").startswith(prefix)}


def resident_bytes(pid: int) -> int:
    """A process's resident memory, from /proc (0 once it is gone)."""
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")
