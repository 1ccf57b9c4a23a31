"""A real ``gapfix serve --model none`` under load on loopback: honest overload (429 with
Retry-After, quickly; the accepted requests served within the queue budget), pooled connections
kept alive across an idle gap, and a vectors-mode server that never imports torch."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from gapfix.store import ItemIn, Store
from service.settings import Settings
from tests.test_service_process import free_port, unit

pytestmark = pytest.mark.slow

GAPFIX = str(Path(sys.executable).parent / "gapfix")
D = 512
JSON = {"content-type": "application/json"}


@contextlib.contextmanager
def server(
    data_dir: Path, log: Path, env: dict[str, str] | None = None, importtime: bool = False
) -> Iterator[str]:
    """A ``gapfix serve --model none`` on 127.0.0.1; yields its URL once ready."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GAPFIX_")}
    full_env.update(env or {})
    prefix = [sys.executable, "-X", "importtime", GAPFIX] if importtime else [GAPFIX]
    with log.open("a") as out:
        proc = subprocess.Popen(
            [*prefix, "serve", "--model", "none", "--data-dir", str(data_dir),
             "--port", str(port), "--log-level", "warning"],
            env=full_env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"server not ready ({proc.returncode}):\n{log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            time.sleep(0.05)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def populate(data_dir: Path, n: int, seed: int = 0) -> np.ndarray:
    """A flat collection ``c`` of ``n`` random unit vectors (half image, half text), written
    before the server starts; returns 64 queries."""
    rng = np.random.default_rng(seed)
    with Store(data_dir, flush_interval=None) as store:
        coll = store.create_collection("c", index="flat")
        step = 10_000
        for start in range(0, n, step):
            x = unit(rng.standard_normal((min(step, n - start), D)))
            coll.add(
                [
                    ItemIn(f"i{start + j}", image=v) if j % 2 else ItemIn(f"t{start + j}", text=v)
                    for j, v in enumerate(x)
                ]
            )
    return unit(rng.standard_normal((64, D)))


def add_over_http(url: str, n: int) -> np.ndarray:
    """``n`` vector items added to a new collection ``c`` through the API; returns 4 queries."""
    rng = np.random.default_rng(1)
    x = unit(rng.standard_normal((n + 4, D)))
    items = [
        {"id": f"i{j}", ("image_vector" if j % 2 else "text_vector"): v.tolist()}
        for j, v in enumerate(x[:n])
    ]
    with httpx.Client(base_url=url, timeout=60) as c:
        assert c.post("/v1/collections", json={"name": "c"}).status_code == 201
        r = c.post("/v1/collections/c/items", json={"items": items})
        assert r.status_code == 200, r.text
    return x[n:]


def search_body(q: np.ndarray) -> dict:
    return {"query": {"vector": q.tolist(), "modality": "text"}, "k": 10, "corrected": False}


def test_overload_is_refused_quickly_and_accepted_requests_stay_within_budget(
    tmp_path: Path,
) -> None:
    """A server that runs one query per FAISS call (70-75/s here on 150k rows), and four times
    as many concurrent clients as it serves requests within its queue budget. The excess gets
    429 (Retry-After in the header and the envelope) at once; the accepted requests are
    answered within 2x the queue budget (plus what the client itself adds on this shared
    machine, measured on the requests refused at once)."""
    # a budget small enough that a few dozen clients overload even a fast machine (the default
    # 1 s needs ~4 x its q/s in clients: an idle machine serving 100+ q/s was never overloaded);
    # 150k rows keep a query slow enough that this one-process client can outpace the server
    budget = Settings(queue_budget_ms=100).queue_budget_ms / 1000
    env = {"GAPFIX_SEARCH_BATCH_ROWS": "1", "GAPFIX_QUEUE_BUDGET_MS": "100"}
    queries = populate(tmp_path / "data", 150_000)
    with server(tmp_path / "data", tmp_path / "serve.log", env) as url:
        bodies = [json.dumps(search_body(q)).encode() for q in queries]  # encoded once

        async def load(seconds: float, concurrency: int) -> list[tuple[int, float, httpx.Response]]:
            out: list[tuple[int, float, httpx.Response]] = []
            limits = httpx.Limits(max_connections=concurrency)
            async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
                stop = time.perf_counter() + seconds

                async def worker(w: int) -> None:
                    i = w
                    while time.perf_counter() < stop:
                        t0 = time.perf_counter()
                        r = await client.post(
                            "/v1/collections/c/search", content=bodies[i % 64], headers=JSON
                        )
                        out.append((r.status_code, time.perf_counter() - t0, r))
                        i += concurrency
                        if r.status_code == 429:  # a polite client: back off as told
                            await asyncio.sleep(float(r.headers["retry-after"]))

                await asyncio.gather(*(worker(w) for w in range(concurrency)))
            return out

        # warm-up (connections, FAISS, the batcher's cost model) and the server's capacity
        warm = asyncio.run(load(2.0, 4))
        rate = sum(c == 200 for c, _, _ in warm) / 2.0
        # 4x overload: four times as many clients as requests it serves within the budget
        concurrency = min(128, max(16, math.ceil(4 * rate * budget)))
        results = asyncio.run(load(5.0, concurrency))
        metrics = httpx.get(f"{url}/metrics").text
    codes = [c for c, _, _ in results]
    assert set(codes) <= {200, 429}, set(codes)
    ok = np.array([t for c, t, _ in results if c == 200])
    refused = [(t, r) for c, t, r in results if c == 429]
    # polite clients sleep Retry-After (>= 1 s) after a 429, so the share refused settles near
    # sleeping / (sleeping + served per second): 20-23 % measured at 70-75 answered q/s
    assert len(ok) >= 20 and len(refused) >= max(20, len(results) / 10), (len(ok), len(refused))
    # refused on arrival (the rest were shed when their turn came, past the budget)
    at_once = [t for t, r in refused if "queued (" in r.json()["error"]["message"]]
    assert len(at_once) >= len(refused) / 2, (len(at_once), len(refused))
    # what the client and the loaded machine add to a request the server answers at once
    overhead = np.percentile(at_once, [50, 99])
    # refused quickly: faster than an answer (an absolute bound would test the machine's load:
    # the client alone took a median 0.10 s once in CI, 0.24-0.7 s at load average 7-14)
    assert overhead[0] < np.percentile(ok, 50), (overhead, np.percentile(ok, 50))
    # accepted: within 2x the budget, plus that same client-side overhead at the same percentile
    assert np.percentile(ok, 99) <= 2 * budget + overhead[1], (np.percentile(ok, 99), overhead)
    for _, r in refused[:20]:
        err = r.json()["error"]
        assert err["type"] == "rate_limited" and "overloaded" in err["message"]
        assert int(r.headers["retry-after"]) == err["retry_after"] >= 1
    assert re.search(r'^gapfix_queue_depth\{stage="search"\} ', metrics, re.M), metrics[:2000]


def test_pooled_connections_are_reused_after_an_idle_gap(tmp_path: Path) -> None:
    """A client pool keeping connections idle for 6 s (longer than uvicorn's old 5 s default)
    reuses every one of them: no reconnect, no failed request."""
    connects: list[str] = []

    async def trace(event: str, info: dict) -> None:
        if event == "connection.connect_tcp.complete":
            connects.append(event)

    with server(tmp_path / "data", tmp_path / "serve.log") as url:

        async def burst(client: httpx.AsyncClient) -> list[int]:
            rs = await asyncio.gather(
                *(client.get("/v1/info", extensions={"trace": trace}) for _ in range(8))
            )
            return [r.status_code for r in rs]

        async def main() -> tuple[list[int], int, list[int]]:
            limits = httpx.Limits(max_connections=8, keepalive_expiry=60)
            async with httpx.AsyncClient(base_url=url, limits=limits, timeout=10) as client:
                first = await burst(client)
                opened = len(connects)
                await asyncio.sleep(6.0)
                return first, opened, await burst(client)

        first, opened, second = asyncio.run(main())
    assert first == second == [200] * 8
    assert 1 <= opened <= 8 and len(connects) == opened  # the idle connections were reused


def test_vectors_mode_never_imports_torch(tmp_path: Path) -> None:
    """``-X importtime`` lists every module the server imports (on stderr, in the log): start-up,
    ingest, raw and corrected search, /v1/info and /metrics import neither torch nor open_clip."""
    log = tmp_path / "serve.log"
    with server(tmp_path / "data", log, importtime=True) as url:
        queries = add_over_http(url, 200)
        with httpx.Client(base_url=url, timeout=60) as c:
            r = c.post("/v1/collections/c/transform", json={"method": "centering"})
            assert r.status_code == 200, r.text
            for corrected in (False, True):
                body = {**search_body(queries[0]), "corrected": corrected}
                assert c.post("/v1/collections/c/search", json=body).status_code == 200
            assert c.get("/v1/info").json()["vectors_mode"] is True
            assert c.get("/metrics").status_code == 200
            assert c.post("/v1/embed", json={"texts": ["a"]}).status_code == 400
    modules = re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)$", log.read_text(), re.M)
    assert (
        "gapfix.store.embedded.collection" in modules and "faiss" in modules
    )  # the log is complete
    heavy = [m for m in modules if m.split(".")[0] in ("torch", "open_clip", "torchvision")]
    assert not heavy, heavy[:10]
