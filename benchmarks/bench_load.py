"""Loopback load with ``wrk`` (a C load generator): single-vector searches of a flat 100k x 512
collection (clustered like CLIP data) through ``gapfix serve --model none``.

Concurrency 1, 32 and 128 for ``LOAD_S`` seconds each: queries/s, p50/p99 latency, and the
mean rows per FAISS call the search batcher formed (``gapfix_batch_rows``). Baseline: bare
FAISS (``IndexFlatIP``, same vectors, same machine, server stopped) searching the same queries
in batches of 32 in one process; target at concurrency 32: >= 0.8 of it. wrk and the server
share the machine. Queries/s counts answered searches only (non-2xx are reported apart); the
server runs with a 10 s queue budget so that throughput, not the overload guard, is measured.
Then overload: a server with the default 1 s budget held to one query per FAISS call, under 48
connections: p99 latency (429s included) and how many requests were refused. Skipped (with a note) when ``wrk`` is not installed
(``apt-get install -y wrk``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import faiss
import httpx
import numpy as np

from benchmarks._common import BenchResult
from benchmarks._server import serve
from benchmarks._wrk import run_wrk, write_lua
from gapfix.store import ItemIn, Store

N = 100_000
DIM = 512
K = 10
CLUSTERS = 256
CONCURRENCY = (1, 32, 128)
LOAD_S = float(os.environ.get("GAPFIX_BENCH_LOAD_S", "8"))
SEARCH = "/v1/collections/bench/search"
# throughput, not the overload guard: a slow shared machine would otherwise answer part of the
# c=32 load with 429 under the default 1 s queue budget
SERVER_ENV = {"GAPFIX_QUEUE_BUDGET_MS": "10000"}
# honest overload: a server held to one query per FAISS call, far more clients than it serves
OVERLOAD_ENV = {"GAPFIX_SEARCH_BATCH_ROWS": "1"}
OVERLOAD_CONNECTIONS = 48


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(rng: np.random.Generator, n: int, centers: np.ndarray) -> np.ndarray:
    """Unit vectors around random cluster centres (CLIP embeddings are far from isotropic)."""
    pick = rng.integers(0, len(centers), n)
    return _unit(centers[pick] + 0.6 * rng.standard_normal((n, DIM), dtype=np.float32) / 22.6)


def populate(
    data_dir: Path, x: np.ndarray, index: str = "flat", index_params: dict | None = None
) -> None:
    """Collection ``bench`` of ``index`` in a fresh store at ``data_dir``: row n is image ``in``."""
    with Store(data_dir, flush_interval=None) as store:
        coll = store.create_collection("bench", index=index, index_params=index_params)
        step = 10_000
        for start in range(0, len(x), step):
            coll.add(
                [ItemIn(f"i{start + j}", image=v) for j, v in enumerate(x[start : start + step])]
            )


def search_bodies(queries: np.ndarray) -> list[str]:
    """One single-vector ``POST .../search`` body (raw space, top ``K``) per query."""
    return [
        json.dumps(
            {"query": {"vector": q.tolist(), "modality": "text"}, "k": K, "corrected": False}
        )
        for q in queries
    ]


def _batch_rows(url: str) -> tuple[float, float]:
    """(sum, count) of the search batcher's rows per FAISS call so far."""
    text = httpx.get(url + "/metrics").text
    found = dict(re.findall(r'^gapfix_batch_rows_(sum|count)\{stage="search"\} (\S+)$', text, re.M))
    return float(found.get("sum", 0)), float(found.get("count", 0))


def _bare_faiss(x: np.ndarray, queries: np.ndarray, batch: int = 32, seconds: float = 4.0) -> float:
    index = faiss.IndexFlatIP(DIM)
    index.add(x)
    reps = np.concatenate([queries] * 4)
    index.search(reps[:batch], K)  # warm-up
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for start in range(0, len(reps), batch):
            index.search(reps[start : start + batch], K)
            done += batch
    return done / (time.perf_counter() - t0)


def run() -> list[BenchResult]:
    if shutil.which("wrk") is None:
        print("  wrk not installed (apt-get install -y wrk): loopback load benchmark skipped")
        return []
    rng = np.random.default_rng(0)
    centers = _unit(rng.standard_normal((CLUSTERS, DIM), dtype=np.float32))
    x = clustered(rng, N, centers)
    queries = clustered(rng, 64, centers)
    tmp = Path(tempfile.mkdtemp(prefix="gapfix-bench-load-"))
    try:
        data_dir = tmp / "data"
        populate(data_dir, x)
        script = tmp / "search.lua"
        write_lua(script, search_bodies(queries))
        measured = {}
        with serve(data_dir, env=SERVER_ENV) as (url, _):
            # warm-up: FAISS, connections, the batcher's cost model
            run_wrk(url + SEARCH, script, 4, 1.0)
            for c in CONCURRENCY:
                before = _batch_rows(url)
                measured[c] = run_wrk(url + SEARCH, script, c, LOAD_S)
                after = _batch_rows(url)
                calls = after[1] - before[1]
                measured[c]["rows"] = (after[0] - before[0]) / calls if calls else 0.0
            # overload: default queue budget, one query per FAISS call, 48 connections
        with serve(data_dir, env=OVERLOAD_ENV) as (url, _):
            run_wrk(url + SEARCH, script, 4, 1.0)
            overload = run_wrk(url + SEARCH, script, OVERLOAD_CONNECTIONS, LOAD_S)
        bare = _bare_faiss(x, queries)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results = []
    for c, m in measured.items():
        results.append(
            BenchResult(
                name=f"wrk loopback, flat {N // 1000}k x {DIM} search, concurrency {c}",
                value=m["qps"],
                unit="queries/s",
                baseline=bare,
                baseline_name="bare FAISS, batches of 32, one process",
                target=0.8 if c == 32 else None,
                note=f"p50 {m['p50']:.1f} ms, p99 {m['p99']:.1f} ms, "
                f"{m['rows']:.1f} rows per FAISS call, {m['non2xx']} non-2xx"
                + (f", socket errors {m['socket_errors']}" if m["socket_errors"] else ""),
            )
        )
    m = overload
    results.append(
        BenchResult(
            name=f"wrk overload: 1 query per FAISS call, {OVERLOAD_CONNECTIONS} connections, "
            "default 1 s queue budget",
            value=m["p99"] / 1000,
            unit="s p99",
            note=f"{m['qps']:.1f} answered q/s, {m['non2xx']} refused (429), p50 "
            f"{m['p50']:.1f} ms (answered and refused together); target p99 <= 2 s",
        )
    )
    return results


if __name__ == "__main__":
    for r in run():
        print(r.to_dict())
