"""The route class every router uses: request JSON parsed by orjson, other media types refused.

A batch of 64 queries of 512 floats is ~330 KB of JSON; the standard library's parser spends
~18 ms on it, orjson ~2 ms (measured with ``benchmarks/bench_service.py``). orjson follows
RFC 8259 strictly: NaN/Infinity literals and unpaired surrogate escapes are JSON errors (400).
A route with a JSON body answers 415 to a body declared as anything else (a form, plain text)
or sent without a Content-Type.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.dependencies.utils import get_flat_params
from fastapi.routing import APIRoute

from service.errors import ApiError, responses


class _OrjsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = orjson.loads(await self.body())  # JSONDecodeError: a json.JSONDecodeError
        return self._json


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class JSONRoute(APIRoute):
    """An `APIRoute` whose handler parses JSON bodies with orjson (same errors as FastAPI's)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        takes_input = self.body_field is not None or bool(get_flat_params(self.dependant))
        # document the envelope the service sends, not FastAPI's default HTTPValidationError
        if takes_input:
            self.responses = {**responses(422), **self.responses}
        if self.body_field is not None:
            self.responses = {**responses(415), **self.responses}

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        json_body = self.body_field is not None

        async def route_handler(request: Request) -> Response:
            req = _OrjsonRequest(request.scope, request.receive)
            if json_body:
                ctype = req.headers.get("content-type")
                if ctype is None and await req.body():  # read once; the handler reuses it
                    raise ApiError(
                        415, "a request body needs Content-Type: application/json", param="body"
                    )
                if ctype is not None and not _is_json(ctype):
                    raise ApiError(
                        415,
                        f"unsupported content type {ctype.split(';')[0].strip()!r}: "
                        "send application/json",
                        param="body",
                    )
            return await handler(req)

        return route_handler
