"""The proxy middleware: every error reply is JSON, a request nobody answered gets a JSON 503
with Retry-After, and replies that are already JSON (or successful) pass through untouched.
(The whole path, with a real Ingress replica killed, is in test_faults.py.)"""

import asyncio
import json

from ray.serve._private.http_util import validate_http_proxy_callback_return

from handray.serve.proxy import CALLBACK, JSONErrors, middlewares


def app_replying(status: int | None, body: bytes = b"", content_type: bytes = b"text/plain"):
    """An ASGI app that answers with `status` (in two body chunks), or returns without a reply
    when `status` is None, as Ray's proxy does when the replica holding a request dies."""

    async def app(scope, receive, send):
        if status is None:
            return
        headers = [(b"content-type", content_type)]
        if status == 503:
            headers.append((b"retry-after", b"7"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        half = len(body) // 2
        await send({"type": "http.response.body", "body": body[:half], "more_body": True})
        await send({"type": "http.response.body", "body": body[half:]})

    return app


def call(app) -> tuple[int, dict[bytes, bytes], bytes]:
    """Run one GET through `JSONErrors(app)`; returns status, headers and the whole body."""
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/predict", "headers": []}
    asyncio.run(JSONErrors(app)(scope, receive, send))
    (start,) = [m for m in sent if m["type"] == "http.response.start"]
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body


def test_a_request_left_unanswered_gets_a_json_503_with_retry_after():
    status, headers, body = call(app_replying(None))
    assert status == 503 and headers[b"retry-after"] == b"1"
    assert headers[b"content-type"] == b"application/json"
    assert int(headers[b"content-length"]) == len(body)
    error = json.loads(body)
    assert error["success"] is False and error["error"]["code"] == "replica_stopped"


def test_text_errors_from_the_proxy_become_json_with_their_message():
    status, headers, body = call(app_replying(408, b"Request abc timed out after 30.0s."))
    assert status == 503 and headers[b"retry-after"] == b"1"  # come back later
    assert json.loads(body)["error"] == {
        "code": "timeout",
        "message": "Request abc timed out after 30.0s.",
    }
    status, _, body = call(app_replying(429, b"Too many requests."))
    assert status == 429 and json.loads(body)["error"]["code"] == "overloaded"
    status, headers, body = call(app_replying(503, b"Back pressure."))
    assert status == 503 and headers[b"retry-after"] == b"7"  # the proxy's own advice kept
    assert json.loads(body)["error"]["code"] == "unavailable"


def test_json_errors_and_successful_replies_pass_through_unchanged():
    reply = json.dumps({"success": False, "error": {"code": "not_an_image", "message": "x"}})
    assert call(app_replying(400, reply.encode(), b"application/json")) == (
        400,
        {b"content-type": b"application/json"},
        reply.encode(),
    )
    assert call(app_replying(200, b"<html>page</html>", b"text/html")) == (
        200,
        {b"content-type": b"text/html"},
        b"<html>page</html>",
    )


def test_rays_proxy_accepts_the_callback():
    assert f"{middlewares.__module__}:{middlewares.__name__}" == CALLBACK
    (middleware,) = validate_http_proxy_callback_return(middlewares())
    assert middleware.cls is JSONErrors
