"""Opt-in scale benchmark: many CLIP-like vectors through the real embedded store.

``python -m benchmarks.scale --n 10000000 --kinds hnsw,ivfpq`` (not a ``bench_*`` module, so
``make bench`` does not run it). For each index kind, on ``--n`` synthetic 512-d unit vectors
(two modality cones with a gap, many clusters; generated chunk by chunk):

- ingest rate through ``Store.create_collection(...).add(...)`` in batches, and peak RSS;
- recall@10 of the default settings against exact search (``faiss.knn`` over the regenerated
  chunks) on held-out text queries, and single-query search q/s at that recall;
- restart-to-ready: close the Store, reopen it, answer the first search;
- a transform switch (fit ``centering`` + background re-correct/rebuild) while a thread keeps
  searching: its duration, the searches answered and the errors during it.

Prints one table and writes ``bench-results/scale.json``. An ``--n`` whose estimated peak
memory exceeds this machine's memory (or whose data would not fit on the disk) is refused
with one line and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from benchmarks._scale_data import (
    CHUNK,
    ClipLike,
    RssPeak,
    estimate_peak_bytes,
    exact_topk,
    index_bytes_per_vector,
    machine_memory,
    recall_at_k,
    rss_bytes,
)

DIM = 512
KINDS = ("flat", "hnsw", "ivfpq")
GIB = 2**30
SQLITE_BYTES_PER_ROW = 4_100  # measured: items.sqlite of 100k single-vector 512-d items, 0.38 GiB


class _Args(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (not argparse's usage block)
        print(f"scale: {message}", file=sys.stderr)
        raise SystemExit(2)


def _parse(argv: list[str]) -> argparse.Namespace:
    p = _Args(prog="python -m benchmarks.scale", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000, help="vectors per collection")
    p.add_argument("--kinds", default="hnsw,ivfpq", help="comma-separated index kinds")
    p.add_argument("--queries", type=int, default=200, help="held-out queries for recall/q/s")
    p.add_argument("--batch", type=int, default=5_000, help="items per Store add() call")
    p.add_argument("--dir", default=None, help="where the temporary data dir goes")
    p.add_argument("--out", default="bench-results/scale.json")
    a = p.parse_args(argv)
    kinds = [k.strip() for k in a.kinds.split(",") if k.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        p.error(f"--kinds must name some of {', '.join(KINDS)}; got {a.kinds!r}")
    if a.n < 1_000:
        p.error(f"--n must be at least 1000, got {a.n}")
    if not 1 <= a.queries <= 10_000 or not 1 <= a.batch <= 100_000:
        p.error("--queries must be in [1, 10000] and --batch in [1, 100000]")
    a.kinds = kinds
    return a


def _refusal(a: argparse.Namespace, root: Path) -> str | None:
    """Why this run cannot fit this machine (memory, then disk), or None."""
    mem = machine_memory()
    for kind in a.kinds:
        need, phase = estimate_peak_bytes(a.n, kind, DIM)
        if need > mem:
            return (
                f"scale: --n {a.n} with {kind} needs an estimated {need / GIB:.1f} GiB of memory "
                f"(peak in the {phase} phase), more than this machine's {mem / GIB:.1f} GiB"
            )
    per_row = SQLITE_BYTES_PER_ROW + max(index_bytes_per_vector(k, DIM) for k in a.kinds)
    disk = a.n * per_row * 1.1  # + the WAL
    free = shutil.disk_usage(root).free
    if disk > free:
        return (
            f"scale: --n {a.n} needs an estimated {disk / GIB:.1f} GiB of disk under {root}, "
            f"more than the {free / GIB:.1f} GiB free"
        )
    return None


def _ingest(coll: Any, data: ClipLike, batch: int) -> None:
    from gapfix.store.items import ItemIn

    for start, x in data.chunks():
        for b in range(0, len(x), batch):
            part = x[b : b + batch]
            items = []
            for j, row in enumerate(part, start + b):
                if j & 1:
                    items.append(ItemIn(id=str(j), text=row))
                else:
                    items.append(ItemIn(id=str(j), image=row))
            coll.add(items)


def _search_ids(coll: Any, q: np.ndarray, corrected: bool = True) -> list[list[int]]:
    hits = coll.search(q, "text", k=10, corrected=corrected).hits
    return [[int(h.id) for h in row] for row in hits]


def _single_qps(coll: Any, q: np.ndarray, min_s: float = 2.0) -> float:
    """Single-query searches per second over the query sample (at least ``min_s`` seconds)."""
    done, t0 = 0, time.perf_counter()
    while True:
        for row in q:
            coll.search(row, "text", k=10)
            done += 1
        dt = time.perf_counter() - t0
        if dt >= min_s:
            return done / dt


def _switch(coll: Any, q: np.ndarray) -> dict[str, Any]:
    """Fit centering and rebuild in the background while one thread keeps searching."""
    stop = threading.Event()
    answered, errors, lat = [0], [0], []

    def searcher() -> None:
        i = 0
        while not stop.is_set():
            t = time.perf_counter()
            try:
                coll.search(q[i % len(q)], "text", k=10)
                answered[0] += 1
                lat.append(time.perf_counter() - t)
            except Exception:
                errors[0] += 1
            i += 1

    th = threading.Thread(target=searcher, daemon=True)
    th.start()
    t0 = time.perf_counter()
    coll.fit_transform("centering", wait_seconds=0)
    ok = coll.wait_transform()
    dt = time.perf_counter() - t0
    stop.set()
    th.join()
    return {
        "switch_s": dt,
        "switch_ok": bool(ok) and coll.transform_status["status"] == "active",
        "switch_searches": answered[0],
        "switch_errors": errors[0],
        "switch_search_p99_ms": float(np.percentile(lat, 99) * 1e3) if lat else None,
    }


def run_kind(kind: str, a: argparse.Namespace, root: Path, rss: RssPeak) -> dict[str, Any]:
    """Every measurement of one index kind, in a fresh data dir that is removed afterwards."""
    from gapfix.store import Store

    data = ClipLike(a.n, DIM)
    q = data.queries(a.queries)
    truth = exact_topk(data, q, 10)
    ddir = Path(tempfile.mkdtemp(prefix=f"gapfix-scale-{kind}-", dir=root))
    row: dict[str, Any] = {"kind": kind, "n": a.n, "dim": DIM}
    try:
        base = rss_bytes()
        row["start_rss_gib"] = base / GIB
        rss.reset()
        store = Store(ddir, use_gpu=False, flush_interval=None)
        coll = store.create_collection("scale", index=kind, dim=DIM)
        t0 = time.perf_counter()
        _ingest(coll, data, a.batch)
        row["ingest_s"] = time.perf_counter() - t0
        row["ingest_per_s"] = a.n / row["ingest_s"]
        row["ingest_peak_rss_gib"] = rss.peak() / GIB
        row["rss_per_vector_b"] = (rss_bytes() - base) / a.n

        t0 = time.perf_counter()
        store.close()
        row["close_s"] = time.perf_counter() - t0
        idx_files = list((ddir / "collections" / "scale" / "indexes").glob("raw*.faiss"))
        row["index_file_per_vector_b"] = sum(p.stat().st_size for p in idx_files) / a.n
        row["disk_gib"] = sum(p.stat().st_size for p in ddir.rglob("*") if p.is_file()) / GIB
        t0 = time.perf_counter()
        store = Store(ddir, use_gpu=False, flush_interval=None)
        coll = store.get("scale")
        coll.search(q[0], "text", k=10)
        row["restart_ready_s"] = time.perf_counter() - t0

        row["recall_at_10"] = recall_at_k(_search_ids(coll, q), truth)
        row["search_qps"] = _single_qps(coll, q)
        rss.reset()
        row.update(_switch(coll, q))
        row["switch_peak_rss_gib"] = rss.peak() / GIB
        row["peak_rss_gib"] = max(row["ingest_peak_rss_gib"], row["switch_peak_rss_gib"])
        row["estimated_peak_gib"] = estimate_peak_bytes(a.n, kind, DIM)[0] / GIB
        store.close()
    finally:
        shutil.rmtree(ddir, ignore_errors=True)
    return row


def _table(rows: list[dict[str, Any]]) -> Table:
    t = Table(title="gapfix scale benchmark (embedded store, 512-d, measured in this run)")
    cols = (
        ("kind", "kind", "{}"),
        ("n", "n", "{:,}"),
        ("ingest/s", "ingest_per_s", "{:,.0f}"),
        ("peak RSS GiB", "peak_rss_gib", "{:.2f}"),
        ("RSS B/vec", "rss_per_vector_b", "{:,.0f}"),
        ("index B/vec", "index_file_per_vector_b", "{:,.0f}"),
        ("recall@10", "recall_at_10", "{:.3f}"),
        ("search q/s", "search_qps", "{:,.0f}"),
        ("restart s", "restart_ready_s", "{:.2f}"),
        ("switch s", "switch_s", "{:.1f}"),
        ("searches in switch", "switch_searches", "{:,}"),
        ("errors", "switch_errors", "{}"),
    )
    for head, _, _ in cols:
        t.add_column(head)
    for r in rows:
        t.add_row(*(fmt.format(r[key]) for _, key, fmt in cols))
    return t


def main(argv: list[str] | None = None) -> int:
    a = _parse(sys.argv[1:] if argv is None else argv)
    root = Path(a.dir or tempfile.gettempdir())
    refused = _refusal(a, root)
    if refused:
        print(refused, file=sys.stderr)
        return 2
    console = Console(width=200)
    rss = RssPeak()
    rows = []
    try:
        for kind in a.kinds:
            console.print(f"[bold]scale: {kind}, n={a.n:,}[/bold]")
            rows.append(run_kind(kind, a, root, rss))
    finally:
        rss.close()
    console.print(_table(rows))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine_memory_gib": machine_memory() / GIB, "chunk_rows": CHUNK}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
