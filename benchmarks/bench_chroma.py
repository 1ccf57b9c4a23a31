"""gapfix ``hnsw`` against Chroma 1.5.9 (``chroma run``, HNSW) under the same ``wrk`` load.

Same vectors on both sides: bench_load's clustered 100k x 512 unit vectors
(``GAPFIX_BENCH_CHROMA_N`` to change the size), the same 256 single-vector queries, k=10.

- Chroma: ``chroma run --path DIR --host 127.0.0.1 --port P`` from its own venv at
  ``.venv-chroma/`` (created with ``pip install chromadb==1.5.9`` on first use, so Chroma
  cannot disturb gapfix's pins; skipped with a note when that install fails), loaded by
  ``_chroma_load.py`` (the chromadb client, ``ip`` space, Chroma's HNSW defaults), queried on
  ``POST /api/v2/tenants/default_tenant/databases/default_database/collections/{id}/query``
  with ``{"query_embeddings": [q], "n_results": 10}`` (Chroma's default ``include``: distances,
  documents, metadatas).
- gapfix: ``gapfix serve --model none`` on a collection of index ``hnsw`` (default ``hnsw_m``
  and ``ef_construction``), ``POST /v1/collections/bench/search`` with k=10 (hits carry id,
  score, modality, metadata, text).

Equal recall: recall@10 of both against exact search (``faiss.knn``) on 200 of the queries,
measured through each server's HTTP API. ``GAPFIX_BENCH_CHROMA_EF=auto`` (default) gives gapfix
the smallest ``ef_search`` of a ladder whose recall, on a bare FAISS HNSW of the same vectors
and settings, reaches Chroma's measured recall; an integer fixes it (``64`` is gapfix's
default). Both measured recalls are reported beside the throughput.

Then wrk at concurrency 1, 32 and 128 for ``GAPFIX_BENCH_LOAD_S`` seconds each, one server at a
time (wrk shares the machine). Targets: gapfix q/s >= 1.5x Chroma's at c=1 and c=32, and
gapfix's p99 at c=32 no worse than Chroma's (ratio Chroma/gapfix >= 1).

1M x 512 (``GAPFIX_BENCH_CHROMA_N=1000000``): ~2 GiB of vectors in this process (plus a 2 GiB
``.npy`` in the temporary directory for the Chroma loader), ~2.3 GiB for each server's HNSW
(one server at a time), and three HNSW builds of 1M vectors: Chroma's (its loader), gapfix's
(``Store.add``) and the bare FAISS one behind ``ef_search=auto`` (give an integer to skip it).
At 100k on the shared 2-core development machine they took 38-44 s, 21 s and ~20 s, the whole
run 136 s; HNSW builds grow a little faster than n, so expect 25-40 min at 1M.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import faiss
import httpx
import numpy as np

from benchmarks._common import BenchResult
from benchmarks._scale_data import recall_at_k
from benchmarks._server import free_port, process_server, serve
from benchmarks._wrk import run_wrk, write_lua
from benchmarks.bench_load import (
    CLUSTERS,
    CONCURRENCY,
    DIM,
    LOAD_S,
    SEARCH,
    SERVER_ENV,
    K,
    _unit,
    clustered,
    populate,
    search_bodies,
)
from gapfix.store.index_kinds import IndexParams

ROOT = Path(__file__).resolve().parents[1]
N = int(os.environ.get("GAPFIX_BENCH_CHROMA_N", "100000"))
EF = os.environ.get("GAPFIX_BENCH_CHROMA_EF", "auto")
CHROMA_VERSION = "1.5.9"
CHROMA_VENV = ROOT / ".venv-chroma"
LOADER = Path(__file__).with_name("_chroma_load.py")
QUERY_ROUTE = "/api/v2/tenants/default_tenant/databases/default_database/collections/{}/query"
QUERIES = 256
RECALL_QUERIES = 200
EF_LADDER = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
TARGET_QPS = 1.5  # gapfix / Chroma at c=1 and c=32
CHROMA = f"Chroma {CHROMA_VERSION} (chroma run, HNSW ip, same vectors)"


def chroma_bodies(queries: np.ndarray) -> list[str]:
    """One Chroma v2 query body (top ``K``, Chroma's default ``include``) per query."""
    return [json.dumps({"query_embeddings": [q.tolist()], "n_results": K}) for q in queries]


def gapfix_rows(answer: dict) -> list[int]:
    """Row numbers of a gapfix single-query search answer (ids ``i<n>``)."""
    return [int(hit["id"][1:]) for hit in answer["results"]]


def chroma_rows(answer: dict) -> list[int]:
    """Row numbers of a Chroma query answer for one query embedding (ids ``i<n>``)."""
    return [int(i[1:]) for i in answer["ids"][0]]


def pick_ef(recalls: dict[int, float], target: float) -> int:
    """The smallest ``ef_search`` whose recall reaches ``target`` (else the best one)."""
    reaching = [ef for ef, r in sorted(recalls.items()) if r >= target]
    return reaching[0] if reaching else max(recalls, key=lambda ef: (recalls[ef], -ef))


def bare_hnsw_recalls(
    x: np.ndarray, queries: np.ndarray, truth: np.ndarray, ladder: tuple[int, ...] = EF_LADDER
) -> dict[int, float]:
    """Recall@k per ``ef_search`` of a bare FAISS HNSW built with gapfix's default settings."""
    params = IndexParams()
    index = faiss.IndexHNSWFlat(x.shape[1], params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = params.ef_construction
    index.add(x)
    out = {}
    for ef in ladder:
        search = faiss.SearchParametersHNSW()
        search.efSearch = max(ef, truth.shape[1])
        _, found = index.search(queries, truth.shape[1], params=search)
        out[ef] = recall_at_k(found.tolist(), truth)
    return out


def http_recall(
    url: str,
    bodies: list[str],
    truth: np.ndarray,
    rows: Callable[[dict], list[int]],
    transport: httpx.BaseTransport | None = None,
) -> float:
    """Recall@k of one POST per body (``rows`` reads the hits) against ``truth``."""
    found = []
    headers = {"content-type": "application/json"}
    with httpx.Client(timeout=60, headers=headers, transport=transport) as client:
        for body in bodies:
            r = client.post(url, content=body)
            r.raise_for_status()
            found.append(rows(r.json()))
    return recall_at_k(found, truth)


def chroma_python(venv: Path = CHROMA_VENV) -> tuple[Path | None, str]:
    """The Chroma venv's python (created, chromadb installed, on first use), or None and why."""
    py = venv / "bin" / "python"
    check = f"import chromadb, sys; sys.exit(chromadb.__version__ != {CHROMA_VERSION!r})"
    probe = [str(py), "-c", check]
    if py.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return py, ""
    print(f"  creating {venv} (pip install chromadb=={CHROMA_VERSION}; a few minutes, once)")
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(py), "-m", "pip", "install", "-q", f"chromadb=={CHROMA_VERSION}"],
    ]
    try:
        for cmd in steps:
            subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.SubprocessError) as e:
        shutil.rmtree(venv, ignore_errors=True)  # the next run starts afresh
        lines = (getattr(e, "stderr", None) or str(e)).strip().splitlines()
        last = lines[-1] if lines else type(e).__name__
        return None, f"installing chromadb=={CHROMA_VERSION} into {venv} failed ({last})"
    if subprocess.run(probe, capture_output=True).returncode != 0:
        return None, f"chromadb=={CHROMA_VERSION} does not import from {venv}"
    return py, ""


