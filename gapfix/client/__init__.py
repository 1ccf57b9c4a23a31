"""A Python client of the gapfix HTTP API (httpx): ``Client`` (blocking) and ``AsyncClient``.

Numpy arrays out; long lists batched within the server's limits (with a tqdm bar when
``progress=True``); retries on 429/503 honouring ``Retry-After``; errors raised as
`GapfixClientError` (status, type, message, param of the error envelope)."""

from __future__ import annotations

from gapfix.client.errors import GapfixClientError
from gapfix.client.http import AsyncClient, Client
from gapfix.client.ops import Embedded
from gapfix.client.transforms import Transforms

__all__ = ["AsyncClient", "Client", "Embedded", "GapfixClientError", "Transforms"]
