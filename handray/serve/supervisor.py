"""`handray serve CONFIG`: a Ray Serve config served until the process is told to stop, then
drained, so stopping a server (docker stop, systemd, Kubernetes, Ctrl-C) loses no request.

`serve run CONFIG` dies on SIGTERM with Ray's trace and drops what is in flight, and even a clean
`serve.shutdown()` kills the HTTP proxies at once. So on the first SIGTERM or SIGINT this module
(1) deploys the same config again with the `Ingress` deployment's `user_config` key `draining`
set, a lightweight update after which every Ingress replica answers new requests with a JSON
503 `shutting_down` while those it holds finish; (2) waits until every replica of the served
applications has been seen with no request in flight, at most the drain timeout (by default
`http_options.request_timeout_s`, which bounds how long any accepted request lives); (3) shuts
Serve down, and the Ray cluster when it started one. A second signal skips to (3).

The config is applied by Ray's own code, as `serve run` does: Serve is started with the config's
HTTP, gRPC, proxy and logging options, then `deploy_apps` takes the config.

The signal must reach this process alone: the Ray processes it starts share its process group,
and a SIGTERM to all of them (systemd's default KillMode=control-group) stops the cluster
under the drain. Under systemd, set KillMode=mixed; let a stop's grace period (Kubernetes'
terminationGracePeriodSeconds, `docker stop -t`) exceed the drain timeout plus ~10 s.
"""

from __future__ import annotations

import copy
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from handray.core.errors import HandrayError
from handray.core.exported import first_export, read_model_card
from handray.core.local_ray import start_local_ray
from handray.serve.proxy import CALLBACK, CALLBACK_VARIABLE
from handray.serve.replicas import REPLICA_PREFIX

HANDRAY_APP = "handray.serve.app:build_app"  # the import path of the apps that can drain
INGRESS = "Ingress"  # handray.serve.app's HTTP deployment, the one told to drain
POLL_S = 0.2
UNBOUNDED_DRAIN_S = 60.0  # the drain's bound when the config sets no request_timeout_s


def serve_config(
    path: Path,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    drain_timeout_s: float | None = None,
) -> int:
    """Serve the config at `path` until SIGTERM or SIGINT, drain, stop; returns the exit code.
    Without `address` a local Ray cluster of `num_cpus` CPUs is started (and stopped at the
    end) with handray's proxy middleware turned on; with it, the running cluster is joined."""
    import ray

    config = read_config(path, Path.cwd())
    if address is not None and num_cpus is not None:
        raise HandrayError("--num-cpus sizes a cluster handray serve starts; drop it or --address")
    if address is None:
        check_exports(config)
        _turn_on_proxy_middleware()
    else:
        print(
            "joining the cluster at --address: its proxy returns JSON errors only if the cluster "
            f"was started with `export {CALLBACK_VARIABLE}={CALLBACK}`",
            flush=True,
        )
    timeout_s = drain_timeout_s
    if timeout_s is None:
        timeout_s = config["http_options"].get("request_timeout_s") or UNBOUNDED_DRAIN_S

    from ray.serve._private.constants import SERVE_NAMESPACE

    if address is None:
        start_local_ray(num_cpus=num_cpus, namespace=SERVE_NAMESPACE)
    else:
        ray.init(address=address, namespace=SERVE_NAMESPACE)
    # After ray.init, which installs its own SIGTERM handlers (a Python one that exits and the
    # core worker's, which prints a trace): these replace them.
    stop = StopSignals()
    stop.install()
    try:
        _serve_until_stopped(config, stop, timeout_s)
    finally:
        from ray import serve

        began = time.monotonic()
        serve.shutdown()
        stopped_serve = time.monotonic()
        ray.shutdown()  # stops the cluster when ray.init started it, else disconnects
    print(
        f"stopped: Serve in {stopped_serve - began:.1f} s, "
        f"then Ray in {time.monotonic() - stopped_serve:.1f} s",
        flush=True,
    )
    return 0


def read_config(path: Path, base: Path) -> dict[str, Any]:
    """The serve config file as a dict Ray's `ServeDeploySchema` accepts, with the `model_dir`
    of handray apps made absolute from `base` (the folder `serve run` would read it from)."""
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    if not path.is_file():
        raise HandrayError(f"serve config {path}: no such file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise HandrayError(f"serve config {path}: not valid YAML ({_one_line(err)})") from None
    if not isinstance(raw, dict):
        raise HandrayError(f"serve config {path}: expected a mapping of Serve options")
    try:
        ServeDeploySchema.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in err.errors()
        )
        raise HandrayError(f"serve config {path}: {problems}") from None
    config = raw
    if not config.get("applications"):
        raise HandrayError(f"serve config {path}: no applications to serve")
    config.setdefault("http_options", {})
    for app in _handray_apps(config):
        model_dir = app.get("args", {}).get("model_dir")
        if isinstance(model_dir, list):
            app["args"]["model_dir"] = [str(base / Path(d).expanduser()) for d in model_dir]
        elif model_dir is not None:
            app["args"]["model_dir"] = str(base / Path(model_dir).expanduser())
    return config


