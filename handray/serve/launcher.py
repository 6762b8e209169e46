"""`serve run` of a serve config in a subprocess, attached to the caller's own Ray cluster, as
the serving benchmarks and the tests over real HTTP run the app: started on a free port, ready
once warm, stopped with Ctrl-C."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

# The checkout's serve_config.yaml: launching the app as shipped needs a source checkout.
SHIPPED_CONFIG = Path(__file__).resolve().parents[2] / "serve_config.yaml"
STOP_TIMEOUT_S = 90  # a loaded 2-core machine can take a minute to drain and stop


def shipped_config(export: Path, port: int) -> dict:
    """serve_config.yaml as shipped, serving `export` on `port`."""
    config = yaml.safe_load(SHIPPED_CONFIG.read_text())
    config["http_options"]["port"] = port
    (app,) = config["applications"]
    app["args"]["model_dir"] = str(export)
    return config


def deployments(config: dict) -> dict[str, dict]:
    """The config's deployments by name, to change in place."""
    (app,) = config["applications"]
    return {deployment["name"]: deployment for deployment in app["deployments"]}


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def is_warm(model: dict) -> bool:
    """The model replica has run every batch size up to its `max_batch_size` (HandModel runs the
    larger ones in the background after it starts, loading the CPU meanwhile)."""
    return model["warm_batch_size"] == model["settings"]["max_batch_size"]


def wait_for_model(
    url: str,
    ready: Callable[[dict], Any],
    timeout_s: float = 240,
    gone: Callable[[], str | None] = lambda: None,
) -> dict:
    """GET /healthz until `ready(model info)` holds; returns that info. `gone()` names a
    reason to stop waiting early (a server process that exited)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        # A refused connection, a reset or a non-200 reply (HTTPError) just means "not yet".
        with contextlib.suppress(OSError, http.client.HTTPException, ValueError, KeyError):
            with urllib.request.urlopen(f"{url}/healthz", timeout=10) as reply:
                model = json.loads(reply.read())["model"]
            if ready(model):
                return model
        if reason := gone():
            raise RuntimeError(reason)
        time.sleep(1)
    raise TimeoutError(f"{url} did not become ready within {timeout_s:.0f} s")


class ServeProcess:
    """`serve run CONFIG --address ADDRESS`, ready once `/healthz` answers 200 and the model
    replica it reached is warm (`is_warm`), so warm-up does not load the first measurements."""

    def __init__(self, config: dict, folder: Path, address: str, ready_timeout_s: float = 600):
        self.url = f"http://127.0.0.1:{config['http_options']['port']}"
        path = folder / "serve_config.yaml"
        path.write_text(yaml.safe_dump(config))
        serve = Path(sys.executable).parent / "serve"
        self.log = (folder / "serve.log").open("w")
        self.process = subprocess.Popen(
            [str(serve), "run", str(path), "--address", address],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            # Unbuffered, so a `serve run` that has to be killed loses no line of its log.
            env={**os.environ, "RAY_AUTH_MODE": "token", "PYTHONUNBUFFERED": "1"},
            preexec_fn=ctrl_c_stops,
        )
        try:
            wait_for_model(self.url, is_warm, ready_timeout_s, self._exited)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"serve run did not become ready; see {self.log.name}") from None

    def _exited(self) -> str | None:
        return f"serve run exited; see {self.log.name}" if self.process.poll() is not None else None

    def stop(self) -> None:
        """Ctrl-C, as a user stops `serve run`, and a kill if it has not ended within
        `STOP_TIMEOUT_S`. A killed `serve run` leaves Serve running on the cluster (its
        controller, proxy and replicas, on this app's port), where the next `serve run` would
        join it and ignore its own port; so Serve is then shut down from this driver."""
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            shutdown_serve()
        forget_serve_client()
        self.log.close()


def ctrl_c_stops() -> None:
    """Give the child Ctrl-C's default action. A shell starts background jobs (`cmd &`, so
    also a benchmark or test run under `nohup`) with SIGINT ignored, children inherit that,
    and Python then never raises KeyboardInterrupt: `serve run` would sleep through `stop`'s
    SIGINT until the kill, and leave Serve running on the cluster."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def forget_serve_client() -> None:
    """Drop this process's cached Serve client. Ray caches the client of the first Serve
    controller a driver asks (the ramp's `serve.status()`, a deployment handle) and keeps it
    after that Serve has ended: `serve.shutdown()` then takes the dead controller for a dead
    cluster and does nothing, and `serve.get_deployment_handle` fails with ActorDiedError.
    Without the cache, the next call finds the controller running now by name."""
    from ray.serve.context import _disconnect

    _disconnect()


def shutdown_serve() -> None:
    """Shut down Serve on the cluster this process is connected to (nothing when it is not),
    whichever Serve client this process cached before (`forget_serve_client`)."""
    import ray
    from ray import serve

    if ray.is_initialized():
        forget_serve_client()
        serve.shutdown()
