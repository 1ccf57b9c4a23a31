"""``gapfix.client`` without a gapfix server: retries against a small local stub HTTP server
(429/503 with ``Retry-After``, refused connections), errors from each envelope shape, and the
packing of long lists within the server's limits. The client against a live ``gapfix serve``
is in tests/test_client_process.py."""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import numpy as np
import pytest

from gapfix.client import AsyncClient, Client, GapfixClientError
from gapfix.client.errors import error_from_response
from gapfix.client.http import retry_after
from gapfix.client.payloads import Part, pack

INFO = {"model": "m", "dim": 3, "limits": {"max_texts_per_request": 4,
        "max_images_per_request": 2, "max_body_bytes": 1 << 20, "max_queries_per_request": 3}}  # fmt: skip


class Stub:
    """A threaded HTTP server on 127.0.0.1 that answers each POST from a script of
    ``(status, headers, body)`` (the last one repeats) and records when each came in."""

    def __init__(self, script: list[tuple[int, dict[str, str], Any]]) -> None:
        self.script = list(script)
        self.times: list[float] = []
        self.bodies: list[Any] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, headers: dict[str, str], body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._answer(200, {}, INFO)

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length", 0))
                outer.bodies.append(json.loads(self.rfile.read(n)))
                outer.times.append(time.monotonic())
                step = outer.script[min(len(outer.times) - 1, len(outer.script) - 1)]
                self._answer(*step)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


OK = (200, {}, {"vectors": [[1.0, 0.0, 0.0]], "fingerprint": None})


def busy(status: int, after: str | None, kind: str = "rate_limited") -> tuple:
    headers = {"Retry-After": after} if after is not None else {}
    return status, headers, {"error": {"type": kind, "message": "slow down", "param": None}}


@pytest.fixture
def stub() -> Iterator[Any]:
    made: list[Stub] = []

    def make(*script: tuple) -> Stub:
        made.append(Stub(list(script)))
        return made[-1]

    yield make
    for s in made:
        s.close()


def correct(c: Client) -> np.ndarray:
    return c.correct([[1.0, 0.0, 0.0]], "text", transform="t")


def test_429_and_503_are_retried_after_retry_after(stub) -> None:
    s = stub(busy(429, "1"), busy(503, "0", "not_ready"), OK)
    with Client(s.url, backoff_s=0.01) as c:
        assert np.allclose(correct(c), [[1, 0, 0]])
    assert len(s.times) == 3
    assert s.times[1] - s.times[0] >= 0.95  # the server's Retry-After, not backoff_s
    assert s.times[2] - s.times[1] < 0.5
    assert s.bodies[0] == s.bodies[2]  # the same request again


def test_retry_after_as_a_date_and_backoff_without_one(stub) -> None:
    date = email.utils.formatdate(time.time() + 2, usegmt=True)  # whole seconds: 1-2 s away
    assert 0.5 < retry_after(httpx.Response(429, headers={"Retry-After": date})) <= 2.0
    s = stub(busy(503, date), busy(429, None), busy(429, None), OK)
    with Client(s.url, backoff_s=0.2, max_backoff_s=10) as c:
        correct(c)
    gaps = np.diff(s.times)
    assert gaps[0] >= 0.5 and 0.19 <= gaps[1] < 0.6 and 0.39 <= gaps[2] < 1.0, (
        gaps
    )  # 0.2*2**n*U(.5,1)


def test_retries_give_up_with_the_servers_error(stub) -> None:
    s = stub(busy(429, "0"))
    with Client(s.url, max_retries=2) as c, pytest.raises(GapfixClientError) as info:
        correct(c)
    e = info.value
    assert (e.status, e.type, e.message) == (429, "rate_limited", "slow down")
    assert len(s.times) == 3


def test_other_errors_are_not_retried_and_carry_the_envelope(stub) -> None:
    body = {"error": {"type": "not_found", "message": "transform 't' not found",
                      "param": "transform"}}  # fmt: skip
    s = stub((404, {}, body))
    with Client(s.url) as c, pytest.raises(GapfixClientError) as info:
        correct(c)
    e = info.value
    assert (e.status, e.type, e.param, e.message) == (404, "not_found", "transform",
                                                      "transform 't' not found")  # fmt: skip
    assert e.body == body and len(s.times) == 1
    assert str(e) == "404 not_found [transform]: transform 't' not found"


def test_async_client_retries_too(stub) -> None:
    s = stub(busy(429, "1"), OK)

    async def run() -> np.ndarray:
        async with AsyncClient(s.url, backoff_s=0.01) as c:
            return await c.correct([[1.0, 0.0, 0.0]], "text", transform="t")

    assert np.allclose(asyncio.run(run()), [[1, 0, 0]])
    assert len(s.times) == 2 and s.times[1] - s.times[0] >= 0.95


def test_a_refused_connection_is_retried_then_reported() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    t0 = time.monotonic()
    c = Client(f"http://127.0.0.1:{port}", max_retries=2, backoff_s=0.1)
    with c, pytest.raises(GapfixClientError) as info:
        c.info()
    assert info.value.status == 0 and info.value.type == "connection_error"
    assert time.monotonic() - t0 >= 0.1  # two waits of 0.05-0.1 s and 0.1-0.2 s


def test_error_shapes() -> None:
    openai = {"error": {"message": "m", "type": "invalid_request_error", "param": "input",
                        "code": None}}  # fmt: skip
    e = error_from_response(httpx.Response(400, json=openai))
    assert (e.status, e.type, e.param, e.message) == (400, "invalid_request_error", "input", "m")
    e = error_from_response(httpx.Response(422, json={"error": "bad", "error_type": "Validation"}))
    assert (e.status, e.type, e.message) == (422, "Validation", "bad")
    e = error_from_response(httpx.Response(502, text="Bad Gateway\n"))
    assert (e.status, e.type, e.message) == (502, None, "Bad Gateway")


def test_pack_stays_within_every_limit() -> None:
    rng = np.random.default_rng(0)
    parts = [Part(b"x" * int(rng.integers(1, 300)), texts=int(k == 0), images=int(k == 1))
             for k in rng.integers(0, 3, 500)]  # fmt: skip
    limits = {"max_texts_per_request": 7, "max_images_per_request": 3, "max_body_bytes": 6000}
    ranges = list(pack(parts, limits, max_count=20))
    assert ranges[0][0] == 0 and ranges[-1][1] == len(parts)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    for start, stop in ranges:
        chunk = parts[start:stop]
        assert sum(p.texts for p in chunk) <= 7 and sum(p.images for p in chunk) <= 3
        assert sum(len(p.json) + 1 for p in chunk) <= 6000 - 4096 and len(chunk) <= 20
    full = [sum(p.images for p in parts[a:b]) for a, b in ranges]
    assert max(full) == 3  # batches are filled, not one part each
    big = [Part(b"y" * 5000), Part(b"z")]  # too large alone: sent alone (the server says 413)
    assert list(pack(big, limits)) == [(0, 1), (1, 2)]


def test_the_client_and_adapters_never_import_service_or_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, gapfix.client, gapfix.integrations.langchain, "
            "gapfix.integrations.llama_index; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'service', 'torch'}))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
