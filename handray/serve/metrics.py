"""handray's own serving metrics, exported through Ray's metrics endpoint beside Serve's.

Ray prefixes each name with `ray_` and adds Serve's tags (application, deployment, replica), so
`ray_handray_hands_per_image_bucket{deployment="Ingress",...}` is what Prometheus scrapes from
each node's metrics port. Serve's own request counts, latencies and queue lengths
(`ray_serve_*`) come from Ray; these add what only the app knows.
"""

from __future__ import annotations

from ray.serve.metrics import Counter, Histogram

# Bucket edges sit between whole counts, so each count has its own bucket. (Ray estimates a
# histogram's `_sum` from bucket midpoints; the bucket counts are exact.)
COUNT_EDGES = [0.5, 1.5, 2.5, 3.5, 4.5, 6.5, 8.5, 12.5, 20.5]
_MS_EDGES = [5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560, 5120, 10240]


class IngressMetrics:
    """Per request, in the `Ingress` deployment."""

    def __init__(self) -> None:
        self.hands = Histogram(
            "handray_hands_per_image",
            description="Hands returned per answered /predict request (after min_score).",
            boundaries=COUNT_EDGES,
        )
        self.client_errors = Counter(
            "handray_client_errors",
            description="Requests refused with a 4xx, by error code (not_an_image, ...).",
            tag_keys=("code",),
        )
        self.retried = Counter(
            "handray_model_retries",
            description="Model calls sent again because the replica holding them died.",
        )
        self.unavailable = Counter(
            "handray_model_unavailable",
            description="Requests answered 503 because no model replica could run them.",
        )
        self.receive_ms = Histogram(
            "handray_receive_ms",
            description="Milliseconds to read, check and decode an upload.",
            boundaries=_MS_EDGES,
        )


class ModelMetrics:
    """Per batch, in the `HandModel` deployment."""

    def __init__(self) -> None:
        self.batch_size = Histogram(
            "handray_batch_size",
            description="Images per batch the model ran.",
            boundaries=COUNT_EDGES,
        )
        self.batch_ms = Histogram(
            "handray_model_batch_ms",
            description="Milliseconds the exported model took per batch.",
            boundaries=_MS_EDGES,
        )
