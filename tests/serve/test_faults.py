"""Replicas killed under steady load, end to end over real HTTP: the soak's kill mode
(`handray.serve.soak`, which `benchmarks/soak.py` runs for minutes), run short. `serve run` with
2 Ingress and 2 HandModel replicas; 8 closed-loop clients mix good images with bad inputs; one
HandModel replica's process gets SIGKILL, then, once a new one serves, one Ingress replica's.
Serve must replace each while requests keep succeeding (see `soak.verdicts` for each target).
One soak holds both kills, so the replicas start and warm up once; it ends SETTLE_S after the
second replacement, since the load has shown by then that it goes on."""

import pytest

from handray.data.scene import render_sample
from handray.serve.launcher import deployments
from handray.serve.soak import REPLACED_WITHIN_S, SoakReport, run_soak, verdicts
from tests.serve.conftest import BATCHING

pytestmark = pytest.mark.slow  # a Serve server whose replicas are killed

KILLED = ("HandModel", "Ingress")
KILL_AFTER_S = 10
SETTLE_S = 30


def half_a_cpu_each(config: dict) -> None:
    """Four replicas and the tests' other actors fit the test cluster's 4 logical CPUs;
    batches of up to 4 (BATCHING), so the replicas warm up in half the time."""
    for deployment in deployments(config).values():
        deployment["ray_actor_options"]["num_cpus"] = 0.5
    deployments(config)["HandModel"]["user_config"]["max_batch_size"] = BATCHING["max_batch_size"]


@pytest.fixture(scope="module")
def soak(ray_cluster, tiny_export, tmp_path_factory) -> SoakReport:
    return run_soak(
        tiny_export,
        ray_cluster.get_runtime_context().gcs_address,
        tmp_path_factory.mktemp("soak"),
        picture=render_sample(0, "train", 1, 640)[0],  # the soak benchmark's picture
        seconds=KILL_AFTER_S + len(KILLED) * REPLACED_WITHIN_S + SETTLE_S,
        clients=8,
        kills=KILLED,
        kill_after_s=KILL_AFTER_S,
        settle_s=SETTLE_S,
        adjust=half_a_cpu_each,
    )


@pytest.mark.parametrize("deployment", KILLED)
def test_a_killed_replica_is_replaced_while_requests_keep_succeeding(soak, deployment):
    (kill,) = [kill for kill in soak.kills if kill.deployment == deployment]
    assert kill.replaced_after_s is not None, f"no new {deployment} replica served"
    assert kill.replaced_after_s <= REPLACED_WITHIN_S
    served = [o for o in soak.good() if o.started > kill.at and o.status == 200]
    assert len(served) >= 100, "the load did not go on after the kill"


def test_requests_in_flight_on_a_killed_replica_fail_retryably_and_nothing_hangs(soak):
    unmet = [f"{measure}: {value}" for measure, value, met in verdicts(soak) if not met]
    assert not unmet, unmet


def test_the_soak_ends_settle_s_after_the_last_replacement(soak):
    """The load goes on for SETTLE_S after the second replacement and then stops, instead of
    running the soak's full length (its `seconds` leave room for two slow replacements)."""
    last = soak.kills[-1]
    settled = last.at + last.replaced_after_s + SETTLE_S
    assert max(o.started for o in soak.outcomes) >= settled - 2  # the load went on until then
    ended = max(o.started + o.seconds for o in soak.outcomes)
    assert ended <= settled + soak.request_timeout_s + 1 < soak.seconds  # and stopped there