def check_exports(config: dict[str, Any]) -> None:
    """Refuse a handray app whose `model_dir` holds no export before anything starts (checked
    only for a local cluster: a joined cluster's nodes may see other files), and say which
    export each app serves."""
    for app in _handray_apps(config):
        args = app.get("args", {})
        if "model_dir" not in args:
            raise HandrayError(f"application {app['name']}: args.model_dir, the export, is unset")
        try:
            export = first_export(args["model_dir"])
        except HandrayError as err:
            raise HandrayError(f"application {app['name']}: {err}") from None
        about = read_model_card(export).get("summary")
        print(
            f"application {app['name']}: the export in {export}" + (f" ({about})" if about else ""),
            flush=True,
        )


def drained_config(config: dict[str, Any]) -> dict[str, Any]:
    """The same config with every handray app's Ingress told to drain: a `user_config` change
    only, which Serve applies by calling `reconfigure` on the live replicas."""
    from handray.serve.app import DRAINING_KEY

    drained = copy.deepcopy(config)
    for app in _handray_apps(drained):
        deployments = app.setdefault("deployments", [])
        ingress = next((d for d in deployments if d["name"] == INGRESS), None)
        if ingress is None:
            ingress = {"name": INGRESS}
            deployments.append(ingress)
        ingress["user_config"] = {**(ingress.get("user_config") or {}), DRAINING_KEY: True}
    return drained


@dataclass
class StopSignals:
    """SIGTERM and SIGINT as requests to stop. The handler only records them: the main thread
    acts on them between its short waits."""

    received: list[str] = field(default_factory=list)

    def install(self) -> None:
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, self._record)

    def _record(self, number: int, frame: Any) -> None:
        self.received.append(signal.Signals(number).name)

    @property
    def stop(self) -> bool:
        return bool(self.received)

    @property
    def hurry(self) -> bool:
        """A second signal: skip the rest of the drain."""
        return len(self.received) > 1


def _serve_until_stopped(config: dict[str, Any], stop: StopSignals, timeout_s: float) -> None:
    from ray.serve._private import api
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    client = api.serve_start(
        http_options=schema.http_options.model_dump(),
        grpc_options=schema.grpc_options.model_dump(),
        global_logging_config=schema.logging_config,
        controller_options=schema.controller_options,
        proxy_location=schema.proxy_location,
    )
    client.deploy_apps(schema, _blocking=False)
    if not _wait_until_running(config, stop, failing=True):
        print(f"got {stop.received[0]} before the applications were ready; stopping", flush=True)
        return
    for url in _urls(config):
        print(f"serving {url} (SIGTERM or Ctrl-C: drain the requests in flight, stop)", flush=True)
    while not stop.stop:
        time.sleep(POLL_S)
    print(f"got {stop.received[0]}: draining, at most {timeout_s:g} s", flush=True)
    try:
        drain(client, config, stop, timeout_s)
    except Exception as err:  # the stop must go on: Serve and Ray are shut down next
        print(f"the drain failed ({type(err).__name__}: {_one_line(err)}); stopping", flush=True)


def drain(client: Any, config: dict[str, Any], stop: StopSignals, timeout_s: float) -> None:
    """Steps 1 and 2 of the stop (see the module docstring); returns when every replica was
    seen idle, after `timeout_s`, or at a second signal."""
    from ray.serve.schema import ServeDeploySchema

    began = time.monotonic()
    client.deploy_apps(ServeDeploySchema.model_validate(drained_config(config)), _blocking=False)
    if not _wait_until_running(config, stop, deadline=began + timeout_s):
        if stop.hurry:
            print(f"second signal ({stop.received[-1]}): stopping without draining", flush=True)
        else:
            print(f"the drain did not reach every replica within {timeout_s:g} s", flush=True)
        return
    reconfigured = time.monotonic()
    busy = _wait_until_idle([app["name"] for app in config["applications"]], stop, timeout_s)
    if stop.hurry:
        print(
            f"second signal ({stop.received[-1]}): stopping with {busy} requests in flight",
            flush=True,
        )
    elif busy:
        print(f"{busy} requests still in flight after {timeout_s:g} s; stopping", flush=True)
    else:
        print(
            f"drained in {time.monotonic() - began:.1f} s "
            f"({reconfigured - began:.1f} s until every Ingress replica refused new requests)",
            flush=True,
        )


