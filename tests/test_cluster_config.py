"""cluster.yaml, checked offline the way `ray up` checks it, before it talks to AWS.

`ray up` loads the YAML, fills in the provider's defaults (`prepare_config`), asks AWS for the
instance types' resources and then validates the result against Ray's JSON schema
(`validate_config`, reading ray/autoscaler/ray-schema.json). The AWS lookup is the only step
that needs the network, and cluster.yaml declares every node type's resources itself, so the
same two calls validate the file here with no credentials.
"""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "rayproject/ray:2.60.0-py311-gpu"


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


@pytest.fixture(scope="module")
def cluster(raw) -> dict:
    """The config as `ray up` validates it: merged with the AWS defaults."""
    return prepare_config(copy.deepcopy(raw))


def ray_up_validation(config: dict) -> None:
    validate_config(prepare_config(copy.deepcopy(config)))


def test_cluster_yaml_passes_rays_own_validator(raw, cluster):
    ray_up_validation(raw)
    assert cluster["provider"]["type"] == "aws"
    assert cluster["head_node_type"] in cluster["available_node_types"]


def _misspelled_top_level_key(config):
    config["max_worker"] = config.pop("max_workers")


def _wrong_type(config):
    config["max_workers"] = "eight"


def _unknown_node_type_key(config):
    config["available_node_types"]["gpu_worker"]["min_worker"] = 0


def _misspelled_docker_key(config):
    config["docker"]["run_option"] = config["docker"].pop("run_options")


def _fractional_gpu_resource(config):
    config["available_node_types"]["gpu_worker"]["resources"]["GPU"] = 0.5


def _missing_resources(config):
    del config["available_node_types"]["gpu_worker"]["resources"]


@pytest.mark.parametrize(
    ("break_it", "culprit"),
    [
        (_misspelled_top_level_key, "max_worker"),
        (_wrong_type, "eight"),
        (_unknown_node_type_key, "min_worker"),
        (_misspelled_docker_key, "run_option"),
        (_fractional_gpu_resource, "0.5"),
        (_missing_resources, "resources"),
    ],
)
def test_broken_copies_are_rejected_by_the_same_validator(raw, break_it, culprit):
    broken = copy.deepcopy(raw)
    break_it(broken)
    with pytest.raises(jsonschema.ValidationError) as error:
        ray_up_validation(broken)
    assert culprit in str(error.value)


def test_a_head_node_type_that_does_not_exist_is_rejected(raw):
    broken = copy.deepcopy(raw)
    broken["head_node_type"] = "haed"
    with pytest.raises(ValueError, match="head_node_type"):
        ray_up_validation(broken)


def test_every_node_runs_the_ray_gpu_image_matching_this_environment(cluster):
    docker = cluster["docker"]
    assert docker["image"] == IMAGE
    assert "head_image" not in docker and "worker_image" not in docker
    assert docker["container_name"]
    assert "--ulimit nofile=65536:65536" in docker["run_options"]
    # The laptop's `ray` and the cluster's must be the same release and Python.
    ray_version, python_tag, _ = IMAGE.split(":")[1].split("-")
    assert ray_version == ray.__version__
    requires_python = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "requires-python"
    ]
    assert f">={python_tag[2]}.{python_tag[3:]}" in requires_python


def test_gpu_workers_autoscale_and_the_head_takes_no_training_work(cluster):
    node_types = cluster["available_node_types"]
    head = node_types[cluster["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] == 0
    assert head["max_workers"] == 0

    workers = {name: t for name, t in node_types.items() if name != cluster["head_node_type"]}
    assert workers
    for node_type in workers.values():
        # One Ray Train worker takes 1 CPU and `--gpus-per-worker` GPUs.
        assert node_type["resources"]["GPU"] >= 1 and node_type["resources"]["CPU"] >= 1
        assert node_type["min_workers"] == 0
        assert node_type["node_config"]["InstanceType"]
    reachable_gpus = sum(
        t["resources"]["GPU"] * min(t["max_workers"], cluster["max_workers"])
        for t in workers.values()
    )
    assert reachable_gpus >= 4  # the README's `--workers 4 --gpus-per-worker 1`
    assert cluster["idle_timeout_minutes"] > 0


def test_every_node_installs_this_repository_with_the_gpu_extra(cluster):
    (remote,) = [r for r, local in cluster["file_mounts"].items() if local == "."]
    installs = re.compile(r'pip install .*-e "?(?:~|\$HOME)(/[\w/.-]+)\[gpu\]')
    for commands in (cluster["head_setup_commands"], cluster["worker_setup_commands"]):
        targets = [m.group(1) for c in commands if (m := installs.search(c))]
        assert targets == [remote.removeprefix("~")], commands

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert extras["optional-dependencies"]["gpu"] == ["tensorflow[and-cuda]~=2.21.0"]

    # The copy skips what git ignores, the local virtualenv above all.
    assert ".gitignore" in cluster["rsync_filter"]
    assert ".venv/" in (ROOT / ".gitignore").read_text().split()


def test_ray_starts_with_the_autoscaler_and_a_reachable_dashboard(cluster):
    head, worker = cluster["head_start_ray_commands"], cluster["worker_start_ray_commands"]
    assert head[0] == "ray stop" and worker[0] == "ray stop"
    start = " ".join(head[1:])
    for flag in (
        "--head",
        "--autoscaling-config=~/ray_bootstrap_config.yaml",
        "--dashboard-host=0.0.0.0",
        "--dashboard-port=8265",
    ):
        assert flag in start
    assert "--address=$RAY_HEAD_IP:6379" in " ".join(worker[1:])


def test_every_container_turns_on_the_json_error_proxy_middleware(cluster):
    """The image's Ray reads its proxy middleware from an environment variable; cluster.yaml
    sets it for every process of every node's container, and its value is one Ray accepts."""
    from ray.serve._private.http_util import validate_http_proxy_callback_return
    from ray.serve._private.utils import call_function_from_import_path

    from handray.serve.proxy import CALLBACK, CALLBACK_VARIABLE

    variables = dict(
        option.split(None, 1)[1].split("=", 1)
        for option in cluster["docker"]["run_options"]
        if option.startswith(("--env ", "-e "))
    )
    assert variables[CALLBACK_VARIABLE] == CALLBACK
    assert validate_http_proxy_callback_return(call_function_from_import_path(CALLBACK))
