"""A local cluster started by handray tells its own processes its address (and only them), and
a driver given that address joins it instead of starting another: real drivers, real clusters.
(That the address keeps a cluster's state-API calls working beside another cluster is checked
in tests/train/test_tune.py, where a sweep runs beside one.)"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.cluster import driver_until_closed, environment_without_ray_address

pytestmark = pytest.mark.slow  # two Ray drivers start and join a cluster

# Starts (no RAY_ADDRESS, no `ray start` cluster), then reports its cluster's address and node,
# what one of its tasks sees as RAY_ADDRESS and what the driver itself has; waits for stdin.
STARTER = """
import os, sys, ray
from handray.core.local_ray import join_or_start_ray

@ray.remote(num_cpus=0)
def address_seen_by_a_task():
    return os.environ.get("RAY_ADDRESS")

context = join_or_start_ray(num_cpus=1, include_dashboard=False)
print(context.address_info["gcs_address"], ray.get_runtime_context().get_node_id(),
      ray.get(address_seen_by_a_task.remote()), os.environ.get("RAY_ADDRESS"), flush=True)
sys.stdin.read()
"""
# Given RAY_ADDRESS, joins; reports the node it reached.
JOINER = """
import ray
from handray.core.local_ray import join_or_start_ray

join_or_start_ray()
print(ray.get_runtime_context().get_node_id())
"""


def test_a_started_cluster_knows_its_address_and_a_driver_given_it_joins():
    with driver_until_closed(STARTER) as report:
        gcs, node, seen_by_task, driver_has = report.split()
        assert seen_by_task == gcs  # the cluster's processes know which cluster is theirs
        assert driver_has == "None"  # the driver's own environment is as it was
        joined = subprocess.run(
            [sys.executable, "-c", JOINER],
            capture_output=True,
            text=True,
            timeout=120,
            # Ray 2.60's local clusters ask clients for their token, as README's users do.
            env={**environment_without_ray_address(), "RAY_ADDRESS": gcs, "RAY_AUTH_MODE": "token"},
        )
        assert joined.returncode == 0, joined.stderr[-2000:]
        assert joined.stdout.split()[-1] == node  # joined, not a cluster of its own
