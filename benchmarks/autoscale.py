"""Autoscaling under a ramp: do the model replicas follow the load, and where does a request's
time go at each load?

`serve run` of serve_config.yaml as shipped (autoscaling on, replica CPUs as shipped) on a Ray
cluster of this machine with its own CPU count, handray's proxy middleware on. Closed-loop
clients post 128 px validation-style images (the synthetic generator's val split, multipart
PNG, as the old client does), stepping 1 -> 8 -> 48 -> 200 -> 48 -> 8 -> 0 clients; then the
server idles while the replicas should come back down. Every 2 s the watcher records each
deployment's RUNNING and starting replicas, the ongoing requests Serve's autoscaler averages
for it (the controller's own number) and the replies per second. Each reply's `timing_ms`
splits its server time into receive (read, check, decode the upload), hop (between the
replicas), queue (waiting in the model replica for a batch), batch (the batch's run) and encode.

Targets (issue 22): at 48 clients HandModel runs 2 replicas within 60 s and is back to 1
within 180 s of the load ending; no request fails across the ramp; >= 20 replies/s at 48
clients once the replicas are warm (the second 48-client phase; the first one includes the
second replica's start, which takes CPU from the serving one on a 2-core machine).

    .venv/bin/python benchmarks/autoscale.py [--model-dir runs/demo/model] [--scale 1.0]
        [--plot runs/autoscale.png]

`--scale` multiplies every phase's length (0.5 for a quicker look; the down phase is not
scaled, as the delays it measures are the config's).
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from PIL import Image

from handray.core.exported import holds_export
from handray.data.scene import render_sample
from handray.serve.launcher import ServeProcess, deployments, free_port, shipped_config
from handray.serve.loadgen import Probe
from handray.serve.proxy import CALLBACK, CALLBACK_VARIABLE
from handray.serve.ramp import Phase, RampReport, phase_summary, run_ramp

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SIZE = 128
IMAGES = 16
# (clients, seconds): up, a burst, down, then idle while the replicas should scale down.
UP = ((1, 30), (8, 30), (48, 120), (200, 40), (48, 30), (8, 20))
IDLE_S = 200
SETTLE_S = 10  # a phase's first seconds are left out of its summary


def validation_probes() -> list[Probe]:
    """PNGs of the synthetic generator's validation split at 128 px."""
    probes = []
    for index in range(IMAGES):
        picture, _ = render_sample(0, "val", index, IMAGE_SIZE)
        buffer = io.BytesIO()
        Image.fromarray(picture).save(buffer, format="PNG")
        probes.append(Probe(f"val{index}.png", buffer.getvalue()))
    return probes


def timeline_rows(report: RampReport, every_s: float = 10.0) -> list[str]:
    rows = [
        "| s | clients | HandModel running (+starting) | Ingress running (+starting) "
        "| autoscaler sees HandModel / Ingress | replies/s |",
        "|---|---------|------|------|------|------|",
    ]
    next_at = 0.0
    for sample in report.samples:
        if sample.at < next_at:
            continue
        next_at = sample.at + every_s
        cells = []
        for name in ("HandModel", "Ingress"):
            starting = sample.starting.get(name, 0)
            cells.append(f"{sample.running.get(name, 0)}" + (f" (+{starting})" if starting else ""))
        rows.append(
            f"| {sample.at:.0f} | {sample.clients} | {cells[0]} | {cells[1]} "
            f"| {sample.seen.get('HandModel', 0):.1f} / {sample.seen.get('Ingress', 0):.1f} "
            f"| {sample.answered_per_s:.1f} |"
        )
    return rows


def phase_rows(report: RampReport) -> list[str]:
    parts = ("receive", "hop", "queue", "batch", "encode", "total")
    rows = [
        "| clients | replies/s | failed | p50 ms | p99 ms | "
        + " | ".join(f"{p} ms" for p in parts)
        + " |",
        "|" + "---|" * (5 + len(parts)),
    ]
    for index, phase in enumerate(report.phases):
        if phase.clients == 0:
            continue
        s = phase_summary(report, index, SETTLE_S)
        cells = " | ".join(f"{s.get(p, float('nan')):.0f}" for p in parts)
        rows.append(
            f"| {phase.clients} | {s['per_s']:.1f} | {s['failed']:.0f} "
            f"| {s.get('p50', float('nan')) * 1e3:.0f} | {s.get('p99', float('nan')) * 1e3:.0f} "
            f"| {cells} |"
        )
    return rows


