"""TensorFlow's multi-worker cluster for a Ray Train run, described without importing TensorFlow.

Each worker of a run builds a `MultiWorkerMirroredStrategy`, which reads the cluster from the
`TF_CONFIG` variable: every worker's address and port, and this worker's index. Ray's
`TensorflowConfig` sets it too, but its package (`ray.train.tensorflow`) imports TensorFlow, so
each run's Train controller (which only places and watches workers) and each Tune trial's
driver paid that import, 4-5 s of CPU, before the first worker was created. This backend needs
only Ray where it runs; the workers import TensorFlow when they train.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import ray
from ray.train.backend import Backend, BackendConfig

from handray.core.network import address_with_free_port


@dataclass
class MultiWorkerConfig(BackendConfig):
    """Ray Train's backend config for handray's workers: `TF_CONFIG` set on each one before its
    training function starts."""

    @property
    def backend_cls(self) -> type[Backend]:
        return _MultiWorkerBackend


class _MultiWorkerBackend(Backend):
    def on_start(self, worker_group, backend_config: MultiWorkerConfig) -> None:
        addresses = worker_group.execute(address_with_free_port)
        ray.get(
            [
                worker_group.execute_single_async(rank, _set_tf_config, addresses, rank)
                for rank in range(len(worker_group))
            ]
        )


def tf_config(addresses: list[str], rank: int) -> dict:
    """TensorFlow's cluster description for the worker of `rank` among `addresses`."""
    return {"cluster": {"worker": list(addresses)}, "task": {"type": "worker", "index": rank}}


def _set_tf_config(addresses: list[str], rank: int) -> None:
    os.environ["TF_CONFIG"] = json.dumps(tf_config(addresses, rank))
