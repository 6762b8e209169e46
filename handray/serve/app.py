"""The Ray Serve application: an HTTP ingress bound to a batching model deployment.

`Ingress` parses HTTP with Starlette, checks and decodes the upload (`codec`), and formats the
reply; it does the per-request CPU work, so the model replicas only run the network. `HandModel`
loads the SavedModel written by `handray export` and runs the requests that queued while it
was busy as the next batch (`batching.Batcher`). Both read their limits and thresholds from
`user_config`, so `serve deploy` with a changed config updates them without a restart.

Start it with `serve run serve_config.yaml`, or `serve run handray.serve.app:build_app
model_dir=EXPORT` for the defaults.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError
from ray.serve.handle import DeploymentHandle
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from handray.config import ServeConfig, updated_serve_config
from handray.core.detections import Detections, image_rows
from handray.core.errors import HandrayError
from handray.core.exported import ExportedModel, bmp_bytes, first_export
from handray.core.records import MASK_FORMATS, detection_records
from handray.core.xla_cache import use_xla_cache
from handray.serve.batching import Batcher
from handray.serve.codec import RequestError, UploadLimits, decode_upload, too_large
from handray.serve.metrics import IngressMetrics, ModelMetrics

logger = logging.getLogger("ray.serve")
PAGE_FILE = Path(__file__).with_name("page.html")  # the page people try the model in
PROBE_AFTER_S = 30.0  # a health check runs the model itself when it has been idle this long
_PROBE_IMAGE = np.zeros((8, 8, 3), np.uint8)
MODEL_SETTINGS = ("min_score", "mask_threshold", "max_batch_size", "batch_wait_timeout_s")
MODEL_ATTEMPTS = 3  # a model replica that dies under a request: the request goes to another
RETRY_AFTER_S = 2  # what a 503 tells the client to wait: about a replica's replacement
DRAINING_KEY = "draining"  # Ingress user_config: refuse new requests, finish those held


@dataclass
class Job:
    """One request's image for the model: BMP bytes of checked pixels, and its score threshold;
    the batch that runs it records when it started and how long it took."""

    image: bytes
    min_score: float | None
    submitted: float = 0.0
    started: float = 0.0
    ran_s: float = 0.0


@dataclass
class ModelReply:
    """What a model replica answers: `result` (the detections, or why the image could not be
    run), the time the request waited in the replica for its batch and that batch's run time."""

    result: Detections | str
    queue_s: float
    batch_s: float


def replica_threads(asked: int | None) -> int | None:
    """TensorFlow's threads for this replica: `asked` (the app's `model_threads` argument),
    else its `num_cpus` rounded up, so replicas sharing a machine split its cores instead of
    each running one thread per core; None (TensorFlow's default) outside a Ray actor or
    without a CPU reservation."""
    import ray

    if asked is not None:
        return asked
    if not ray.is_initialized() or ray.get_runtime_context().get_actor_id() is None:
        return None  # not a replica (the class used directly, in a driver)
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0)
    return max(1, math.ceil(cpus - 1e-6)) if cpus > 0 else None


