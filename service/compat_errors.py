"""Error bodies of the contracts gapfix also speaks, each in the shape its clients parse.

- OpenAI (``/v1/embeddings``, ``/v1/models``): ``{"error": {"message", "type", "param",
  "code"}}``; schema violations are 400 ``invalid_request_error`` as OpenAI answers them.
- Hugging Face TEI (``/embed``, ``/info``, ``/health``): ``{"error": "...", "error_type":
  "Validation" | "Unhealthy" | ...}``; bad input is 422, too large 413.
- Weaviate's multi2vec-clip container (``/vectorize``): ``{"error": "..."}`` — Weaviate
  decodes the body into a struct whose ``error`` is a string and reports it with the status.

A route class per contract catches what the route (and its dependencies: auth, body
validation) raises and answers in that shape; ``ContractErrorMiddleware`` rewrites what is
answered before any route runs (405, the body limit's 413). Other routes keep gapfix's
envelope.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gapfix.errors import GapfixError
from service.errors import STATUS_TYPES, ApiError, _loc_param, status_of
from service.routing import JSONRoute

log = logging.getLogger("gapfix.service")


def _described(exc: Exception) -> tuple[int, str, str | None, str | None]:
    """``(status, message, param, gapfix type)`` of anything a route can raise."""
    if isinstance(exc, ApiError):
        return exc.status, exc.message, exc.param, exc.type
    if isinstance(exc, GapfixError):
        msg = getattr(exc, "message", None) or str(exc)
        return status_of(exc), msg, getattr(exc, "param", None), None
    if isinstance(exc, RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            return 400, "the request body is not valid JSON", "body", None
        param = _loc_param(first.get("loc", ()))
        msg = str(first.get("msg", "invalid value"))
        return 400, f"{param}: {msg}" if param else msg, param, None
    if isinstance(exc, StarletteHTTPException):
        return exc.status_code, str(exc.detail), None, None
    raise exc


class _CompatRoute(JSONRoute):
    """A JSONRoute whose errors are rendered by ``render`` (in the contract's shape)."""

    @staticmethod
    def render(status: int, message: str, param: str | None, kind: str | None) -> Response:
        raise NotImplementedError

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        render = self.render

        async def route_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except (ApiError, GapfixError, RequestValidationError, StarletteHTTPException) as exc:
                status, message, param, kind = _described(exc)
                if status >= 500:
                    log.warning("%s %s: %s", request.method, request.url.path, message)
                return render(status, message, param, kind)

        return route_handler


OPENAI_CODES = {
    401: "invalid_api_key",
    404: "not_found",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limit_exceeded",
}


def openai_error(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> JSONResponse:
    """An error in OpenAI's shape."""
    if status == 422:  # OpenAI answers schema violations with 400
        status = 400
    kind = "server_error" if status >= 500 else "invalid_request_error"
    if status == 429:
        kind = "rate_limit_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    headers = {"WWW-Authenticate": 'Bearer realm="gapfix"'} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


class OpenAIRoute(_CompatRoute):
    @staticmethod
    def render(status: int, message: str, param: str | None, kind: str | None) -> Response:
        generic = kind is None or kind in STATUS_TYPES.values()
        code = OPENAI_CODES.get(status) if generic else kind
        return openai_error(status, message, param, code)


TEI_TYPES = {401: "Unhealthy", 503: "Unhealthy", 429: "Overloaded"}


def tei_error(status: int, message: str) -> JSONResponse:
    """An error in TEI's shape: validation problems are 422 (413 when too large)."""
    if status in (400, 404, 409, 415):
        status = 422
    kind = TEI_TYPES.get(status, "Backend" if status >= 500 else "Validation")
    return JSONResponse({"error": message, "error_type": kind}, status_code=status)


class TEIRoute(_CompatRoute):
    @staticmethod
    def render(status: int, message: str, param: str | None, kind: str | None) -> Response:
        return tei_error(status, message)


class WeaviateRoute(_CompatRoute):
    @staticmethod
    def render(status: int, message: str, param: str | None, kind: str | None) -> Response:
        where = f"{param}: " if param and not message.startswith(param) else ""
        return JSONResponse({"error": where + message}, status_code=status)


def contract_of(path: str) -> str | None:
    """Which contract a request path belongs to (None: gapfix's own routes)."""
    if path == "/v1/embeddings" or path == "/v1/models" or path.startswith("/v1/models/"):
        return "openai"
    if path in ("/embed", "/info", "/health"):
        return "tei"
    if path in ("/vectorize", "/meta") or path.startswith("/.well-known/"):
        return "weaviate"
    return None


RENDERERS = {"openai": OpenAIRoute.render, "tei": TEIRoute.render, "weaviate": WeaviateRoute.render}


class ContractErrorMiddleware:
    """Errors answered before a contract's route runs (405, the body limit's 413, ...) come in
    gapfix's envelope; this rewrites them into the contract's shape. Other responses pass."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        contract = contract_of(scope.get("path", "")) if scope["type"] == "http" else None
        if contract is None:
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                ctype = dict(message.get("headers", [])).get(b"content-type", b"")
                if message["status"] >= 400 and ctype.startswith(b"application/json"):
                    start = message
                    return
            elif start is not None and message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    await _rewrite(send, start, b"".join(chunks), contract)
                return
            await send(message)

        await self.app(scope, receive, capture)


async def _rewrite(send: Send, start: Message, body: bytes, contract: str) -> None:
    try:
        err = orjson.loads(body)["error"]
        if set(err) != {"type", "message", "param"}:
            raise TypeError("not gapfix's envelope")
        status, message, param, kind = start["status"], err["message"], err["param"], err["type"]
    except (ValueError, KeyError, TypeError):  # already in the contract's shape
        await send(start)
        await send({"type": "http.response.body", "body": body})
        return
    resp = RENDERERS[contract](status, message, param, kind)
    headers = [
        (k, v)
        for k, v in start.get("headers", [])
        if k.lower() not in (b"content-length", b"content-type")
    ]
    headers += [(b"content-type", b"application/json"),
                (b"content-length", str(len(resp.body)).encode())]  # fmt: skip
    await send({"type": "http.response.start", "status": resp.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": resp.body})
