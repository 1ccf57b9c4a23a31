"""Error bodies of the contracts gapfix also speaks, each in the shape its clients parse.

- OpenAI (``/v1/embeddings``, ``/v1/models``): ``{"error": {"message", "type", "param",
  "code"}}``; schema violations are 400 ``invalid_request_error`` as OpenAI answers them.
- Hugging Face TEI (``/embed``, ``/info``, ``/health``): ``{"error": "...", "error_type":
  "Validation" | "Unhealthy" | ...}``; bad input is 422, too large 413.
- Weaviate's multi2vec-clip container (``/vectorize``): ``{"error": "..."}`` — Weaviate
  decodes the body into a struct whose ``error`` is a string and reports it with the status.

A route class per contract catches what the route (and its dependencies: auth, body
validation) raises and answers in that shape; everything else keeps gapfix's envelope.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

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