@serve.deployment(name="HandModel", max_ongoing_requests=64)
class HandModel:
    """A replica holding one loaded export; concurrent requests are run as one batch."""

    def __init__(self, model_dir: str, threads: int | None = None):
        use_xla_cache()  # a new replica loads the batch sizes others compiled
        import tensorflow as tf

        self._tf = tf
        self.threads = replica_threads(threads)
        if self.threads is not None:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(self.threads)
                tf.config.threading.set_inter_op_parallelism_threads(self.threads)
            except RuntimeError:  # TensorFlow already ran in this process: its pools stay
                self.threads = None
        self._exported = ExportedModel(model_dir)
        self.info = self._exported.describe()
        self.settings = ServeConfig(
            min_score=self._exported.min_score, mask_threshold=self._exported.mask_threshold
        )
        self.batch_sizes: Counter[int] = Counter()
        self._metrics = ModelMetrics()
        self._batcher = Batcher(
            self._run_batch, self.settings.max_batch_size, self.settings.batch_wait_timeout_s
        )
        self._last_success = 0.0
        self._failure: str | None = None
        self._warm = 0  # every batch size up to this one has run once
        self._warming: threading.Thread | None = None
        self._warm_lock = threading.Lock()
        self._warm_up()
        logger.info("HandModel %s ready from %s", self.info, model_dir)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Thresholds and batching from the deployment's `user_config`, applied live."""
        self.settings = updated_serve_config(self.settings, user_config or {})
        self._batcher.batch_wait_timeout_s = self.settings.batch_wait_timeout_s
        self._warm_up()

    def _warm_up(self) -> None:
        """Each batch size's first run costs about 2 s on a CPU (its shapes are optimised
        then), so no request may meet a size that has not run yet. Size 1 runs here, before
        the replica takes requests; the larger ones run in a background thread, and batches
        grow as their sizes become ready. A replacement replica thus serves within seconds of
        loading instead of after `max_batch_size` warm-up runs."""
        if self._warm == 0:
            self._run([Job(bmp_bytes(_PROBE_IMAGE), None)])
            self._warm = 1
        self._batcher.max_batch_size = min(self._warm, self.settings.max_batch_size)
        with self._warm_lock:
            if self._warming is None and self._warm < self.settings.max_batch_size:
                self._warming = threading.Thread(target=self._warm_larger, daemon=True)
                self._warming.start()

    def _warm_larger(self) -> None:
        probe = Job(bmp_bytes(_PROBE_IMAGE), None)
        while True:
            with self._warm_lock:
                size = self._warm + 1
                if size > self.settings.max_batch_size:
                    self._warming = None
                    return
            try:
                self._run([probe] * size)
            except Exception:  # `_run` recorded it: the health check now replaces the replica
                logger.exception("warming batch size %d failed", size)
                with self._warm_lock:
                    self._warming = None
                return
            self._warm = size
            self._batcher.max_batch_size = min(size, self.settings.max_batch_size)

    async def predict(self, image: bytes, min_score: float | None = None) -> ModelReply:
        """One image's detections (see `_run`); requests arriving together share a batch."""
        job = Job(image, min_score, submitted=time.perf_counter())
        result = await self._batcher.submit(job)
        return ModelReply(result, job.started - job.submitted, job.ran_s)

    async def _run_batch(self, jobs: list[Job]) -> list[Detections | str]:
        self.batch_sizes[len(jobs)] += 1
        started = time.perf_counter()
        # In a thread, so the replica keeps accepting requests (the next batch) meanwhile.
        results = await asyncio.to_thread(self._run, jobs)
        ran_s = time.perf_counter() - started
        for job in jobs:
            job.started, job.ran_s = started, ran_s
        self._metrics.batch_size.observe(len(jobs))
        self._metrics.batch_ms.observe(ran_s * 1e3)
        return results

    def _run(self, jobs: list[Job]) -> list[Detections | str]:
        """`Detections` per job, or the message of why its image could not be run."""
        tf = self._tf
        thresholds = [self.settings.min_score if j.min_score is None else j.min_score for j in jobs]
        try:
            # One run at the jobs' lowest threshold; each job then keeps its own.
            outputs = self._exported.run(
                [job.image for job in jobs], min(thresholds), self.settings.mask_threshold
            )
        except tf.errors.InvalidArgumentError:
            if len(jobs) == 1:
                return ["the model could not decode this image"]
            # One bad image must fail only its own request.
            return [self._run([job])[0] for job in jobs]
        except Exception as err:
            self._failure = f"{type(err).__name__}: {err}"
            raise
        self._last_success, self._failure = time.monotonic(), None
        return [self._detections(outputs, index, score) for index, score in enumerate(thresholds)]

    def _detections(
        self, outputs: dict[str, np.ndarray], index: int, min_score: float
    ) -> Detections:
        """Image `index`'s detections at its own `min_score`: rows come best first, so those
        kept are a prefix, cut before any mask is converted or copied."""
        scores = outputs["scores"][index, : outputs["num_detections"][index]]
        count = int((scores >= min_score).sum())
        return Detections.from_rows(image_rows(outputs, index, count), self._exported.class_names)

    def check_health(self) -> None:
        """Fail (so Serve replaces this replica) when the model cannot run."""
        if self._failure is not None or time.monotonic() - self._last_success > PROBE_AFTER_S:
            self._run([Job(bmp_bytes(_PROBE_IMAGE), None)])

    def describe(self) -> dict[str, Any]:
        """Name, version, classes, live settings, the batch sizes run so far and this replica's
        id."""
        self.check_health()
        settings = {key: getattr(self.settings, key) for key in MODEL_SETTINGS}
        replica = serve.get_replica_context().replica_id.unique_id
        return {
            **self.info,
            "settings": settings,
            "batch_sizes": self.batch_sizes,
            "warm_batch_size": self._warm,  # batches grow to max_batch_size as sizes warm up
            "threads": self.threads,  # TensorFlow's intra-op threads (None: its default)
            "replica": replica,
        }


