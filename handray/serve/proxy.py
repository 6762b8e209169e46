"""JSON errors from Ray Serve's HTTP proxy too, so a client never parses text or sees a reset.

The `Ingress` answers every error it sees as JSON, but some replies never reach it: Ray's proxy
answers a timed-out or back-pressured request with plain text, and when the Ingress replica
holding a request dies (killed, out of memory, its node lost) the proxy sends nothing at all, so
the HTTP server falls back to a bare "500 Internal Server Error". This middleware runs inside the
proxy and turns each of those into the reply the contract promises: `{"success": false,
"error": {...}}`, with `Retry-After` on a 503. Ray's 408 for a request that waited past
`request_timeout_s` becomes a 503 too (code `timeout`): 408 tells a client it was too slow to
send, while this one should come back later, when the server is less busy.

Ray reads proxy middlewares from one environment variable, set where the cluster starts (before
`serve run` or `ray start`):

    export RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=handray.serve.proxy:middlewares
"""

from __future__ import annotations

import json
from typing import Any

from starlette.middleware import Middleware

CALLBACK_VARIABLE = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
CALLBACK = "handray.serve.proxy:middlewares"
RETRY_AFTER_S = 1
_CODES = {429: "overloaded", 503: "unavailable"}


def middlewares() -> list[Middleware]:
    """What Ray's proxy calls at start-up (see the module docstring)."""
    return [Middleware(JSONErrors)]


class JSONErrors:
    """A pure ASGI middleware: proxy error replies that are not JSON are rewritten as JSON, and
    a request whose handler ended without replying gets a JSON 503."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        held: dict | None = None  # a non-JSON error's start, kept until its body is read
        body = bytearray()

        async def forward(message: dict) -> None:
            nonlocal started, held
            if message["type"] == "http.response.start":
                started = True
                if message["status"] >= 400 and not _is_json(message):
                    held = message
                    return
            elif message["type"] == "http.response.body" and held is not None:
                body.extend(message.get("body", b""))
                if not message.get("more_body", False):
                    text = body.decode("utf-8", "replace").strip()
                    retry_after = dict(held.get("headers", [])).get(b"retry-after")
                    if held["status"] == 408:  # Ray's request_timeout_s ran out
                        await _send_error(send, 503, text, code="timeout")
                    else:
                        await _send_error(send, held["status"], text, retry_after=retry_after)
                return
            await send(message)

        try:
            await self.app(scope, receive, forward)
        except Exception:
            if started:
                raise
        if not started:
            await _send_error(
                send,
                503,
                "the server replica handling this request stopped before it could answer; "
                "send the request again",
                code="replica_stopped",
            )


def _is_json(start: dict) -> bool:
    headers = dict(start.get("headers", []))
    return headers.get(b"content-type", b"").startswith(b"application/json")


async def _send_error(
    send: Any,
    status: int,
    message: str,
    code: str | None = None,
    retry_after: bytes | None = None,
) -> None:
    code = code or _CODES.get(status, "server_error" if status >= 500 else "client_error")
    body = json.dumps({"success": False, "error": {"code": code, "message": message}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 503:
        headers.append((b"retry-after", retry_after or str(RETRY_AFTER_S).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