def target_rows(report: RampReport) -> list[str]:
    bounds = report.phase_bounds()
    busy = [i for i, p in enumerate(report.phases) if p.clients == 48]
    load_end = bounds[-1][0]  # the idle phase's start
    up = report.first_time("HandModel", 2, bounds[busy[0]][0], most=False)
    down = report.first_time("HandModel", 1, load_end, most=True)
    starting, warm = (phase_summary(report, i, SETTLE_S)["per_s"] for i in (busy[0], busy[-1]))
    failed = len(report.failures())
    checks = [
        ("HandModel at 2 replicas after 48 clients start", up, up is not None and up <= 60),
        ("HandModel back at 1 after the load ends", down, down is not None and down <= 180),
    ]
    rows = ["| target | measured | met |", "|---|---|---|"]
    for name, seconds, met in checks:
        value = "never" if seconds is None else f"{seconds:.0f} s"
        rows.append(f"| {name} | {value} | {'yes' if met else 'NO'} |")
    rows += [
        f"| failed requests | {failed} of {len(report.outcomes)} | "
        f"{'yes' if failed == 0 else 'NO'} |",
        f"| replies/s at 48 clients, replicas warm (after the burst) | {warm:.1f} | "
        f"{'yes' if warm >= 20 else 'NO'} |",
        f"| replies/s at 48 clients, while the 2nd replica starts | {starting:.1f} | (no target) |",
    ]
    return rows


def plot(report: RampReport, path: Path) -> None:
    """Clients, replicas and replies/s against time, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from handray.core.atomic import atomic_write

    figure = Figure(figsize=(8, 5), dpi=100, layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True)
    times = [s.at for s in report.samples]
    for name in ("HandModel", "Ingress"):
        top.step(
            times,
            [s.running.get(name, 0) for s in report.samples],
            where="post",
            label=f"{name} replicas",
        )
    top.set_ylabel("replicas")
    top.set_yticks([0, 1, 2, 3])
    twin = top.twinx()
    twin.step(
        times,
        [s.clients for s in report.samples],
        where="post",
        color="grey",
        linestyle=":",
        label="clients",
    )
    twin.set_ylabel("clients")
    top.legend(loc="upper left")
    bottom.plot(times, [s.answered_per_s for s in report.samples], label="replies per second")
    bottom.plot(
        times,
        [s.seen.get("HandModel", 0) for s in report.samples],
        label="HandModel requests the autoscaler sees",
    )
    bottom.set_xlabel("seconds into the ramp")
    bottom.legend(loc="upper left")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as handle:
        FigureCanvasAgg(figure).print_png(handle)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=ROOT / "runs" / "demo" / "model")
    parser.add_argument("--scale", type=float, default=1.0, help="phase length multiplier")
    parser.add_argument("--plot", type=Path, default=ROOT / "runs" / "autoscale.png")
    args = parser.parse_args()
    if not holds_export(args.model_dir):
        parser.error(f"--model-dir {args.model_dir}: no export there; run `make demo` first")
    import ray

    os.environ[CALLBACK_VARIABLE] = CALLBACK  # before the cluster starts: its proxy reads it
    phases = [Phase(c, s * args.scale) for c, s in UP] + [Phase(0, IDLE_S)]
    context = ray.init(address="local", include_dashboard=False, log_to_driver=False)
    cpus = ray.cluster_resources().get("CPU", 0)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = shipped_config(args.model_dir.resolve(), free_port())
            server = ServeProcess(config, Path(tmp), context.address_info["gcs_address"])
            try:
                report = run_ramp(server.url, validation_probes(), phases)
            finally:
                server.stop()
    finally:
        ray.shutdown()
    shipped = deployments(config)
    sizes = []
    for name, deployment in shipped.items():
        scaling = deployment["autoscaling_config"]
        sizes.append(
            f"{name} {scaling['min_replicas']}-{scaling['max_replicas']} x "
            f"{deployment['ray_actor_options']['num_cpus']} CPU"
        )
    sizes = ", ".join(sizes)
    print(f"\nRamp on {os.cpu_count()} cores, a {cpus:g}-CPU Ray cluster; {sizes}\n")
    print("\n".join(timeline_rows(report)))
    print()
    print("\n".join(phase_rows(report)))
    print()
    print("\n".join(target_rows(report)))
    plot(report, args.plot)
    print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
