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
import subprocess
import tempfile
import time
from pathlib import Path

import faiss
import httpx
import numpy as np

from benchmarks._common import BenchResult
from benchmarks._server import serve
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


def _populate(data_dir: Path, x: np.ndarray) -> None:
    with Store(data_dir, flush_interval=None) as store:
        coll = store.create_collection("bench", index="flat")
        step = 10_000
        for start in range(0, len(x), step):
            coll.add(
                [ItemIn(f"i{start + j}", image=v) for j, v in enumerate(x[start : start + step])]
            )


def _lua(path: Path, queries: np.ndarray) -> None:
    """A wrk script cycling through the query bodies."""
    bodies = [
        json.dumps(
            {"query": {"vector": q.tolist(), "modality": "text"}, "k": K, "corrected": False}
        )
        for q in queries
    ]
    lines = [
        'wrk.method = "POST"',
        'wrk.headers["Content-Type"] = "application/json"',
        "bodies = {",
    ]
    lines += [f"  {json.dumps(b)}," for b in bodies]
    lines += [
        "}",
        "i = 0",
        "request = function()",
        "  i = i % #bodies + 1",
        "  return wrk.format(nil, nil, nil, bodies[i])",
        "end",
    ]
    path.write_text("\n".join(lines) + "\n")


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def _wrk(url: str, script: Path, connections: int, seconds: float) -> dict:
    threads = 1 if connections == 1 else 2  # a 30 s timeout: queued requests are not errors
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "30s",
         "-s", str(script), url + SEARCH],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.M))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)$", out, re.M)
    done = re.search(r"(\d+) requests in ([\d.]+)(m|s),", out)
    total, took = int(done.group(1)), float(done.group(2)) * (60 if done.group(3) == "m" else 1)
    non2xx = int(bad.group(1)) if bad else 0
    return {
        "qps": (total - non2xx) / took,  # answered searches only
        "p50": _ms(pct["50"]),
        "p99": _ms(pct["99"]),
        "non2xx": non2xx,
        "socket_errors": errors.group(1) if errors else "",
    }


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
        _populate(data_dir, x)
        script = tmp / "search.lua"
        _lua(script, queries)
        measured = {}
        with serve(data_dir, env=SERVER_ENV) as (url, _):
            _wrk(url, script, 4, 1.0)  # warm-up: FAISS, connections, the batcher's cost model
            for c in CONCURRENCY:
                before = _batch_rows(url)
                measured[c] = _wrk(url, script, c, LOAD_S)
                after = _batch_rows(url)
                calls = after[1] - before[1]
                measured[c]["rows"] = (after[0] - before[0]) / calls if calls else 0.0
            # overload: default queue budget, one query per FAISS call, 48 connections
        with serve(data_dir, env=OVERLOAD_ENV) as (url, _):
            _wrk(url, script, 4, 1.0)
            overload = _wrk(url, script, OVERLOAD_CONNECTIONS, LOAD_S)
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
