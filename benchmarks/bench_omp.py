"""Small query batches: gapfix's index search (one OpenMP thread below ``SERIAL_BELOW_NQ``
queries a call) against bare FAISS with its default thread count, same index, same queries.

Flat 100k x 512 and HNSW 20k x 512 (M 32), clustered unit vectors, k=10, batches of 1, 4 and
16 queries, ``SECONDS`` of searching each. Run it while the machine is busy as a server's is
(``make bench`` runs other work; a loaded 2-core machine is where the thread team's wait cost
shows): ratio = gapfix q/s / bare FAISS q/s, target >= 1 (never slower).
"""

from __future__ import annotations

import os
import time

import faiss
import numpy as np

from benchmarks._common import BenchResult
from benchmarks.bench_load import clustered
from gapfix.store.index import VectorIndex
from gapfix.store.index_kinds import IndexParams

DIM = 512
SECONDS = float(os.environ.get("GAPFIX_BENCH_OMP_S", "2"))
SIZES = {"flat": 100_000, "hnsw": 20_000}
BATCHES = (1, 4, 16)


def _rate(search, queries: np.ndarray, nq: int) -> float:
    """Queries/s of ``search`` over ``queries`` in batches of ``nq`` for about SECONDS."""
    search(queries[:nq])
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < SECONDS:
        for i in range(0, len(queries), nq):
            search(queries[i : i + nq])
            done += len(queries[i : i + nq])
    return done / (time.perf_counter() - t0)


def run() -> list[BenchResult]:
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((256, DIM), dtype=np.float32)
    out = []
    for kind, n in SIZES.items():
        x = clustered(rng, n, centers)
        queries = clustered(rng, 256, centers)
        idx = VectorIndex(kind, DIM, IndexParams.from_dict(kind, {}))
        idx.add(x, np.arange(n, dtype=np.int64))
        bare = idx.index  # the same FAISS index, searched directly
        for nq in BATCHES:
            ours = _rate(lambda q, idx=idx: idx.search(q, 10), queries, nq)
            base = _rate(lambda q, bare=bare: bare.search(q, 10), queries, nq)
            out.append(
                BenchResult(
                    f"{kind} {n // 1000}k x {DIM} search, {nq} quer{'y' if nq == 1 else 'ies'}"
                    " a call (q/s)",
                    ours, "q/s", base, f"bare FAISS, {faiss.omp_get_max_threads()} threads",
                    1.0,
                )
            )  # fmt: skip
    return out
