"""Soak: a crowd of closed-loop HTTP clients against `serve run` for a long time, and
optionally a replica killed in the middle of it.

`serve run` of serve_config.yaml as shipped, except that both deployments are held at 2
replicas, on a Ray cluster of this machine with handray's proxy middleware on (JSON errors from
the proxy too). Each client posts the next request as soon as the last one is answered: good
images of several sizes and formats (PNG and JPEG, 96 to 640 px, multipart or raw) and, about
one request in ten, a bad input that must get a 4xx JSON error. A health poller asks `/healthz`
every second. Each replica's resident memory is read from /proc (Linux) every 30 s. The soak
itself is `handray.serve.soak` (the replica-kill test runs it too); this script runs it on the
demo model and prints its tables.

Targets: zero 5xx and zero connection errors for good requests, every bad input a 4xx JSON
error, replica RSS growth under 10 % from minute 2 to the end. With `--kill model|ingress`:
one replica of that deployment is killed with SIGKILL after `--kill-after` seconds (given
twice, e.g. `--kill model --kill ingress`, the second once the first one's replacement
serves); then no request may wait past the proxy's timeout, a failed request must be a JSON
503 with Retry-After, under 1 % of the requests may fail, `/healthz` stays up, and a new
replica serves within 60 s of each kill.

    .venv/bin/python benchmarks/soak.py [--minutes 10] [--clients 200] [--kill model|ingress]...
        [--model-dir runs/demo/model]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from handray.core.exported import holds_export
from handray.data.scene import render_sample
from handray.serve.loadgen import Outcome, percentile
from handray.serve.proxy import CALLBACK, CALLBACK_VARIABLE
from handray.serve.soak import DEPLOYMENTS, SoakReport, run_soak, verdicts

ROOT = Path(__file__).resolve().parents[1]
DEPLOYMENTS_BY_FLAG = {"model": "HandModel", "ingress": "Ingress"}
# Good requests are resized from the first training image of the synthetic dataset, at 640 px.
PICTURE_SIZE = 640


def minute_table(report: SoakReport) -> list[str]:
    rows = [
        "| minute | requests | good 200 | good 5xx | conn. errors | bad 4xx JSON | bad other "
        "| p50 ms | p99 ms |",
        "|--------|----------|----------|----------|--------------|--------------|-----------"
        "|--------|--------|",
    ]
    by_minute: dict[int, list[Outcome]] = defaultdict(list)
    for outcome in report.outcomes:
        by_minute[int(outcome.started // 60)].append(outcome)
    wrong_bad = set(map(id, report.bad_not_4xx_json()))
    for minute, outcomes in sorted(by_minute.items()):
        good = [o for o in outcomes if not o.probe.bad]
        ok = [o.seconds for o in good if o.status == 200] or [0.0]
        bad = [o for o in outcomes if o.probe.bad]
        rows.append(
            f"| {minute + 1:>6} | {len(outcomes):>8} | {sum(o.status == 200 for o in good):>8} "
            f"| {sum((o.status or 0) >= 500 for o in good):>8} "
            f"| {sum(o.status is None for o in outcomes):>12} "
            f"| {sum(id(o) not in wrong_bad for o in bad):>12} "
            f"| {sum(id(o) in wrong_bad for o in bad):>9} "
            f"| {percentile(ok, 0.5) * 1e3:>6.0f} | {percentile(ok, 0.99) * 1e3:>6.0f} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument(
        "--kill",
        choices=DEPLOYMENTS_BY_FLAG,
        action="append",
        default=[],
        help="kill one replica of this deployment under load (again: one after the other)",
    )
    parser.add_argument("--kill-after", type=float, default=120.0, help="seconds into the soak")
    parser.add_argument("--model-dir", type=Path, default=ROOT / "runs" / "demo" / "model")
    args = parser.parse_args()
    if not holds_export(args.model_dir):
        parser.error(f"--model-dir {args.model_dir}: no export there; run `make demo` first")
    import ray

    os.environ[CALLBACK_VARIABLE] = CALLBACK  # before the cluster starts: its proxy reads it
    context = ray.init(address="local", num_cpus=4, include_dashboard=True, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            report = run_soak(
                args.model_dir.resolve(),
                context.address_info["gcs_address"],
                Path(tmp),
                picture=render_sample(0, "train", 1, PICTURE_SIZE)[0],
                seconds=args.minutes * 60,
                clients=args.clients,
                kills=[DEPLOYMENTS_BY_FLAG[flag] for flag in args.kill],
                kill_after_s=args.kill_after,
            )
    finally:
        ray.shutdown()
    kill = "".join(f", one {k.deployment} replica killed at {k.at:.0f} s" for k in report.kills)
    print(
        f"\nSoak: {args.clients} closed-loop clients, {args.minutes:g} min, 2 Ingress + 2 "
        f"HandModel replicas, {os.cpu_count()} CPU cores{kill}"
    )
    print("\n".join(minute_table(report)))
    print("\n| replica RSS MiB | start | minute 2 | end |")
    print("|-----------------|-------|----------|-----|")
    for deployment in DEPLOYMENTS:
        samples = report.rss[deployment]
        at_2 = next((rss for t, rss in samples if t >= 120), samples[-1][1])
        print(
            f"| {deployment:<15} | {samples[0][1] / 2**20:5.0f} | {at_2 / 2**20:8.0f} | "
            f"{samples[-1][1] / 2**20:3.0f} |"
        )
    failed = Counter(f"{o.status}{' JSON' if o.json_error else ''}" for o in report.failures())
    print(f"\nfailed good requests by status: {dict(failed) or 'none'}")
    print("\n| target | measured | met |")
    print("|--------|----------|-----|")
    for measure, value, met in verdicts(report):
        print(f"| {measure} | {value} | {'yes' if met else 'NO'} |")


if __name__ == "__main__":
    main()
