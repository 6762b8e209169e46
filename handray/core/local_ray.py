"""Local Ray clusters that know their own address, so that other clusters on the machine cannot
make one of them hang.

Ray's state API, called without an address inside a cluster's process, finds "the" cluster by
scanning the machine, and refuses when it finds two. Ray Train's placement-group cleaner asks it,
once a second, whether the run's controller is still alive: on that refusal its thread dies, and
the placement group of a run whose controller was killed (a Tune trial that ASHA stops, a driver
that died) is never removed. Its CPUs stay held, and the sweep's next trial waits for them until
`train.start_timeout_s` (measured: a sweep hung with another Ray cluster running on the machine,
three placement groups of dead runs holding 3 of its 4 CPUs). A cluster started here runs its GCS
on a port chosen first, and every process of it gets that address as `RAY_ADDRESS`, so its own
state-API calls reach it whatever else runs on the machine.
"""

from __future__ import annotations

import os
from typing import Any

from handray.core.network import address_with_free_port

ADDRESS_VARIABLE = "RAY_ADDRESS"  # where Ray's clients and state API look first
GCS_PORT_VARIABLE = "RAY_GCS_SERVER_PORT"  # the port a head node's GCS takes, read at its start


def start_local_ray(**options: Any) -> Any:
    """`ray.init(address="local", **options)`, with the new cluster's own address in the
    environment of every process it starts; this process's environment is left as it was (a
    command it runs later must not join this cluster by accident)."""
    import ray

    address = address_with_free_port()
    cluster_environment = {ADDRESS_VARIABLE: address, GCS_PORT_VARIABLE: address.rsplit(":", 1)[1]}
    saved = {name: os.environ.get(name) for name in cluster_environment}
    os.environ.update(cluster_environment)  # inherited by the GCS, raylet and their workers
    try:
        return ray.init(address="local", **options)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def join_or_start_ray(**options: Any) -> Any:
    """Join the cluster a plain `ray.init()` would join (`RAY_ADDRESS`, or the one `ray start`
    began on this machine), else start a local one as `start_local_ray` does."""
    import ray
    from ray._private.services import canonicalize_bootstrap_address  # ray.init's own rule

    if canonicalize_bootstrap_address(None) is not None:
        return ray.init(**options)
    return start_local_ray(**options)