def _wait_until_running(
    config: dict[str, Any],
    stop: StopSignals,
    *,
    failing: bool = False,
    deadline: float = float("inf"),
) -> bool:
    """Whether every app of `config` became RUNNING (before `deadline`, without a stopping
    signal: the first one while `failing`, a second one otherwise). `failing`: an app that
    failed to deploy is a HandrayError naming it with Serve's reason."""
    from ray import serve
    from ray.serve.schema import ApplicationStatus

    names = [app["name"] for app in config["applications"]]
    shown: dict[str, str] = {}
    while time.monotonic() < deadline and not (stop.stop if failing else stop.hurry):
        statuses = serve.status().applications
        running = 0
        for name in names:
            status = statuses.get(name)
            if status is None:
                continue
            if status.status == ApplicationStatus.RUNNING:
                running += 1
            elif failing and status.status in (
                ApplicationStatus.DEPLOY_FAILED,
                ApplicationStatus.UNHEALTHY,
            ):
                raise HandrayError(
                    f"application {name}: {status.status.value}: {_reason(status.message)}"
                )
            elif failing and status.message and shown.get(name) != status.message:
                shown[name] = status.message
                print(f"application {name}: {status.message}", flush=True)
        if running == len(names):
            return True
        time.sleep(POLL_S)
    return False


def _wait_until_idle(apps: list[str], stop: StopSignals, timeout_s: float) -> int:
    """Poll every replica of `apps` until each has been seen with no request in flight (from
    then on a draining Ingress takes no new work, and a model replica gets work only from an
    Ingress); returns the requests still in flight when `timeout_s` passed or a second signal
    came, else 0. A replica seen idle once counts as drained: with clients retrying at once,
    a draining Ingress is rarely idle at the same moment as the others."""
    import ray

    prefixes = tuple(f"{REPLICA_PREFIX}{app}#" for app in apps)
    handles: dict[str, Any] = {}
    idle: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while True:
        names = [
            (actor["name"], actor["namespace"])
            for actor in ray.util.list_named_actors(all_namespaces=True)
            if actor["name"].startswith(prefixes) and actor["name"] not in idle
        ]
        counts = {}
        for name, namespace in names:
            try:
                if name not in handles:
                    handles[name] = ray.get_actor(name, namespace=namespace)
                counts[name] = handles[name].get_num_ongoing_requests.remote()
            except ValueError:  # gone since it was listed: Serve stopped it, after draining it
                continue
        busy = 0
        for name, ref in counts.items():
            try:
                count = ray.get(ref, timeout=max(1.0, POLL_S))
            except ray.exceptions.GetTimeoutError:
                count = 1  # too busy to answer: not idle
            except ray.exceptions.RayActorError:
                count = 0  # died or stopped: holds nothing any more
            if count == 0:
                idle.add(name)
            busy += count
        if busy == 0 or stop.hurry or time.monotonic() >= deadline:
            return busy
        time.sleep(POLL_S)


def _turn_on_proxy_middleware() -> None:
    """Ray's proxy reads its middlewares from the environment of the processes that start it,
    which inherit this one's when ray.init starts the cluster."""
    current = os.environ.get(CALLBACK_VARIABLE)
    if current is None:
        os.environ[CALLBACK_VARIABLE] = CALLBACK
    elif current != CALLBACK:
        print(
            f"{CALLBACK_VARIABLE}={current} is kept; the proxy returns handray's JSON errors "
            f"only with {CALLBACK}",
            flush=True,
        )


def _handray_apps(config: dict[str, Any]) -> list[dict[str, Any]]:
    return [app for app in config["applications"] if app.get("import_path") == HANDRAY_APP]


def _urls(config: dict[str, Any]) -> list[str]:
    """The base URL of each app (loopback for a server listening on every interface)."""
    if config.get("proxy_location") in ("Disabled", "NoServer"):
        return []
    http = config["http_options"]
    host = http.get("host", "127.0.0.1")
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    base = f"http://{host}:{http.get('port', 8000)}"
    return [
        f"{base}{app.get('route_prefix', '/').rstrip('/')}/"
        for app in config["applications"]
        if app.get("route_prefix", "/") is not None
    ]


def _reason(message: str) -> str:
    """Serve's status message, without the traceback it may carry: its last line (the error)."""
    lines = [line.strip() for line in (message or "").strip().splitlines() if line.strip()]
    if not lines:
        return "no reason given; see `serve status` and the Serve logs"
    return lines[-1] if any(line.startswith("Traceback") for line in lines) else " ".join(lines)


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())
