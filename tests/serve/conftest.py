"""The Serve app deployed as a user deploys it, for the test modules that talk to it over HTTP.

Only one application can hold route "/" at a time, so each module gets its own (module-scoped
`server`, shut down at the module's end)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from handray.serve.launcher import (
    deployments,
    free_port,
    is_warm,
    shipped_config,
    shutdown_serve,
    wait_for_model,
)

INGRESS_LIMITS = {"max_request_bytes": 300_000, "max_image_pixels": 200_000}
# Batches of up to 4: each new batch size costs a replica ~3 s of compiling while it warms up.
BATCHING = {"max_batch_size": 4, "batch_wait_timeout_s": 0.1, "min_score": 0.0}


def deployment_config(port: int, export: Path, model_config: dict) -> dict:
    """serve_config.yaml as shipped, pointed at the test export and sized for this machine."""
    config = shipped_config(export, port)
    sizes = {"Ingress": (0.25, INGRESS_LIMITS), "HandModel": (1, model_config)}
    for name, deployment in deployments(config).items():
        cpus, user_config = sizes[name]
        deployment["ray_actor_options"]["num_cpus"] = cpus
        deployment["autoscaling_config"].update(min_replicas=1, max_replicas=1)
        deployment["user_config"].update(user_config)
    return config


def serve_deploy(ray_cluster, config: dict, folder: Path) -> None:
    """`serve deploy` as a user runs it: the config goes to the cluster's dashboard and only
    what changed is applied (a changed `user_config` reconfigures the running replicas)."""
    path = folder / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [str(Path(sys.executable).parent / "serve"), "deploy", str(path)]
    command += ["--address", ray_cluster.test_dashboard_url]
    environment = {**os.environ, "RAY_AUTH_MODE": "token"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=environment)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def server(
    ray_cluster, tiny_export, tmp_path_factory
) -> Iterator[tuple[str, Callable[[dict], None]]]:
    """The app on a free port, serving `tiny_export` with `BATCHING`: (its base URL, a function
    that `serve deploy`s it again with another HandModel `user_config`)."""

    port = free_port()
    folder = tmp_path_factory.mktemp("serve")

    def deploy(model_config: dict) -> None:
        serve_deploy(ray_cluster, deployment_config(port, tiny_export, model_config), folder)

    deploy(BATCHING)
    url = f"http://127.0.0.1:{port}"
    wait_for_model(url, is_warm)
    yield url, deploy
    shutdown_serve()


@pytest.fixture(scope="module")
def url(server) -> str:
    """The running app's base URL, e.g. http://127.0.0.1:PORT."""
    return server[0]
