"""The Serve app over real HTTP on a local Ray cluster: the old client's call, concurrent
requests batched together, every bad input answered with its 4xx, live reconfiguration, and
handray's metrics on Ray's metrics endpoint."""

import base64
import io
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image
from pycocotools import mask as mask_utils

from handray.core.detections import Detections
from handray.serve.app import build_app
from handray.serve.launcher import wait_for_model
from tests.conftest import METRICS_EXPORT_S, TINY_EXPORT_ABOUT
from tests.serve.conftest import BATCHING

pytestmark = pytest.mark.slow  # a Ray cluster and a Serve server

APP = "handray"


@pytest.fixture(scope="module")
def expected(tiny_checkpoint, photo_files) -> list[dict]:
    """In-process predictions on the same files (what `handray predict` prints)."""
    from handray.inference.checkpoints import load_trained_model
    from handray.inference.predict import predict_files
    from handray.inference.predictor import Predictor
    from handray.inference.thresholds import Thresholds

    model, config, _ = load_trained_model(tiny_checkpoint, overrides={"serve.min_score": 0.0})
    return predict_files(Predictor(model, Thresholds.from_config(config)), photo_files)


def assert_same_predictions(reply: dict, record: dict, min_score: float = 0.0) -> None:
    wanted = [p for p in record["predictions"] if p["score"] >= min_score]
    assert reply["image"] == {"width": record["width"], "height": record["height"]}
    assert len(reply["predictions"]) == len(wanted) > 0
    for got, want in zip(reply["predictions"], wanted, strict=True):
        assert (got["class_id"], got["class_name"]) == (want["class_id"], want["class_name"])
        assert got["score"] == pytest.approx(want["score"], abs=1e-4)
        np.testing.assert_allclose(got["roi"], want["roi"], atol=0.02)
        np.testing.assert_allclose(got["bbox"], want["bbox"], atol=0.05)
        reference = mask_utils.decode(want["mask"]).astype(bool)
        if isinstance(got["mask"], dict):
            mask = mask_utils.decode(got["mask"]).astype(bool)
        else:
            png = np.asarray(Image.open(io.BytesIO(base64.b64decode(got["mask"]))))
            assert png.shape == reference.shape and set(np.unique(png)) <= {0, 255}
            mask = png == 255
        assert (mask == reference).mean() >= 0.995
        got_points, want_points = np.array(got["keypoints"]), np.array(want["keypoints"])
        assert got_points.shape == want_points.shape == (21, 3)
        np.testing.assert_allclose(got_points[:, :2], want_points[:, :2], atol=0.02)
        np.testing.assert_allclose(got_points[:, 2], want_points[:, 2], atol=1e-4)


def test_the_old_clients_exact_call(url, photo_files, expected):
    with open(photo_files[0], "rb") as handle:
        reply = requests.post(
            f"{url}/predict", files={"image": ("f.png", handle, "image/png")}, timeout=60
        )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["success"] is True and body["model"]["name"] == "handray-tiny"
    assert body["model"]["about"] == TINY_EXPORT_ABOUT  # the export's model card, for the page
    assert {"roi", "class_id", "class_name", "score", "mask"} <= set(body["predictions"][0])
    assert_same_predictions(body, expected[0])
    timing = body["timing_ms"]
    assert 0 < timing["receive"] + timing["model"] + timing["encode"] <= timing["total"] + 0.3
    # the model's part is the hop between replicas, the wait for a batch and the batch's run
    parts = timing["hop"] + timing["queue"] + timing["batch"]
    assert timing["batch"] > 0 and abs(parts - timing["model"]) <= 0.3  # each rounded to 0.1
    assert reply.headers["Server-Timing"] == ", ".join(f"{k};dur={v}" for k, v in timing.items())


def post_raw(url: str, path, query: str) -> requests.Response:
    """The image file as a raw PNG body."""
    return requests.post(
        f"{url}/predict?{query}",
        data=path.read_bytes(),
        headers={"Content-Type": "image/png"},
        timeout=60,
    )


def test_raw_body_with_rle_masks_and_a_threshold(url, photo_files, expected):
    # A cut between two of the untrained model's scores (p(hand) x p(side) stays near 0.5 or
    # below), away from both, nearest the middle.
    scores = sorted(p["score"] for p in expected[1]["predictions"])
    gaps = [k for k in range(1, len(scores)) if scores[k] - scores[k - 1] > 2e-4]
    k = min(gaps, key=lambda k: abs(k - len(scores) / 2))
    cut = round((scores[k - 1] + scores[k]) / 2, 6)
    reply = post_raw(url, photo_files[1], f"mask_format=rle&min_score={cut}")
    assert reply.status_code == 200, reply.text
    assert_same_predictions(reply.json(), expected[1], min_score=cut)
    assert len(reply.json()["predictions"]) < len(scores)
    without = post_raw(url, photo_files[1], "keypoints=0")
    assert without.status_code == 200, without.text
    predictions = without.json()["predictions"]
    assert predictions and not any("keypoints" in p for p in predictions)