@contextlib.contextmanager
def chroma_server(py: Path, path: Path) -> Iterator[int]:
    """``chroma run --path`` on a free loopback port (Chroma's own venv); yields the port."""
    port = free_port()
    cmd = [str(py.parent / "chroma"), "run", "--path", str(path), "--host", "127.0.0.1",
           "--port", str(port)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("GAPFIX_")}
    env["ANONYMIZED_TELEMETRY"] = "False"
    ready = f"http://127.0.0.1:{port}/api/v2/heartbeat"
    with process_server(cmd, ready, path.parent / f"chroma-{port}.log", env, "chroma run"):
        yield port


def load_chroma(py: Path, port: int, vectors: Path) -> dict:
    """Run ``_chroma_load.py`` with the Chroma venv; its JSON line (collection id, count...)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["ANONYMIZED_TELEMETRY"] = "False"
    cmd = [str(py), str(LOADER), "--port", str(port), "--vectors", str(vectors)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"loading Chroma failed: {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def under_load(url: str, script: Path) -> dict[int, dict]:
    """A 1 s warm-up, then wrk at each of ``CONCURRENCY`` for ``LOAD_S`` seconds."""
    run_wrk(url, script, 4, 1.0)
    return {c: run_wrk(url, script, c, LOAD_S) for c in CONCURRENCY}


def _lat(m: dict) -> str:
    return f"p50 {m['p50']:.1f} ms, p99 {m['p99']:.1f} ms" + (
        f", {m['non2xx']} non-2xx" if m["non2xx"] else ""
    )


def compare(
    gapfix: dict[int, dict], chroma: dict[int, dict], recall: tuple[float, float], ef: int, n: int
) -> list[BenchResult]:
    """BenchResults: q/s gapfix vs Chroma per concurrency, the c=32 p99 ratio, recall@10."""
    size = f"hnsw {n // 1000}k x {DIM}"
    out = [
        BenchResult(
            name=f"wrk loopback, {size}, gapfix vs Chroma, concurrency {c}",
            value=g["qps"],
            unit="queries/s",
            baseline=chroma[c]["qps"],
            baseline_name=CHROMA,
            target=TARGET_QPS if c in (1, 32) else None,
            note=f"gapfix {_lat(g)}; Chroma {_lat(chroma[c])}",
        )
        for c, g in gapfix.items()
    ]
    if 32 in gapfix:
        out.append(
            BenchResult(
                name=f"wrk loopback, {size}, p99 at concurrency 32: Chroma's over gapfix's",
                value=chroma[32]["p99"],
                unit="ms",
                baseline=gapfix[32]["p99"],
                baseline_name="gapfix p99",
                target=1.0,
                note="ratio >= 1: gapfix's p99 no worse than Chroma's",
            )
        )
    out.append(
        BenchResult(
            name=f"recall@10 vs exact, {size}, {RECALL_QUERIES} queries over HTTP",
            value=recall[0],
            unit="recall",
            baseline=recall[1],
            baseline_name=f"Chroma {CHROMA_VERSION} (its HNSW defaults)",
            note=f"gapfix ef_search={ef} (default {IndexParams().ef_search})",
        )
    )
    return out


def run() -> list[BenchResult]:
    if shutil.which("wrk") is None:
        print("  wrk not installed (apt-get install -y wrk): Chroma comparison skipped")
        return []
    py, why = chroma_python()
    if py is None:
        print(f"  {why}: Chroma comparison skipped")
        return []
    rng = np.random.default_rng(0)
    centers = _unit(rng.standard_normal((CLUSTERS, DIM), dtype=np.float32))
    x = clustered(rng, N, centers)
    queries = clustered(rng, QUERIES, centers)
    probe = queries[:RECALL_QUERIES]
    _, truth = faiss.knn(probe, x, K, metric=faiss.METRIC_INNER_PRODUCT)
    tmp = Path(tempfile.mkdtemp(prefix="gapfix-bench-chroma-"))
    try:
        np.save(tmp / "x.npy", x)
        script = tmp / "chroma.lua"
        write_lua(script, chroma_bodies(queries))
        with chroma_server(py, tmp / "chroma") as port:
            t0 = time.perf_counter()
            loaded = load_chroma(py, port, tmp / "x.npy")
            print(f"  Chroma: {loaded['count']} vectors loaded in {time.perf_counter() - t0:.1f} s")
            url = f"http://127.0.0.1:{port}" + QUERY_ROUTE.format(loaded["id"])
            chroma_recall = http_recall(url, chroma_bodies(probe), truth, chroma_rows)
            chroma = under_load(url, script)
        (tmp / "x.npy").unlink()
        ef = pick_ef(bare_hnsw_recalls(x, probe, truth), chroma_recall) if EF == "auto" else int(EF)
        t0 = time.perf_counter()
        populate(tmp / "data", x, "hnsw", {"ef_search": ef})
        print(f"  gapfix: {N} vectors indexed (hnsw) in {time.perf_counter() - t0:.1f} s")
        write_lua(script, search_bodies(queries))
        with serve(tmp / "data", env=SERVER_ENV) as (url, _):
            gapfix_recall = http_recall(url + SEARCH, search_bodies(probe), truth, gapfix_rows)
            gapfix = under_load(url + SEARCH, script)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return compare(gapfix, chroma, (gapfix_recall, chroma_recall), ef, N)


if __name__ == "__main__":
    for r in run():
        print(r.to_dict())