@serve.deployment(name="Ingress", max_ongoing_requests=128)
class Ingress:
    """HTTP: `POST /predict` (multipart field `image`, or a raw `image/*` body), `GET /healthz`,
    and `GET /`, a page to try the model in a browser. Client mistakes get a 4xx JSON error,
    never a 500.

    `user_config` key `draining: true` (set by `handray serve` when it is told to stop) makes
    the replica refuse new work with a retryable 503 while the requests it holds finish."""

    def __init__(self, model: DeploymentHandle):
        self._model = model
        self._page = PAGE_FILE.read_text(encoding="utf-8")
        self._metrics = IngressMetrics()
        self._limits = _limits(ServeConfig())
        self._info: dict[str, Any] | None = None
        self.draining = False

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        settings = dict(user_config or {})
        self.draining = bool(settings.pop(DRAINING_KEY, False))
        self._limits = _limits(updated_serve_config(ServeConfig(), settings))

    async def __call__(self, request: Request) -> Response:
        # The path below the app's route_prefix (Serve passes the prefix as root_path).
        root = request.scope.get("root_path", "").rstrip("/")
        path = request.url.path
        path = "/" + (path[len(root) :] if root and path.startswith(root) else path).strip("/")
        routes = {
            "/": ("GET", self._show_page),
            "/predict": ("POST", self._predict),
            "/healthz": ("GET", self._healthz),
        }
        try:
            if path not in routes:
                raise RequestError(
                    404, "not_found", f"no route {path}; use POST /predict, or open / in a browser"
                )
            method, handler = routes[path]
            if request.method != method:
                raise RequestError(405, "method_not_allowed", f"{path} takes {method} requests")
            if self.draining and path != "/":
                raise RequestError(
                    503,
                    "shutting_down",
                    "the server is shutting down; send the request again in "
                    f"{RETRY_AFTER_S} s (to another instance, if there is one)",
                    RETRY_AFTER_S,
                )
            return await handler(request)
        except RequestError as err:
            if err.status < 500:
                self._metrics.client_errors.inc(tags={"code": err.code})
            return JSONResponse(err.body(), status_code=err.status, headers=err.headers())
        except Exception:
            logger.exception("request to %s failed", path)
            error = RequestError(500, "internal_error", "the server failed on this request")
            return JSONResponse(error.body(), status_code=500)

    async def _show_page(self, request: Request) -> HTMLResponse:
        return HTMLResponse(self._page)

    async def _healthz(self, request: Request) -> JSONResponse:
        try:
            info = await self._ask_model("describe")
        except RayTaskError as err:  # the replica's health check failed
            raise RequestError(
                503, "unavailable", f"the model cannot predict: {err}", RETRY_AFTER_S
            ) from None
        ingress = serve.get_replica_context().replica_id.unique_id
        return JSONResponse(
            {"success": True, "status": "ok", "model": _jsonable(info), "ingress": ingress}
        )

    async def _predict(self, request: Request) -> JSONResponse:
        started = time.perf_counter()
        mask_format = request.query_params.get("mask_format", "png")
        if mask_format not in MASK_FORMATS:
            raise RequestError(
                400, "bad_parameter", f"mask_format={mask_format!r}; use one of {MASK_FORMATS}"
            )
        min_score = _score_parameter(request.query_params.get("min_score"))
        keypoints = _switch_parameter("keypoints", request.query_params.get("keypoints", "1"))
        upload = await self._upload(request)
        pixels = await asyncio.to_thread(decode_upload, upload, self._limits)
        decoded = time.perf_counter()
        reply = await self._ask_model("predict", bmp_bytes(pixels), min_score)
        detections = reply.result
        if isinstance(detections, str):
            raise RequestError(400, "corrupt_image", detections)
        predicted = time.perf_counter()
        height, width = detections.image_size
        info = await self._model_info()
        leave_out = () if keypoints else ("keypoints",)
        predictions = await asyncio.to_thread(detection_records, detections, mask_format, leave_out)
        finished = time.perf_counter()
        model_s = predicted - decoded
        timing = _milliseconds(
            receive=decoded - started,
            model=model_s,
            hop=max(0.0, model_s - reply.queue_s - reply.batch_s),
            queue=reply.queue_s,
            batch=reply.batch_s,
            encode=finished - predicted,
            total=finished - started,
        )
        self._metrics.hands.observe(len(predictions))
        self._metrics.receive_ms.observe(timing["receive"])
        return JSONResponse(
            {
                "success": True,
                "predictions": predictions,
                "image": {"width": width, "height": height},
                "model": {key: info[key] for key in ("name", "version", "about")},
                "timing_ms": timing,
            },
            headers={"Server-Timing": ", ".join(f"{k};dur={v}" for k, v in timing.items())},
        )

    async def _model_info(self) -> dict[str, Any]:
        if self._info is None:
            self._info = await self._ask_model("describe")
        return self._info

    async def _ask_model(self, method: str, *args: Any) -> Any:
        """A call to a model replica. Serve already routes around replicas known to be dead;
        one that dies while holding the call fails it, and since every call is safe to repeat it
        goes to another replica. Only when none can take it is the answer a 503."""
        for _ in range(MODEL_ATTEMPTS):
            try:
                return await getattr(self._model, method).remote(*args)
            except (RayActorError, ActorUnavailableError) as err:
                logger.warning("model replica lost during %s (%s); trying another", method, err)
                self._metrics.retried.inc()
                failure = err
        self._metrics.unavailable.inc()
        raise RequestError(
            503,
            "model_unavailable",
            f"no model replica could run the request ({type(failure).__name__}); the server is "
            f"replacing it, send the request again in {RETRY_AFTER_S} s",
            RETRY_AFTER_S,
        )

    async def _upload(self, request: Request) -> bytes:
        """The image bytes of a multipart field `image` or of a raw image body."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        form = content_type in ("multipart/form-data", "application/x-www-form-urlencoded")
        if not (
            form or content_type.startswith("image/") or content_type == "application/octet-stream"
        ):
            raise RequestError(
                415,
                "unsupported_media_type",
                f"Content-Type {content_type or '(none)'} is not accepted; send "
                "multipart/form-data with a file field `image`, or the image itself with "
                "Content-Type image/*",
            )
        body = await self._body(request)
        if not form:
            return body
        fields = await Request(request.scope, _replay(body)).form()
        try:
            field = fields.get("image")
            if field is None:
                raise RequestError(
                    400, "missing_field", "the form has no field `image`; send the file as `image`"
                )
            if not isinstance(field, UploadFile):
                raise RequestError(
                    400, "missing_field", "the form field `image` must be a file, not text"
                )
            return await field.read()
        finally:
            await fields.close()

    async def _body(self, request: Request) -> bytes:
        """The request body, refused (413) as soon as it passes the byte limit."""
        limit = self._limits.max_request_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_large(int(declared), self._limits)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large(size, self._limits)
            chunks.append(chunk)
        return b"".join(chunks)


def _replay(body: bytes):
    """A Starlette `receive` that hands over an already-read body, so the form parser can run."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _score_parameter(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise RequestError(400, "bad_parameter", f"min_score={text!r}; use a number in [0, 1]")
    return value


