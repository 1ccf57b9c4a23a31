"""Pure-ASGI middleware: request-body limit (413) and per-route Prometheus metrics."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gapfix.metrics import HTTP_LATENCY, HTTP_REQUESTS
from service.errors import envelope

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


async def _send_error(send: Send, status: int, type: str, message: str, param: str | None) -> None:
    body = json.dumps(envelope(type, message, param)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Reject request bodies over ``max_bytes`` with 413, by Content-Length up front and by
    counting while reading (chunked uploads), before the app sees any of it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        too_large = f"request body is larger than {limit} bytes (GAPFIX_MAX_BODY_BYTES)"
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_error(send, 400, "invalid_request", "bad Content-Length", None)
                    return
                if declared > limit:
                    await _send_error(send, 413, "payload_too_large", too_large, None)
                    return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client is gone: nothing to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _send_error(send, 413, "payload_too_large", too_large, None)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


_CONVERTER = re.compile(r"\{(\w+):\w+\}")  # "{item_id:path}" -> "{item_id}" in labels


class MetricsMiddleware:
    """Count requests and time them per method and route template (never the raw path).

    ``routes``: the API routes, matched for requests answered before routing (413 by size).
    They are passed in rather than read from ``app.router``, where newer FastAPI versions keep
    included routers nested (whose routes never match fully there)."""

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.routes = list(routes)

    def _template(self, scope: Scope) -> str:
        route = scope.get("route")
        path = getattr(route, "path", None)
        if path:
            return _CONVERTER.sub(r"{\1}", path)
        for r in self.routes:  # requests answered before routing (413 by size)
            match, _ = r.matches(scope)
            if match == Match.FULL:
                return _CONVERTER.sub(r"{\1}", getattr(r, "path", "unmatched"))
        return "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            method = scope.get("method", "GET")
            method = method if method in METHODS else "OTHER"
            route = self._template(scope)
            HTTP_REQUESTS.labels(method, route, str(status)).inc()
            HTTP_LATENCY.labels(method, route).observe(time.perf_counter() - start)
