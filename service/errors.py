"""One error envelope for every failure: ``{"error": {"type", "message", "param"}}``.

Library errors map to status codes here (``InputError`` 400, ``PayloadTooLargeError`` 413,
``NotFoundError`` 404, ``ConflictError`` 409, ``OverloadedError`` 429 with ``Retry-After`` in a
header and as ``retry_after`` in the envelope), FastAPI's validation errors to 422, Starlette's
HTTP errors (unknown route 404, 405, ...) keep their status. Anything unexpected is a logged 500
whose message reveals nothing internal.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gapfix.batching import OverloadedError
from gapfix.errors import GapfixError, InputError, NotFittedError, PayloadTooLargeError
from gapfix.store import ConflictError, NotFoundError

log = logging.getLogger("gapfix.service")

STATUS_TYPES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


class ApiError(Exception):
    """An error raised by the service itself with its status, type and parameter."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = type or STATUS_TYPES.get(status, "error")
        self.headers = headers


def envelope(
    type: str, message: str, param: str | None = None, retry_after: int | None = None
) -> dict[str, Any]:
    """The error body (``retry_after``, in seconds, only on 429)."""
    error: dict[str, Any] = {"type": type, "message": message, "param": param}
    if retry_after is not None:
        error["retry_after"] = retry_after
    return {"error": error}


def error_response(
    status: int,
    message: str,
    param: str | None = None,
    type: str | None = None,
    headers: dict[str, str] | None = None,
    retry_after: int | None = None,
) -> JSONResponse:
    """A JSON error response in the envelope (``retry_after`` also as the header)."""
    if retry_after is not None:
        headers = {**(headers or {}), "Retry-After": str(retry_after)}
    return JSONResponse(
        envelope(type or STATUS_TYPES.get(status, "error"), message, param, retry_after),
        status_code=status,
        headers=headers,
    )


def status_of(exc: GapfixError) -> int:
    """HTTP status for a library error."""
    if isinstance(exc, PayloadTooLargeError):
        return 413
    if isinstance(exc, InputError):
        return 400
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, ConflictError):
        return 409
    if isinstance(exc, NotFittedError):
        return 400
    if isinstance(exc, OverloadedError):
        return 429
    return 503  # the store is closed, the encoder is shutting down, a data dir is locked


def _loc_param(loc: tuple[Any, ...] | list[Any]) -> str | None:
    """``("body", "items", 3, "id")`` -> ``items[3].id``."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif isinstance(p, str) and (
            p.startswith(("function-after[", "function-before[")) or p in ("list[...]",)
        ):
            continue
        else:
            out += f".{p}" if out else str(p)
    return out or None


async def _gapfix_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, GapfixError)
    status = status_of(exc)
    message = getattr(exc, "message", None) or str(exc)
    if status == 503:
        log.warning("%s %s: %s", request.method, request.url.path, message)
    retry = getattr(exc, "retry_after", None)
    return error_response(
        status,
        message,
        getattr(exc, "param", None),
        retry_after=None if retry is None else max(1, math.ceil(retry)),
    )


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message, exc.param, exc.type, exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if not errors:
        return error_response(422, "invalid request")
    first = errors[0]
    if first.get("type") == "json_invalid":  # say where and why, not just "JSON decode error"
        loc = first.get("loc", ())
        where = f" at character {loc[-1]}" if loc and isinstance(loc[-1], int) else ""
        reason = (first.get("ctx") or {}).get("error") or "JSON decode error"
        return error_response(422, f"request body is not valid JSON{where}: {reason}", "body")
    param = _loc_param(first.get("loc", ()))
    msg = str(first.get("msg", "invalid value"))
    message = f"{param}: {msg}" if param else msg
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return error_response(422, message, param)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    detail = exc.detail
    if status == 404 and detail == "Not Found":
        detail = f"no route for {request.method} {request.url.path}"
    elif status == 405:
        detail = f"method {request.method} is not allowed on {request.url.path}"
    message = detail if isinstance(detail, str) else str(detail)
    return error_response(status, message, None, headers=getattr(exc, "headers", None))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal server error")


def install(app: FastAPI) -> None:
    """Register the envelope handlers on ``app``."""
    app.add_exception_handler(GapfixError, _gapfix_error)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "type": {"type": "string"},
                "message": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "retry_after": {
                    "type": "integer",
                    "description": "429 only: seconds to wait before retrying (also the "
                    "Retry-After header)",
                },
            },
            "required": ["type", "message", "param"],
        }
    },
    "required": ["error"],
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries documenting the error envelope for ``codes``."""
    return {
        c: {
            "description": STATUS_TYPES.get(c, "error").replace("_", " "),
            "content": {"application/json": {"schema": ERROR_SCHEMA}},
        }
        for c in codes
    }
