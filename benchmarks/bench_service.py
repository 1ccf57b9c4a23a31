"""Search through the HTTP service vs bare FAISS, and a loopback load test of a real server.

1. In-process ASGI (httpx ``ASGITransport``, the app's lifespan run by hand): ``POST .../search``
   with a vector query against a 100k x 512 flat collection, vs ``index.search`` on the very
   same FAISS index object; batch 1 (one request per query) and batch 64 (one request).
   The overhead measured is JSON parsing/validation, the threadpool hop, the store's checks and
   SQLite lookup of the hits, and JSON serialisation of the response (request bodies are
   encoded once, up front: the client's JSON encoding is not the service's cost).
2. A real ``gapfix serve --model none`` on 127.0.0.1 (same data directory), driven by an asyncio
   httpx client at concurrency 1, 16 and 64 for a few seconds each: requests/s and p50/p99
   latency of single-vector searches. Baseline: bare FAISS single-query searches/s in one
   thread (what one core does with no service at all).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from benchmarks._common import BenchResult
from gapfix.store import ItemIn, Store

N = 100_000
DIM = 512
K = 10
BATCH_1_QUERIES = 30
ROUNDS = 5
LOAD_SECONDS = 6.0
CONCURRENCY = (1, 16, 64)


SEARCH = "/v1/collections/bench/search"
JSON_HEADERS = {"content-type": "application/json"}


def _json(body: dict) -> bytes:
    return json.dumps(body).encode()


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _populate(data_dir: Path, rng: np.random.Generator) -> None:
    with Store(data_dir, flush_interval=None) as store:
        coll = store.create_collection("bench", index="flat")
        step = 10_000
        for start in range(0, N, step):
            x = _unit(rng.standard_normal((step, DIM), dtype=np.float32))
            coll.add(
                [
                    ItemIn(f"i{start + n}", image=x[n], metadata={"n": start + n})
                    if n % 2 == 0
                    else ItemIn(f"t{start + n}", text=x[n], caption=f"caption {start + n}")
                    for n in range(step)
                ]
            )


def _best_pair(fn_a, fn_b, rounds: int = ROUNDS) -> tuple[float, float]:
    """Best times of two (sync or async-wrapped) callables, timed alternately."""
    best_a = best_b = float("inf")
    fn_a(), fn_b()  # warm-up
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn_a()
        best_a = min(best_a, time.perf_counter() - t0)
        t0 = time.perf_counter()
        fn_b()
        best_b = min(best_b, time.perf_counter() - t0)
    return best_a, best_b


def _in_process(data_dir: Path, queries: np.ndarray) -> list[BenchResult]:
    from service.app import create_app
    from service.settings import Settings

    app = create_app(Settings(_env_file=None, model="none", data_dir=data_dir))  # type: ignore[call-arg]
    # bodies encoded once: the client's own JSON encoding is not the service's overhead
    bodies_1 = [
        _json({"query": {"vector": q.tolist(), "modality": "text"}, "k": K, "corrected": False})
        for q in queries[:BATCH_1_QUERIES]
    ]
    body_64 = _json(
        {
            "queries": [{"vector": q.tolist(), "modality": "text"} for q in queries],
            "k": K,
            "corrected": False,
        }
    )
    results: list[BenchResult] = []

    async def main() -> None:
        async with app.router.lifespan_context(app):
            index = app.state.gapfix.store.get("bench")._raw.index  # the FAISS object searched
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:

                async def service_b1() -> None:
                    for body in bodies_1:
                        r = await client.post(SEARCH, content=body, headers=JSON_HEADERS)
                        assert r.status_code == 200 and len(r.json()["results"]) == K

                async def service_b64() -> None:
                    r = await client.post(SEARCH, content=body_64, headers=JSON_HEADERS)
                    assert r.status_code == 200 and len(r.json()["batches"]) == len(queries)

                def faiss_b1() -> None:
                    for q in queries[:BATCH_1_QUERIES]:
                        index.search(q[None, :], K)

                def faiss_b64() -> None:
                    index.search(queries, K)

                loop = asyncio.get_running_loop()

                def run_sync(coro_fn):
                    # time the coroutine from a worker thread's point of view: block until done
                    return lambda: asyncio.run_coroutine_threadsafe(coro_fn(), loop).result()

                for name, svc, base, nq in (
                    ("batch 1", service_b1, faiss_b1, BATCH_1_QUERIES),
                    ("batch 64", service_b64, faiss_b64, len(queries)),
                ):
                    t_svc, t_base = await asyncio.to_thread(_best_pair, run_sync(svc), base)
                    results.append(
                        BenchResult(
                            name=f"HTTP search (in-process ASGI) flat 100k x 512, {name}",
                            value=nq / t_svc,
                            unit="queries/s",
                            baseline=nq / t_base,
                            baseline_name="bare FAISS, same index",
                            target=0.8,
                            note="JSON in/out + validation + store lookup of hits",
                        )
                    )

    asyncio.run(main())
    return results


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _load(url: str, queries: list[bytes], concurrency: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60.0, limits=limits) as client:
        stop_at = time.perf_counter() + seconds

        async def worker(w: int) -> None:
            nonlocal errors
            i = w
            while time.perf_counter() < stop_at:
                body = queries[i % len(queries)]
                i += concurrency
                t0 = time.perf_counter()
                r = await client.post(SEARCH, content=body, headers=JSON_HEADERS)
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    errors += 1

        # warm-up: one request per connection
        await asyncio.gather(*(client.get("/healthz") for _ in range(concurrency)))
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        wall = time.perf_counter() - t0
    lat = np.asarray(latencies)
    return {
        "rps": len(lat) / wall,
        "p50": float(np.percentile(lat, 50)),
        "p99": float(np.percentile(lat, 99)),
        "errors": errors,
        "n": len(lat),
    }


def _load_test(data_dir: Path, queries: np.ndarray, bare_qps: float) -> list[BenchResult]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAPFIX_")}
    gapfix = str(Path(sys.executable).parent / "gapfix")
    log = data_dir.parent / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [gapfix, "serve", "--model", "none", "--data-dir", str(data_dir),
             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    results: list[BenchResult] = []
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gapfix serve did not start: {log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        bodies = [
            _json({"query": {"vector": q.tolist(), "modality": "text"}, "k": K, "corrected": False})
            for q in queries
        ]
        for c in CONCURRENCY:
            m = asyncio.run(_load(url, bodies, c, LOAD_SECONDS))
            if m["errors"]:
                raise RuntimeError(f"{m['errors']} failed requests at concurrency {c}")
            results.append(
                BenchResult(
                    name=f"loopback load, vector search 100k x 512, concurrency {c}",
                    value=m["rps"],
                    unit="requests/s",
                    baseline=bare_qps,
                    baseline_name="bare FAISS 1-query searches/s, one thread",
                    note=f"p50 {m['p50'] * 1000:.1f} ms, p99 {m['p99'] * 1000:.1f} ms, "
                    f"{m['n']} requests; client and server share the machine",
                )
            )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return results


def run() -> list[BenchResult]:
    rng = np.random.default_rng(0)
    queries = _unit(rng.standard_normal((64, DIM), dtype=np.float32))
    tmp = Path(tempfile.mkdtemp(prefix="gapfix-bench-service-"))
    try:
        data_dir = tmp / "data"
        _populate(data_dir, rng)
        results = _in_process(data_dir, queries)
        bare_qps = results[0].baseline or 0.0
        results += _load_test(data_dir, queries, bare_qps)
        return results
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    for r in run():
        print(r.to_dict())
