"""`serve run` of a copy of serve_config.yaml in a subprocess, as the serving benchmarks (and
the replica-kill test, through `soak.py`) run it: attached to the caller's own Ray cluster."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]


def shipped_config(export: Path, port: int) -> dict:
    """serve_config.yaml as shipped, serving `export` on `port`."""
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["http_options"]["port"] = port
    (app,) = config["applications"]
    app["args"]["model_dir"] = str(export)
    return config


def deployments(config: dict) -> dict[str, dict]:
    """The config's deployments by name, to change in place."""
    (app,) = config["applications"]
    return {deployment["name"]: deployment for deployment in app["deployments"]}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


class ServeProcess:
    """`serve run CONFIG --address ADDRESS`, ready once `/healthz` answers 200 and the model
    replica it reached has warmed up every batch size (it does the larger ones in the
    background, which would otherwise load the CPU during the first measurements)."""

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
            env={**os.environ, "RAY_AUTH_MODE": "token"},
        )
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            try:
                reply = requests.get(f"{self.url}/healthz", timeout=5)
                model = reply.json()["model"] if reply.status_code == 200 else {}
                if model and model["warm_batch_size"] == model["settings"]["max_batch_size"]:
                    return
            except (requests.RequestException, ValueError, KeyError):
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"serve run exited; see {self.log.name}")
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"serve run did not become ready; see {self.log.name}")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()
