"""The model deployment follows its load, over real HTTP: serve_config.yaml as shipped (1-2
HandModel replicas, autoscaling on), its delays shortened so a test can watch a whole cycle.
Closed-loop clients keep more requests in flight than one replica's target; HandModel must
reach 2 running replicas, every request must succeed meanwhile, and once the clients stop it
must come back to 1. Each phase ends as soon as it has shown its part (its seconds are the
most it may take). `benchmarks/autoscale.py` measures the same with the shipped delays."""

from io import BytesIO

import pytest
from PIL import Image

from handray.data.scene import render_sample
from handray.serve.launcher import ServeProcess, deployments, free_port, shipped_config
from handray.serve.loadgen import Probe
from handray.serve.ramp import Phase, Sample, run_ramp
from handray.serve.replicas import replicas
from tests.conftest import SERVE_METRICS_PUSH_S
from tests.serve.conftest import BATCHING

pytestmark = pytest.mark.slow  # a Serve app scaled up and down

TARGET = 2  # ongoing requests per HandModel replica
CLIENTS = 12  # 6x the target: the autoscaler asks for 2 replicas (its maximum) at once
LOADED_S = 90  # a replica starting on a busy 2-core machine can take 40 s
IDLE_S = 45
BOTH_SERVING_S = 5  # the load goes on this long with both replicas running


def both_replicas_served(samples: list[Sample]) -> bool:
    """Two HandModel replicas ran for BOTH_SERVING_S under a queue above the target."""
    both = [s.at for s in samples if s.running.get("HandModel", 0) >= 2]
    queued = any(s.seen.get("HandModel", 0) > TARGET for s in samples)
    return queued and bool(both) and both[-1] - both[0] >= BOTH_SERVING_S


def back_to_one(samples: list[Sample]) -> bool:
    """One HandModel replica running and none starting: the load's extra replica is gone."""
    return any(s.running.get("HandModel") == 1 and not s.starting.get("HandModel") for s in samples)


def quick_autoscaling(config: dict) -> dict:
    """The shipped config with second-scale delays and look-back, replica CPUs that fit the
    test cluster beside the other tests' actors, and the tests' shorter batches (BATCHING)."""
    for name, deployment in deployments(config).items():
        deployment["ray_actor_options"]["num_cpus"] = 0.25
        if name == "HandModel":
            deployment["user_config"]["max_batch_size"] = BATCHING["max_batch_size"]
            deployment["autoscaling_config"].update(
                target_ongoing_requests=TARGET,
                upscale_delay_s=2,
                downscale_delay_s=5,
                look_back_period_s=3 * SERVE_METRICS_PUSH_S,  # a few of the cluster's pushes
            )
        else:  # one Ingress replica, so only the model deployment's count changes
            deployment["autoscaling_config"].update(min_replicas=1, max_replicas=1)
    return config


# Serve 2.60 checks the look-back against the deprecated `metrics_interval_s` (10 s by
# default), not against the push interval its replacement variables set (tests/conftest.py).
@pytest.mark.filterwarnings("ignore:`look_back_period_s`:FutureWarning")
def test_the_model_deployment_scales_up_under_load_and_back_down_after(
    ray_cluster, tiny_export, tmp_path
):
    config = quick_autoscaling(shipped_config(tiny_export, free_port()))
    model = deployments(config)["HandModel"]["autoscaling_config"]
    assert (model["min_replicas"], model["max_replicas"]) == (1, 2)  # as shipped
    buffer = BytesIO()
    Image.fromarray(render_sample(0, "val", 0, 96)[0]).save(buffer, format="PNG")
    address = ray_cluster.get_runtime_context().gcs_address
    server = ServeProcess(config, tmp_path, address)
    try:
        assert len(replicas(address, "HandModel")) == 1  # idle: the minimum
        report = run_ramp(
            server.url,
            [Probe("val.png", buffer.getvalue())],
            [Phase(CLIENTS, LOADED_S, both_replicas_served), Phase(0, IDLE_S, back_to_one)],
            every_s=1.0,
        )
    finally:
        server.stop()
    assert len(report.outcomes) >= 50, "the load did not reach the server"
    assert not report.failures(), [(o.status, o.started) for o in report.failures()][:5]
    (_, load_end), _ = report.phase_bounds()
    up = report.first_time("HandModel", 2, 0.0, most=False)
    assert up is not None and up < load_end, [(s.at, s.running, s.seen) for s in report.samples]
    loaded = [s for s in report.samples if s.at < load_end]
    assert max(s.seen["HandModel"] for s in loaded) > TARGET  # the queue the autoscaler saw
    down = report.first_time("HandModel", 1, load_end, most=True)
    assert down is not None, [(s.at, s.running, s.starting) for s in report.samples]
