"""The route class every router uses: request JSON parsed by orjson.

A batch of 64 queries of 512 floats is ~330 KB of JSON; the standard library's parser spends
~18 ms on it, orjson ~2 ms (measured with ``benchmarks/bench_service.py``). orjson follows
RFC 8259 strictly: NaN/Infinity literals and unpaired surrogate escapes are JSON errors (400).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute


class _OrjsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = orjson.loads(await self.body())  # JSONDecodeError: a json.JSONDecodeError
        return self._json


class JSONRoute(APIRoute):
    """An `APIRoute` whose handler parses JSON bodies with orjson (same errors as FastAPI's)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            return await handler(_OrjsonRequest(request.scope, request.receive))

        return route_handler