def test_concurrent_requests_are_batched_and_all_correct(url, photo_files, expected):
    def call(index: int):
        with open(photo_files[index % 3], "rb") as handle:
            files = {"image": (f"{index}.png", handle, "image/png")}
            return index, requests.post(f"{url}/predict?mask_format=rle", files=files, timeout=120)

    with ThreadPoolExecutor(32) as pool:
        replies = list(pool.map(call, range(32)))
    for index, reply in replies:
        assert reply.status_code == 200, reply.text
        assert_same_predictions(reply.json(), expected[index % 3])
    health = requests.get(f"{url}/healthz", timeout=60).json()
    assert health["status"] == "ok"
    batched = {int(size): n for size, n in health["model"]["batch_sizes"].items() if int(size) > 1}
    assert batched, health["model"]["batch_sizes"]


def bad_requests(photo: bytes) -> list[tuple[dict, int, str]]:
    big = Image.fromarray(np.zeros((500, 600, 3), np.uint8))
    buffer = io.BytesIO()
    big.save(buffer, format="PNG")
    noise = np.random.default_rng(0).integers(0, 256, (400, 400, 3), np.uint8)
    heavy = io.BytesIO()
    Image.fromarray(noise).save(heavy, format="BMP")
    png = {"Content-Type": "image/png"}
    return [
        ({"data": b"this is not an image", "headers": png}, 400, "not_an_image"),
        ({"data": photo[: len(photo) // 2], "headers": png}, 400, "corrupt_image"),
        ({"data": b"", "headers": png}, 400, "empty_image"),
        ({"files": {"file": ("f.png", photo, "image/png")}}, 400, "missing_field"),
        ({"data": {"image": "not a file"}}, 400, "missing_field"),
        ({"data": heavy.getvalue(), "headers": {"Content-Type": "image/bmp"}}, 413, None),
        ({"files": {"image": ("big.png", buffer.getvalue(), "image/png")}}, 413, None),
        ({"data": photo, "headers": {"Content-Type": "text/plain"}}, 415, None),
        ({"json": {"image": "abc"}}, 415, "unsupported_media_type"),
    ]


def test_bad_inputs_get_json_client_errors_and_the_server_keeps_serving(url, photo_files):
    photo = photo_files[0].read_bytes()
    for request, status, code in bad_requests(photo):
        reply = requests.post(f"{url}/predict", timeout=60, **request)
        assert reply.status_code == status, (request.keys(), reply.text)
        body = reply.json()
        assert body["success"] is False and body["error"]["message"]
        assert code is None or body["error"]["code"] == code
    for query in ("mask_format=svg", "min_score=high", "min_score=1.5", "keypoints=yes"):
        reply = requests.post(f"{url}/predict?{query}", files={"image": photo}, timeout=60)
        assert (reply.status_code, reply.json()["error"]["code"]) == (400, "bad_parameter")
    assert requests.get(f"{url}/predict", timeout=60).status_code == 405
    assert requests.get(f"{url}/nowhere", timeout=60).json()["error"]["code"] == "not_found"
    reply = requests.post(f"{url}/predict", files={"image": photo}, timeout=60)
    assert reply.status_code == 200 and reply.json()["predictions"]


def test_a_bad_image_in_a_batch_fails_only_its_own_request(url, photo_files):
    from ray import serve

    handle = serve.get_deployment_handle("HandModel", app_name=APP)
    good = photo_files[2].read_bytes()
    calls = [handle.predict.remote(data) for data in (good, b"\x89PNG broken", good, good)]
    results = [call.result(timeout_s=120).result for call in calls]
    assert isinstance(results[1], str)  # why its image could not be run
    for result in (results[0], results[2], results[3]):
        assert isinstance(result, Detections) and len(result.scores) > 0
        np.testing.assert_array_equal(result.scores, results[0].scores)


def test_reconfigure_changes_thresholds_without_a_restart(server, photo_files, expected):
    url, deploy = server
    before = wait_for_model(url, lambda info: True)
    deploy({**BATCHING, "min_score": 0.95, "mask_threshold": 0.9})
    try:
        after = wait_for_model(url, lambda info: info["settings"]["min_score"] == 0.95)
        assert after["replica"] == before["replica"]
        assert after["settings"]["mask_threshold"] == 0.9
        with open(photo_files[0], "rb") as handle:
            reply = requests.post(f"{url}/predict", files={"image": handle}, timeout=60).json()
        wanted = [p for p in expected[0]["predictions"] if p["score"] >= 0.95]
        assert len(reply["predictions"]) == len(wanted)
        assert all(p["score"] >= 0.95 for p in reply["predictions"])
    finally:
        deploy(BATCHING)
        wait_for_model(url, lambda info: info["settings"]["min_score"] == 0.0)


def test_the_app_builder_refuses_a_folder_without_an_export(tmp_path):
    from handray.core.errors import HandrayError

    with pytest.raises(HandrayError, match="handray export"):
        build_app({"model_dir": str(tmp_path)})


def test_health_check_fails_when_the_model_cannot_run(tiny_export):
    from handray.serve.app import HandModel

    replica = HandModel.func_or_class(str(tiny_export))  # the class itself, in this process
    replica.reconfigure({"max_batch_size": 2})  # warm one more batch size, not seven
    replica.check_health()
    replica._last_success = float("-inf")  # idle long enough that the check runs the model
    replica.check_health()
    if (warming := replica._warming) is not None:
        warming.join()  # larger batch sizes warm in a thread: let it finish with the real model
    replica._exported = object()  # the model is gone: nothing can run
    replica._last_success = float("-inf")
    with pytest.raises(AttributeError):
        replica.check_health()
    assert replica._failure is not None


def scrape(port: int, name: str, **labels: str) -> float:
    """The sum of metric `name` over every series (replica) carrying `labels`, as Prometheus
    would read it from Ray's metrics endpoint."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    total = 0.0
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        if series.split("{")[0] == name and all(f'{k}="{v}"' in series for k, v in labels.items()):
            total += float(value)
    return total


def test_handray_metrics_reach_rays_metrics_endpoint(url, photo_files):
    import ray

    from handray.serve.metrics import COUNT_EDGES

    (port,) = {node["MetricsExportPort"] for node in ray.nodes() if node["Alive"]}
    series = {
        **{edge: ("ray_handray_hands_per_image_bucket", {"le": str(edge)}) for edge in COUNT_EDGES},
        "all buckets": ("ray_handray_hands_per_image_bucket", {"le": "+Inf"}),
        "answered": ("ray_handray_hands_per_image_count", {}),
        "refused": ("ray_handray_client_errors_total", {"code": "not_an_image"}),
        "batches": ("ray_handray_model_batch_ms_count", {}),
    }

    def reading() -> dict:
        return {key: scrape(port, name, **labels) for key, (name, labels) in series.items()}

    # Earlier tests' requests may not be exported yet: start from a reading that has stayed
    # the same for two of the cluster's export intervals (Ray itself allows an export to be
    # one interval late), so a late one cannot land inside the measurement.
    before = reading()
    settled = time.monotonic()
    while time.monotonic() - settled < 2 * METRICS_EXPORT_S + 2:
        time.sleep(1)
        if (now := reading()) != before:
            before, settled = now, time.monotonic()
    hands = []
    for path in photo_files:
        reply = requests.post(f"{url}/predict", files={"image": path.read_bytes()}, timeout=60)
        hands.append(len(reply.json()["predictions"]))
    for _ in range(2):
        reply = requests.post(f"{url}/predict", files={"image": b"text, not pixels"}, timeout=60)
        assert reply.json()["error"]["code"] == "not_an_image"
    deadline = time.monotonic() + 60  # Ray exports metrics every few seconds
    while True:
        after = reading()
        # The ingress and the model replica export on their own clocks: wait for both, and
        # for the buckets as well as the count (Ray's agent rebuilds a histogram from them).
        if (
            after["answered"] >= before["answered"] + 3
            and after["all buckets"] >= before["all buckets"] + 3
            and after["refused"] >= before["refused"] + 2
            and after["batches"] >= before["batches"] + 1
        ):
            break
        assert time.monotonic() < deadline, (before, after)
        time.sleep(1)
    change = {key: after[key] - before[key] for key in series}
    assert change["answered"] == 3 and change["all buckets"] == 3 and change["refused"] == 2
    for edge in COUNT_EDGES:  # cumulative buckets: answers with at most `edge` hands
        assert change[edge] == sum(count <= edge for count in hands), (edge, hands, change)
    assert change["batches"] >= 1  # the model ran the 3 images in one or more batches
