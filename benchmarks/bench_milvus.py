"""The service on the Milvus backend vs bare pymilvus on the same Milvus collection.

One Milvus Lite server that the benchmark starts (`tests/milvus_server.py`: the gRPC server a
Milvus cluster speaks, so pymilvus takes its real code path). The service runs in-process
(httpx ``ASGITransport``, the app's lifespan run by hand, ``GAPFIX_STORE=milvus://...``); its
request bodies are encoded once, up front.

1. Ingest: ``POST .../items`` of N vectors (half images, half texts) in batches of 1,000 into
   a fresh gapfix collection, vs ``MilvusClient.insert`` of the very same rows (built by
   gapfix's own row builder outside the clock) into another collection of the same schema and
   indexes, made before the clock starts. The service's extra work: JSON, validation, the
   existing-id check (a ``get`` of the batch's ids), the centroid sums and the meta-row upsert.
2. Search: ``POST .../search`` (raw space, k=10) at batch 1 (one request per query) and batch 64
   (one request) vs ``MilvusClient.search`` on the same collection and field with the same
   output fields the service returns (modality, metadata, text, has_thumbnail). Target: >= 0.8.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from benchmarks._common import BenchResult

ROOT = Path(__file__).resolve().parents[1]
N = int(os.environ.get("GAPFIX_BENCH_MILVUS_N", "20000"))
DIM = 512
BATCH = 1000
K = 10
BATCH_1_QUERIES = 30
ROUNDS = 5
JSON_HEADERS = {"content-type": "application/json"}


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _items(x: np.ndarray, start: int) -> list[dict]:
    return [
        {"id": f"i{start + n}", "vector": v.tolist(), "modality": "image", "metadata": {"n": n}}
        if (start + n) % 2 == 0
        else {
            "id": f"t{start + n}",
            "vector": v.tolist(),
            "modality": "text",
            "text": f"caption {start + n}",
        }
        for n, v in enumerate(x)
    ]


def _bare_rows(x: np.ndarray) -> list[list[dict]]:
    """The rows the service writes for the same items, prebuilt per batch (gapfix's builder)."""
    from gapfix.store import ItemIn
    from gapfix.store.items import validate_batch
    from gapfix.store.milvus import rows as R

    out = []
    for start in range(0, len(x), BATCH):
        items = [
            ItemIn(
                it["id"],
                **{it["modality"]: np.asarray(it["vector"], np.float32)},
                metadata=it.get("metadata") or {},
                caption=it.get("text"),
            )
            for it in _items(x[start : start + BATCH], start)
        ]
        batch = validate_batch(items, DIM)
        vectors, _ = R.slot_vectors(R.Components.from_batch(batch), {})  # no transform
        out.append(R.batch_rows(batch, vectors, time.time()))
    return out


def _best_pair(fn_a, fn_b, rounds: int = ROUNDS) -> tuple[float, float]:
    """Best times of two callables, timed alternately after one warm-up each."""
    best_a = best_b = float("inf")
    fn_a(), fn_b()
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn_a()
        best_a = min(best_a, time.perf_counter() - t0)
        t0 = time.perf_counter()
        fn_b()
        best_b = min(best_b, time.perf_counter() - t0)
    return best_a, best_b


def _run(store: str, uri: str, data_dir: Path) -> list[BenchResult]:
    from pymilvus import MilvusClient

    from gapfix.store.milvus.rows import HIT_FIELDS
    from service.app import create_app
    from service.settings import Settings

    rng = np.random.default_rng(0)
    x = _unit(rng.standard_normal((N, DIM), dtype=np.float32))
    queries = _unit(rng.standard_normal((64, DIM), dtype=np.float32))
    bodies_items = [
        json.dumps({"items": _items(x[s : s + BATCH], s)}).encode() for s in range(0, N, BATCH)
    ]
    bare_rows = _bare_rows(x)
    bodies_1 = [
        json.dumps(
            {"query": {"vector": q.tolist(), "modality": "text"}, "k": K, "corrected": False}
        ).encode()
        for q in queries[:BATCH_1_QUERIES]
    ]
    body_64 = json.dumps(
        {
            "queries": [{"vector": q.tolist(), "modality": "text"} for q in queries],
            "k": K,
            "corrected": False,
        }
    ).encode()
    client = MilvusClient(uri=uri)
    settings = Settings(_env_file=None, model="none", data_dir=data_dir, store=store)  # type: ignore[call-arg]
    app = create_app(settings)
    results: list[BenchResult] = []

    async def main() -> None:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://b") as http:
                loop = asyncio.get_running_loop()

                def sync(coro_fn):
                    return lambda: asyncio.run_coroutine_threadsafe(coro_fn(), loop).result()

                async def create(name: str) -> None:
                    r = await http.post("/v1/collections", json={"name": name, "dim": DIM})
                    assert r.status_code == 201, r.text

                # ingest: the service into `svc`, bare inserts into `bare` (same schema)
                await create("svc")
                await create("bare")
                await asyncio.to_thread(client.list_collections)  # channel up

                async def ingest() -> None:
                    for body in bodies_items:
                        r = await http.post(
                            "/v1/collections/svc/items", content=body, headers=JSON_HEADERS
                        )
                        assert r.status_code == 200, r.text

                def bare_insert() -> float:
                    seconds = 0.0
                    for rows in bare_rows:
                        t0 = time.perf_counter()
                        client.insert("bare", rows)
                        seconds += time.perf_counter() - t0
                    return seconds

                t_bare = await asyncio.to_thread(bare_insert)
                t0 = time.perf_counter()
                await ingest()
                t_svc = time.perf_counter() - t0
                results.append(
                    BenchResult(
                        f"HTTP ingest on Milvus, {N} x {DIM} in batches of {BATCH}",
                        N / t_svc,
                        "items/s",
                        baseline=N / t_bare,
                        baseline_name="MilvusClient.insert, prebuilt rows, same schema",
                        target=0.8,
                        note="JSON + validation + id check + sums + meta upsert; Milvus Lite",
                    )
                )

                async def svc_b1() -> None:
                    for body in bodies_1:
                        r = await http.post(
                            "/v1/collections/svc/search", content=body, headers=JSON_HEADERS
                        )
                        assert r.status_code == 200 and len(r.json()["results"]) == K

                async def svc_b64() -> None:
                    r = await http.post(
                        "/v1/collections/svc/search", content=body_64, headers=JSON_HEADERS
                    )
                    assert r.status_code == 200 and len(r.json()["batches"]) == len(queries)

                def search(q: np.ndarray) -> None:
                    res = client.search(
                        "svc",
                        data=q.tolist(),
                        anns_field="raw",
                        limit=K,
                        output_fields=HIT_FIELDS,
                        search_params={"metric_type": "IP", "params": {}},
                    )
                    assert len(res[0]) == K

                def bare_b1() -> None:
                    for q in queries[:BATCH_1_QUERIES]:
                        search(q[None, :])

                def bare_b64() -> None:
                    search(queries)

                for name, svc, base, nq in (
                    ("batch 1", svc_b1, bare_b1, BATCH_1_QUERIES),
                    ("batch 64", svc_b64, bare_b64, len(queries)),
                ):
                    t_s, t_b = await asyncio.to_thread(_best_pair, sync(svc), base)
                    results.append(
                        BenchResult(
                            f"HTTP search on Milvus, flat {N} x {DIM}, {name}",
                            nq / t_s,
                            "queries/s",
                            baseline=nq / t_b,
                            baseline_name="MilvusClient.search, same collection and fields",
                            target=0.8,
                            note="JSON in/out + validation + meta view; Milvus Lite on loopback",
                        )
                    )

    try:
        asyncio.run(main())
    finally:
        client.close()
    return results


def run() -> list[BenchResult]:
    sys.path.insert(0, str(ROOT / "tests"))
    from milvus_server import start_milvus_lite, stop, store_uri

    tmp = Path(tempfile.mkdtemp(prefix="gapfix-bench-milvus-"))
    proc, uri = start_milvus_lite(tmp / "milvus")
    try:
        return _run(store_uri(uri), uri, tmp / "data")
    finally:
        stop(proc)
