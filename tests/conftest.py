"""Shared test helpers: small COCO datasets written on the fly in every segmentation flavour."""

from __future__ import annotations

import getpass
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from handray.core.xla_cache import use_xla_cache

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Under pytest-xdist each process gets its share of the cores for TensorFlow's op threads, so
# two processes on two cores do not run four spinning pools (the first part of `make test`:
# 442 s before, 364-428 s in four runs after, within the spread of runs). Read when
# TensorFlow starts.
if workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")):
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(max(1, os.cpu_count() // workers)))
# One XLA compilation cache for the test processes and the Ray workers they start, outside the
# user's own (~/.cache/handray/xla): a graph compiled by one test loads in the next.
os.environ.setdefault(
    "HANDRAY_XLA_CACHE", str(Path(tempfile.gettempdir()) / f"handray-tests-xla-{getpass.getuser()}")
)
use_xla_cache()

pytest_plugins = ["tests.backstop"]  # a test its timeout cannot stop still ends the run

CATEGORIES = [{"id": 1, "name": "left_hand"}, {"id": 2, "name": "right_hand"}]

# Seconds a test may take, its fixtures' setup included, before pytest-timeout fails it and
# prints every thread's stack: a stuck test costs minutes, not CI's whole budget. The slow
# tier's longest test (the autoscaling cycle) takes about 4 minutes here.
TIMEOUT_S = {"fast": 120, "slow": 600}

# How often the test cluster's processes export their metrics to its Prometheus endpoint
# (Ray's default is every 10 s): a metrics test waits for a few of these.
METRICS_EXPORT_S = 2
# How often Serve's replicas and handles tell its autoscaler their ongoing requests (Serve's
# default is every 10 s): an autoscaling test's look-back spans a few of these.
SERVE_METRICS_PUSH_S = 2


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test gets its tier's time limit unless it sets its own `timeout` mark; every test
    of a module that uses the shared Ray cluster is marked `cluster` (`make test` runs those
    in one process, after the others, which it runs in two)."""
    on_cluster = {item.module for item in items if "ray_cluster" in item.fixturenames}
    for item in items:
        if item.get_closest_marker("timeout") is None:
            tier = "slow" if item.get_closest_marker("slow") else "fast"
            item.add_marker(pytest.mark.timeout(TIMEOUT_S[tier]))
        if item.module in on_cluster:
            item.add_marker(pytest.mark.cluster)


def rectangle_mask(height: int, width: int, y1: int, x1: int, y2: int, x2: int) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    mask[y1:y2, x1:x2] = 1
    return mask


def random_keypoints(
    rng: np.random.Generator, height: int, width: int, count: int = 21
) -> np.ndarray:
    """[count, 3] COCO keypoints (x, y, v) inside an image, v of 0, 1 and 2 (x = y = 0 at 0)."""
    points = np.column_stack(
        [rng.uniform(0, width, count), rng.uniform(0, height, count), rng.integers(0, 3, count)]
    ).round(2)
    points[points[:, 2] == 0, :2] = 0
    return points


def segmentation_of(mask: np.ndarray, flavour: str):
    """The mask as COCO stores it: compressed RLE, uncompressed RLE or a polygon (rectangles)."""
    if flavour == "rle":
        rle = mask_utils.encode(np.asfortranarray(mask))
        return {"size": list(rle["size"]), "counts": rle["counts"].decode()}
    if flavour == "uncompressed":
        flat = mask.T.reshape(-1)
        edges = np.flatnonzero(np.diff(flat)) + 1
        runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
        if flat[0]:
            runs = [0, *runs]
        return {"size": list(mask.shape), "counts": runs}
    if flavour == "polygon":
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        y1, y2, x1, x2 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        return [
            [float(x1), float(y1), float(x2), float(y1), float(x2), float(y2), float(x1), float(y2)]
        ]
    raise ValueError(flavour)


def write_dataset(
    root: Path,
    images: list[dict],
    split: str = "train",
    categories: list[dict] | None = None,
    seed: int = 0,
) -> Path:
    """Write a dataset folder: each image spec has height, width and a list of instances
    (mask, category_id, iscrowd=0, flavour="rle", and keypoints [K, 3] written only when
    given); pixels are random so resizing is visible."""
    rng = np.random.default_rng(seed)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    coco = {"images": [], "annotations": [], "categories": categories or CATEGORIES}
    for image_id, spec in enumerate(images, start=1):
        name = f"images/{split}_{image_id:03d}.png"
        pixels = rng.integers(0, 256, (spec["height"], spec["width"], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / name)
        coco["images"].append(
            {"id": image_id, "file_name": name, "width": spec["width"], "height": spec["height"]}
        )
        for instance in spec.get("instances", []):
            mask = instance["mask"]
            rle = mask_utils.encode(np.asfortranarray(mask))
            annotation = {
                "id": len(coco["annotations"]) + 1,
                "image_id": image_id,
                "category_id": instance["category_id"],
                "iscrowd": instance.get("iscrowd", 0),
                "segmentation": segmentation_of(mask, instance.get("flavour", "rle")),
                "area": int(mask.sum()),
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
            }
            if "keypoints" in instance:
                points = np.asarray(instance["keypoints"], float)
                annotation["keypoints"] = points.reshape(-1).tolist()
                annotation["num_keypoints"] = int((points[:, 2] > 0).sum())
            coco["annotations"].append(annotation)
    path = root / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps(coco))
    return path


@pytest.fixture
def small_dataset(tmp_path: Path) -> Path:
    """Three images of different shapes: non-square, with left, right and crowd hands."""
    h1, w1 = 60, 100
    h2, w2 = 90, 40
    images = [
        {
            "height": h1,
            "width": w1,
            "instances": [
                {"mask": rectangle_mask(h1, w1, 5, 10, 30, 40), "category_id": 1},
                {
                    "mask": rectangle_mask(h1, w1, 20, 60, 50, 95),
                    "category_id": 2,
                    "flavour": "polygon",
                },
            ],
        },
        {
            "height": h2,
            "width": w2,
            "instances": [
                {
                    "mask": rectangle_mask(h2, w2, 50, 5, 80, 30),
                    "category_id": 2,
                    "flavour": "uncompressed",
                },
                {"mask": rectangle_mask(h2, w2, 2, 2, 5, 5), "category_id": 1, "iscrowd": 1},
            ],
        },
        {"height": 64, "width": 64, "instances": []},
    ]
    write_dataset(tmp_path, images)
    return tmp_path


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster of our own for the whole session (never one left running on
    the machine), which knows its own address (`handray.core.local_ray`): 4 logical CPUs on
    this 2-core machine, so a driver-side actor and two one-CPU training workers fit; the
    dashboard on for Ray's state API; and Serve's proxy with handray's JSON-error middleware,
    as README starts it; metrics exported every `METRICS_EXPORT_S` and Serve's autoscaling
    metrics pushed every `SERVE_METRICS_PUSH_S`."""
    import ray

    from handray.core.local_ray import start_local_ray
    from handray.serve.proxy import CALLBACK, CALLBACK_VARIABLE

    ray.shutdown()
    os.environ[CALLBACK_VARIABLE] = CALLBACK  # read by the proxy process the cluster starts
    for pusher in ("REPLICA", "HANDLE"):  # read by Serve's replicas and proxies
        variable = f"RAY_SERVE_{pusher}_AUTOSCALING_METRIC_PUSH_INTERVAL_S"
        os.environ[variable] = str(SERVE_METRICS_PUSH_S)
    context = start_local_ray(
        num_cpus=4,
        include_dashboard=True,
        log_to_driver=True,
        _system_config={"metrics_report_interval_ms": METRICS_EXPORT_S * 1000},
    )
    ray.test_dashboard_url = f"http://{context.dashboard_url}"  # for `serve deploy --address`
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True, scope="module")
def cluster_released():
    """After each module, the shared cluster's CPUs must all be free again: a run, trial or
    app that keeps them would starve the next module (a sweep once waited there for good)."""
    yield
    import ray

    if ray.is_initialized():
        from tests.cluster import still_held

        if (held := still_held()) is not None:
            pytest.fail(f"this module left the shared Ray cluster's resources held: {held}")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint folder of a freshly built (untrained, seeded) tiny model."""
    import keras

    from handray.config import load_config
    from handray.inference.checkpoints import TrainingState
    from handray.model import build_model
    from handray.train.checkpoint import write_checkpoint

    keras.utils.set_random_seed(0)  # the same untrained weights in every run
    config = load_config("tiny")
    directory = tmp_path_factory.mktemp("run") / "checkpoint_000000"
    return write_checkpoint(
        directory, build_model(config, jit_compile=False), config, TrainingState()
    )


TINY_EXPORT_ABOUT = "tiny, untrained, exported by the tests"


@pytest.fixture(scope="session")
def tiny_export(tiny_checkpoint, tmp_path_factory) -> Path:
    """`handray export` of the untrained tiny checkpoint, keeping every detection by default
    (an untrained model's scores are arbitrary, so a threshold would leave too few to compare),
    with a model card as `make demo` and `make reference` write one."""
    from handray import cli
    from handray.inference.export import write_model_card

    out = tmp_path_factory.mktemp("export") / "model"
    args = ["export", "--weights", str(tiny_checkpoint), "--out", str(out)]
    assert cli.main([*args, "--set", "serve.min_score=0"]) == 0
    write_model_card(out, TINY_EXPORT_ABOUT, {"made_by": "tests/conftest.py"})
    return out


@pytest.fixture(scope="session")
def photo_files(tmp_path_factory) -> list[Path]:
    """Three PNG photos of different shapes with smooth content (random noise would make
    every detection of an untrained model a coin toss at the mask threshold)."""
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for index, (height, width) in enumerate([(100, 140), (64, 50), (150, 90)]):
        rows, cols = np.mgrid[0:height, 0:width]
        pixels = np.stack(
            [rows * 255 // height, cols * 255 // width, (rows + cols + 40 * index) % 256], axis=-1
        ).astype(np.uint8)
        paths.append(folder / f"photo_{index}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths
