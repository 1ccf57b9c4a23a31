"""`Client` and `AsyncClient`: httpx transports for the operations of ``gapfix.client.ops``,
with the API key, retries on 429/503 (``Retry-After`` honoured, else exponential backoff)
and errors raised as `GapfixClientError`."""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from typing import Any, TypeVar

import httpx
import orjson

from gapfix import __version__
from gapfix.client.errors import GapfixClientError, error_from_response
from gapfix.client.ops import Call, Op, Operations, Reply, Sleep
from gapfix.client.transforms import Transforms

T = TypeVar("T")
RETRY_STATUSES = frozenset({429, 503})
DEFAULT_URL = "http://127.0.0.1:8000"


def retry_after(resp: httpx.Response) -> float | None:
    """Seconds the server asks to wait (``Retry-After``: seconds or an HTTP date), if any."""
    value = resp.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _Base(Operations):
    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        timeout: float,
        max_retries: int,
        backoff_s: float,
        max_backoff_s: float,
        progress: bool,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.progress = progress
        self._info = None
        self.transforms = Transforms(self)
        self._headers = {"User-Agent": f"gapfix-client/{__version__}"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = httpx.Timeout(timeout)

    def _delay(self, attempt: int, resp: httpx.Response | None) -> float:
        """How long to wait before retry ``attempt`` (0-based)."""
        asked = retry_after(resp) if resp is not None else None
        if asked is not None:
            return min(asked, max(self.max_backoff_s, 1.0) * 4)
        return min(self.max_backoff_s, self.backoff_s * 2**attempt) * random.uniform(0.5, 1.0)

    @staticmethod
    def _request(call: Call) -> dict[str, Any]:
        headers = {"Content-Type": call.content_type} if call.content is not None else {}
        return {"method": call.method, "url": call.path, "content": call.content,
                "params": call.params, "headers": headers}  # fmt: skip

    @staticmethod
    def _reply(resp: httpx.Response) -> Reply:
        if resp.status_code >= 400:
            raise error_from_response(resp)
        ctype = resp.headers.get("content-type", "")
        data = orjson.loads(resp.content) if "json" in ctype and resp.content else resp.content
        return Reply(resp.status_code, data)

    @staticmethod
    def _unreachable(exc: httpx.HTTPError) -> GapfixClientError:
        return GapfixClientError(0, f"{type(exc).__name__}: {exc}", type="connection_error")


class Client(_Base):
    """A blocking client of a gapfix server.

    >>> from gapfix.client import Client
    >>> with Client("http://127.0.0.1:8000", api_key="...") as c:  # doctest: +SKIP
    ...     vecs = c.embed(["a dog"], transform="coco").texts
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        progress: bool = False,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout, max_retries, backoff_s, max_backoff_s,
                         progress)  # fmt: skip
        self._http = httpx.Client(base_url=self.base_url, headers=self._headers,
                                  timeout=self._timeout, transport=transport)  # fmt: skip

    def _send(self, call: Call) -> Reply:
        for attempt in range(self.max_retries + 1):
            try:
                resp = self._http.request(**self._request(call))
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # nothing was sent
                if attempt >= self.max_retries:
                    raise self._unreachable(exc) from exc
                time.sleep(self._delay(attempt, None))
                continue
            except httpx.HTTPError as exc:
                raise self._unreachable(exc) from exc
            if resp.status_code in RETRY_STATUSES and attempt < self.max_retries:
                time.sleep(self._delay(attempt, resp))
                continue
            return self._reply(resp)
        raise AssertionError("unreachable")

    def _run(self, op: Op[T]) -> T:
        try:
            step = next(op)
            while True:
                if isinstance(step, Sleep):
                    time.sleep(step.seconds)
                    step = op.send(None)
                    continue
                try:
                    reply = self._send(step)
                except GapfixClientError as exc:
                    step = op.throw(exc)
                else:
                    step = op.send(reply)
        except StopIteration as stop:
            return stop.value
        finally:
            op.close()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Base):
    """The asyncio client: the same methods as `Client`, each returning an awaitable
    (``await client.embed(...)``, ``await client.transforms.list()``)."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        progress: bool = False,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout, max_retries, backoff_s, max_backoff_s,
                         progress)  # fmt: skip
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=self._headers,
                                       timeout=self._timeout, transport=transport)  # fmt: skip

    async def _send(self, call: Call) -> Reply:
        for attempt in range(self.max_retries + 1):
            try:
                resp = await self._http.request(**self._request(call))
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                if attempt >= self.max_retries:
                    raise self._unreachable(exc) from exc
                await asyncio.sleep(self._delay(attempt, None))
                continue
            except httpx.HTTPError as exc:
                raise self._unreachable(exc) from exc
            if resp.status_code in RETRY_STATUSES and attempt < self.max_retries:
                await asyncio.sleep(self._delay(attempt, resp))
                continue
            return self._reply(resp)
        raise AssertionError("unreachable")

    async def _drive(self, op: Op[T]) -> T:
        try:
            step = next(op)
            while True:
                if isinstance(step, Sleep):
                    await asyncio.sleep(step.seconds)
                    step = op.send(None)
                    continue
                try:
                    reply = await self._send(step)
                except GapfixClientError as exc:
                    step = op.throw(exc)
                else:
                    step = op.send(reply)
        except StopIteration as stop:
            return stop.value
        finally:
            op.close()

    def _run(self, op: Op[T]) -> Any:  # an awaitable of T
        return self._drive(op)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
