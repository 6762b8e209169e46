"""`handray serve CONFIG` as a container runtime or a person stops it: a real process starting its
own small Ray cluster, real HTTP, then SIGTERM under load or SIGINT. Every request sent before
the signal must succeed, later ones get a 200, a JSON 503 `shutting_down` or a refused
connection, and the process must exit 0 without a trace, leaving no Ray process behind."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import yaml

from handray.serve.launcher import deployments, free_port, is_warm, shipped_config, wait_for_model
from handray.serve.proxy import CALLBACK_VARIABLE

HANDRAY = str(Path(sys.executable).with_name("handray"))
CLIENTS = 16
LOAD_BEFORE_STOP_S = 4
EXIT_WITHIN_S = 90  # drain (a batch or two) + Serve and Ray shutdown on a loaded 2-core machine
GONE_WITHIN_S = 30  # Ray's processes after the command exited


def small_config(export: Path, port: int, route_prefix: str = "/") -> dict:
    """serve_config.yaml as shipped, on `port`, sized for a 2-CPU cluster, with the export given
    relative to its parent folder (the server's working folder), as a user writes it."""
    config = shipped_config(export, port)
    (app,) = config["applications"]
    app["args"]["model_dir"] = export.name
    app["route_prefix"] = route_prefix
    for name, deployment in deployments(config).items():
        deployment["ray_actor_options"]["num_cpus"] = {"Ingress": 0.25, "HandModel": 1}[name]
        deployment["autoscaling_config"].update(min_replicas=1, max_replicas=1)
    deployments(config)["HandModel"]["user_config"]["max_batch_size"] = 2  # a short warm-up
    return config


class Server:
    """`handray serve CONFIG --num-cpus 2` in its own session (so that every process of the Ray
    cluster it starts can be found), without the proxy variable or a Ray address set."""

    def __init__(self, config: dict, export: Path, folder: Path):
        self.url = f"http://127.0.0.1:{config['http_options']['port']}"
        path = folder / "serve_config.yaml"
        path.write_text(yaml.safe_dump(config))
        self.log_path = folder / "serve.log"
        environment = {
            key: value
            for key, value in os.environ.items()
            if key not in (CALLBACK_VARIABLE, "RAY_ADDRESS")
        }
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                [HANDRAY, "serve", str(path), "--num-cpus", "2"],
                cwd=export.parent,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
                start_new_session=True,
            )

    def wait_until_ready(self) -> None:
        """Until /healthz answers and the model replica is warm."""
        try:
            wait_for_model(self.url, is_warm, timeout_s=300, gone=self._exited)
        except (RuntimeError, TimeoutError):
            self.kill()
            raise AssertionError(f"handray serve did not become ready:\n{self.output()}") from None

    def wait_until_serving(self) -> None:
        """Until the command announces its URL (every application RUNNING)."""
        deadline = time.monotonic() + 300
        while "serving http" not in self.output():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"handray serve did not start serving:\n{self.output()}")
            time.sleep(1)

    def _exited(self) -> str | None:
        return "handray serve exited" if self.process.poll() is not None else None

    def session(self) -> set[int]:
        """The processes in the server's session: it and its Ray cluster."""
        return session_members(self.process.pid)

    def output(self) -> str:
        return self.log_path.read_text()

    def kill(self) -> None:
        """The last resort of a failed test: the whole session, so no cluster is left."""
        for pid in self.session():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()


def session_members(session: int) -> set[int]:
    """Ids of the live processes whose session id is `session` (from /proc/PID/stat)."""
    members = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # after the command name: state, ppid, pgrp, session; zombies are already dead
        if fields[0] != "Z" and int(fields[3]) == session:
            members.add(int(entry.name))
    return members


def wait_until_gone(pids: set[int], timeout_s: float) -> set[int]:
    deadline = time.monotonic() + timeout_s
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.5)
        alive = {pid for pid in pids if Path(f"/proc/{pid}").exists() and not _zombie(pid)}
    return alive


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


@dataclass
class Sent:
    """One request: when it was sent (monotonic seconds) and what came back."""

    at: float
    status: int | None = None
    failure: str | None = None  # "refused", or the exception's name: the request was lost
    code: str | None = None  # the JSON error's code
    retry_after: float | None = None


async def post_image(session: aiohttp.ClientSession, url: str, image: bytes) -> Sent:
    sent = Sent(time.monotonic())
    try:
        async with session.post(
            f"{url}/predict", data=image, headers={"Content-Type": "image/png"}
        ) as reply:
            body = await reply.read()
            sent.status = reply.status
            if "Retry-After" in reply.headers:
                sent.retry_after = float(reply.headers["Retry-After"])
            if reply.content_type == "application/json" and reply.status != 200:
                sent.code = json.loads(body).get("error", {}).get("code")
    except aiohttp.ClientConnectorError as err:
        refused = isinstance(err.os_error, ConnectionRefusedError)
        sent.failure = "refused" if refused else type(err).__name__
    except (aiohttp.ClientError, TimeoutError) as err:
        sent.failure = type(err).__name__
    return sent


