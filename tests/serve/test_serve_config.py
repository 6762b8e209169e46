"""serve_config.yaml and its GPU variant, checked with Ray Serve's own schema and against the
deployments and settings handray defines, so `serve run`/`serve deploy` will accept them."""

import copy
import shutil
from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from handray.config import ServeConfig, updated_serve_config
from handray.core.errors import ConfigError, HandrayError
from handray.core.exported import read_model_card
from handray.serve import app as serve_app
from handray.serve.supervisor import check_exports, read_config

ROOT = Path(__file__).resolve().parents[2]
FILES = ("serve_config.yaml", "serve_config.gpu.yaml")


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


@pytest.mark.parametrize("name", FILES)
def test_config_passes_serves_schema_and_names_our_deployments(name):
    raw = load(name)
    schema = ServeDeploySchema.model_validate(raw)
    (application,) = schema.applications
    module, _, attribute = application.import_path.partition(":")
    assert module == serve_app.__name__ and callable(getattr(serve_app, attribute))
    deployments = {d.name: d for d in application.deployments}
    assert set(deployments) == {"Ingress", "HandModel"}
    model = deployments["HandModel"]
    settings = updated_serve_config(ServeConfig(), model.user_config)
    assert model.max_ongoing_requests >= settings.max_batch_size
    assert model.autoscaling_config["min_replicas"] <= model.autoscaling_config["max_replicas"]
    updated_serve_config(ServeConfig(), deployments["Ingress"].user_config)
    assert schema.http_options.request_timeout_s > 0


def test_local_config_serves_the_demo_export_else_the_shipped_one_without_gpus():
    raw = load("serve_config.yaml")
    assert raw["http_options"]["host"] == "127.0.0.1" and raw["http_options"]["port"] == 8000
    (application,) = raw["applications"]
    assert application["args"]["model_dir"] == ["runs/demo/model", "models/reference"]
    assert all(d["ray_actor_options"].get("num_gpus", 0) == 0 for d in application["deployments"])
    gpu = load("serve_config.gpu.yaml")["applications"][0]["deployments"]
    assert {d["name"]: d["ray_actor_options"].get("num_gpus", 0) for d in gpu}["HandModel"] == 1


def test_a_fresh_clone_serves_the_shipped_reference_model(tmp_path, capsys):
    """Read from a folder without the demo's export (a fresh clone's), the config serves the
    reference model the repository ships; once `make demo` has written one, the demo's."""
    config = read_config(ROOT / "serve_config.yaml", tmp_path)
    (application,) = config["applications"]
    assert application["args"]["model_dir"] == [
        str(tmp_path / "runs/demo/model"),
        str(tmp_path / "models/reference"),
    ]
    with pytest.raises(HandrayError, match="none of .*runs/demo/model, .*models/reference"):
        check_exports(config)
    shutil.copytree(ROOT / "models/reference", tmp_path / "models/reference")
    check_exports(config)
    summary = read_model_card(ROOT / "models/reference")["summary"]
    assert f"the export in {tmp_path / 'models/reference'} ({summary})" in capsys.readouterr().out
    demo = tmp_path / "runs/demo/model"
    demo.mkdir(parents=True)
    (demo / "saved_model.pb").write_bytes(b"")
    check_exports(config)
    assert f"the export in {demo}\n" in capsys.readouterr().out


def test_broken_copies_are_rejected():
    raw = load("serve_config.yaml")
    broken = copy.deepcopy(raw)
    broken["applications"][0]["deployments"][1]["max_ongoing_requests"] = 0
    with pytest.raises(ValueError, match="max_ongoing_requests"):
        ServeDeploySchema.model_validate(broken)
    broken = copy.deepcopy(raw)
    broken["http_options"]["port"] = "eighty"
    with pytest.raises(ValueError, match="port"):
        ServeDeploySchema.model_validate(broken)
    user_config = raw["applications"][0]["deployments"][1]["user_config"]
    with pytest.raises(ConfigError, match="serve.min_scor"):
        updated_serve_config(ServeConfig(), {**user_config, "min_scor": 0.3})
    with pytest.raises(ConfigError, match="serve.mask_threshold"):
        updated_serve_config(ServeConfig(), {**user_config, "mask_threshold": 1.5})


def test_every_replica_the_autoscaler_may_ask_for_fits_a_two_core_machine():
    """A local cluster here has 2 CPUs; a replica that does not fit is asked for and never
    starts (HandModel at 1 CPU stayed at 1 replica under load that way)."""
    (application,) = load("serve_config.yaml")["applications"]
    at_most = sum(
        d["autoscaling_config"]["max_replicas"] * d["ray_actor_options"]["num_cpus"]
        for d in application["deployments"]
    )
    assert at_most <= 2
    assert {d["name"]: d["autoscaling_config"]["max_replicas"] for d in application["deployments"]}[
        "HandModel"
    ] >= 2


def test_the_model_threads_argument_is_checked():
    for bad in (0, "two", -1):
        with pytest.raises(HandrayError, match="model_threads"):
            serve_app.build_app({"model_dir": "anywhere", "model_threads": bad})
