"""A replica killed under steady load, end to end over real HTTP: the soak's kill mode
(`handray.serve.soak`, which `benchmarks/soak.py` runs for minutes), run short. `serve run` with
2 Ingress and 2 HandModel replicas; 8 closed-loop clients mix good images with bad inputs; one
replica's process gets SIGKILL. Serve must replace it while requests keep succeeding (see
`soak.verdicts` for each target)."""

import pytest

from handray.data.scene import render_sample
from handray.serve.launcher import deployments
from handray.serve.soak import REPLACED_WITHIN_S, run_soak, verdicts
from tests.serve.conftest import BATCHING

pytestmark = pytest.mark.slow  # a Serve server whose replicas are killed

KILL_AFTER_S = 10


def half_a_cpu_each(config: dict) -> None:
    """Four replicas and the tests' other actors fit the test cluster's 4 logical CPUs;
    batches of up to 4 (BATCHING), so the replicas warm up in half the time."""
    for deployment in deployments(config).values():
        deployment["ray_actor_options"]["num_cpus"] = 0.5
    deployments(config)["HandModel"]["user_config"]["max_batch_size"] = BATCHING["max_batch_size"]


@pytest.mark.parametrize("deployment", ["HandModel", "Ingress"])
def test_a_killed_replica_is_replaced_while_requests_keep_succeeding(
    ray_cluster, tiny_export, tmp_path, deployment
):
    report = run_soak(
        tiny_export,
        ray_cluster.get_runtime_context().gcs_address,
        tmp_path,
        picture=render_sample(0, "train", 1, 640)[0],  # the soak benchmark's picture
        seconds=KILL_AFTER_S + REPLACED_WITHIN_S,
        clients=8,
        kill=deployment,
        kill_after_s=KILL_AFTER_S,
        adjust=half_a_cpu_each,
    )
    assert report.killed == deployment
    after_kill = [o for o in report.good() if o.started > report.killed_at]
    assert len(after_kill) >= 100, "the load did not go on after the kill"
    unmet = [f"{measure}: {value}" for measure, value, met in verdicts(report) if not met]
    assert not unmet, unmet