def _switch_parameter(name: str, text: str) -> bool:
    if text not in ("0", "1"):
        raise RequestError(400, "bad_parameter", f"{name}={text!r}; use 0 or 1")
    return text == "1"


def _milliseconds(**seconds: float) -> dict[str, float]:
    """Server-side time of a request's parts: `receive` (read, check and decode the upload),
    `model` (from the call to the model replica to its answer), which is `hop` (routing and
    moving the image and the answer between replicas) + `queue` (waiting in the model replica
    for a batch to start) + `batch` (that batch's run, shared by its images), `encode` (masks
    and JSON), `total` (everything up to the reply)."""
    return {name: round(value * 1e3, 1) for name, value in seconds.items()}


def _limits(config: ServeConfig) -> UploadLimits:
    return UploadLimits(config.max_request_bytes, config.max_image_pixels)


def _jsonable(info: dict[str, Any]) -> dict[str, Any]:
    return {**info, "batch_sizes": {str(k): v for k, v in info["batch_sizes"].items()}}


def build_app(args: dict[str, Any]) -> serve.Application:
    """The application `serve run` starts: `args` holds `model_dir`, the export's folder or a
    list of them of which the first holding an export is served (relative paths are taken
    from the folder `serve run` is started in), and optionally
    `model_threads`, TensorFlow's threads in each model replica (default: its `num_cpus`
    rounded up)."""
    if "model_dir" not in args:
        raise HandrayError("the serve application needs args.model_dir, the export's folder")
    threads = args.get("model_threads")
    if threads is not None and (not str(threads).isdigit() or int(threads) < 1):
        raise HandrayError(f"args.model_threads={threads!r}: use a whole number >= 1")
    model_dir = str(first_export(args["model_dir"]))
    return Ingress.bind(HandModel.bind(model_dir, None if threads is None else int(threads)))