async def closed_loop(url: str, image: bytes, record: list[Sent], until: asyncio.Event) -> None:
    """Post the next image as soon as the last reply came, as a well-behaved client: after a
    503 it waits the Retry-After it was given, and it stops once the server refuses to
    connect (it is gone)."""
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while not until.is_set():
            sent = await post_image(session, url, image)
            record.append(sent)
            if sent.failure == "refused":
                return
            if sent.status == 503 and sent.retry_after:
                await asyncio.sleep(sent.retry_after)


async def load_then_stop(server: Server, image: bytes) -> tuple[list[Sent], float, float]:
    """CLIENTS clients for LOAD_BEFORE_STOP_S, then SIGTERM; the clients go on until the server
    is gone. Returns every request, when the signal was sent and how long the exit took."""
    record: list[Sent] = []
    finished = asyncio.Event()
    clients = [
        asyncio.create_task(closed_loop(server.url, image, record, finished))
        for _ in range(CLIENTS)
    ]
    await asyncio.sleep(LOAD_BEFORE_STOP_S)
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    try:
        await asyncio.to_thread(server.process.wait, EXIT_WITHIN_S)
    finally:
        exit_s = time.monotonic() - signalled
        finished.set()
        await asyncio.gather(*clients)
    return record, signalled, exit_s


@pytest.mark.slow  # a Ray cluster of its own, a Serve app under load, then SIGTERM
@pytest.mark.cluster
def test_sigterm_under_load_drains_every_request_then_exits_0(tiny_export, photo_files, tmp_path):
    server = Server(small_config(tiny_export, free_port()), tiny_export, tmp_path)
    try:
        server.wait_until_ready()
        cluster = server.session() - {server.process.pid}
        assert len(cluster) >= 4, f"the Ray cluster's processes were not found: {cluster}"
        image = photo_files[0].read_bytes()
        record, signalled, exit_s = asyncio.run(load_then_stop(server, image))
    except BaseException:
        server.kill()
        raise
    output = server.output()
    assert server.process.returncode == 0, output
    assert exit_s < EXIT_WITHIN_S
    assert "Traceback" not in output and "SIGTERM received" not in output, output
    assert "drained in" in output, output

    before = [sent for sent in record if sent.at < signalled]
    after = [sent for sent in record if sent.at >= signalled]
    assert len(before) >= CLIENTS, "the load did not get going before the stop"
    lost = [sent for sent in before if sent.status != 200]
    assert not lost, f"{len(lost)} of {len(before)} requests sent before SIGTERM failed: {lost}"

    def stopped_cleanly(sent: Sent) -> bool:
        refused = sent.status == 503 and sent.code == "shutting_down" and sent.retry_after
        return sent.status == 200 or bool(refused) or sent.failure == "refused"

    wrong = [sent for sent in after if not stopped_cleanly(sent)]
    assert not wrong, f"{len(wrong)} of {len(after)} requests after SIGTERM: {wrong}"
    assert any(sent.code == "shutting_down" for sent in after), "no request met the drain"
    assert any(sent.failure == "refused" for sent in after), "the clients never saw it gone"

    left = wait_until_gone(cluster, GONE_WITHIN_S) | server.session()
    assert not left, f"Ray processes left running: {sorted(left)}"


@pytest.mark.slow  # a Ray cluster of its own and a Serve app
@pytest.mark.cluster
def test_the_proxy_answers_json_without_any_variable_set_and_sigint_stops(tiny_export, tmp_path):
    """With the app at /api, its routes are below /api, and a request to /healthz never
    reaches it: Ray's proxy answers it (plain text, without handray's middleware)."""
    server = Server(small_config(tiny_export, free_port(), "/api"), tiny_export, tmp_path)
    try:
        server.wait_until_serving()
        with urllib.request.urlopen(f"{server.url}/api/healthz", timeout=60) as reply:
            assert json.loads(reply.read())["status"] == "ok"  # the app's routes, below /api
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{server.url}/healthz", timeout=30)
        reply = refused.value
        assert reply.code == 404
        assert reply.headers["Content-Type"].startswith("application/json")
        body = json.loads(reply.read())
        assert body["success"] is False and body["error"]["message"], body
        cluster = server.session() - {server.process.pid}
        server.process.send_signal(signal.SIGINT)
        server.process.wait(EXIT_WITHIN_S)
    except BaseException:
        server.kill()
        raise
    output = server.output()
    assert server.process.returncode == 0, output
    assert "Traceback" not in output and "got SIGINT" in output, output
    assert not wait_until_gone(cluster, GONE_WITHIN_S) | server.session()


def test_a_missing_config_is_one_error_line_and_exit_2(tmp_path):
    missing = tmp_path / "nowhere.yaml"
    done = subprocess.run(
        [HANDRAY, "serve", str(missing)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and str(missing) in lines[0], lines
