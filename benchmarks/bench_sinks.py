"""`gapfix correct --sink milvus://...` throughput vs bare pymilvus upserts of the same vectors.

Both write into a fresh collection of the same schema on one Milvus Lite server that the
benchmark starts (`tests/milvus_server.py`: the gRPC server a Milvus cluster speaks, so pymilvus
takes its real code path). The bare loop gets its rows for free: raw and corrected vectors
already computed and converted to lists, metadata parsed, each batch built before its clock
starts; only its ``MilvusClient.upsert`` calls are timed. The job does everything
itself: reads the parquet shards, corrects them, builds the rows, upserts, records each shard
in its manifest. Both collections exist (empty) before the clocks start. Target: job / bare
>= 0.8.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import BenchResult

ROOT = Path(__file__).resolve().parents[1]
N_PAIRS = int(os.environ.get("GAPFIX_BENCH_SINK_PAIRS", "5000"))  # rows = 2 x pairs
SHARD = 1000  # pairs per shard
BATCH = 1000  # rows per upsert, both sides
ROUNDS = 3


def _vectors(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` image/text pairs: the real COCO embeddings, tiled with a little noise."""
    with np.load(ROOT / "tests" / "fixtures" / "coco_val2017_clip_vitb16_dev250.npz") as d:
        img, txt = d["image"], d["text"]
    rng = np.random.default_rng(0)
    reps = -(-n // len(img))

    def tile(x: np.ndarray) -> np.ndarray:
        y = np.tile(x, (reps, 1))[:n] + 0.01 * rng.standard_normal((n, x.shape[1]))
        return (y / np.linalg.norm(y, axis=1, keepdims=True)).astype(np.float32)

    return tile(img), tile(txt)


def _create(uri: str, coll: str, dim: int) -> None:
    """The sink's collection (schema + indexes), made before either side's clock starts:
    creating the indexes waits on the server (pymilvus polls every 0.5 s), a fixed cost that
    is neither side's throughput."""
    from gapfix.jobs.sinks import parse_sink
    from gapfix.jobs.sinks.milvus import MilvusSink

    sink = MilvusSink(parse_sink(f"milvus://{uri.removeprefix('http://')}/{coll}"))
    try:
        sink.prepare(dim)
    finally:
        sink.close()


def _bare(uri: str, coll: str, img: np.ndarray, txt: np.ndarray, transform) -> float:
    """rows/s of MilvusClient.upsert over prebuilt batches (the same rows the job writes)."""
    from pymilvus import MilvusClient

    _create(uri, coll, img.shape[1])
    fixed = {"image": transform.transform(img, "image"), "text": transform.transform(txt, "text")}

    def batch(start: int) -> list[dict]:
        pairs = range(start // 2, min((start + BATCH) // 2, len(img)))
        return [
            {"id": f"pair-{i:06d}#{m}", "modality": m, "metadata": {"row": i, "split": "dev"},
             "raw": raw[i].tolist(), "corrected": fixed[m][i].tolist()}
            for i in pairs
            for m, raw in (("image", img), ("text", txt))
        ]  # fmt: skip

    client = MilvusClient(uri=uri)
    try:
        client.list_collections()  # the channel is up before the clock starts
        seconds = 0.0
        for start in range(0, 2 * len(img), BATCH):
            rows = batch(start)  # built outside the clock, one batch at a time
            t0 = time.perf_counter()
            client.upsert(coll, rows)
            seconds += time.perf_counter() - t0
        return 2 * len(img) / seconds
    finally:
        client.close()


def _job(uri: str, coll: str, manifest: Path, transform: Path, out: Path) -> float:
    from gapfix.jobs import read_manifest, run_correct

    shutil.rmtree(out, ignore_errors=True)
    _create(uri, coll, int(read_manifest(manifest)["dim"]))
    t0 = time.perf_counter()
    s = run_correct(manifest, transform, out, sink=f"milvus://{uri.removeprefix('http://')}/{coll}",
                    sink_batch=BATCH, progress_mode="off", log=lambda _m: None)  # fmt: skip
    dt = time.perf_counter() - t0
    assert s["complete"] and s["failures"] == 0 and s["totals"]["rows"] == 2 * N_PAIRS, s
    return 2 * N_PAIRS / dt


def run() -> list[BenchResult]:
    from gapfix import make_transform
    from gapfix.jobs.testing import write_pair_shards

    sys.path.insert(0, str(ROOT / "tests"))
    from milvus_server import start_milvus_lite, stop

    tmp = Path(tempfile.mkdtemp(prefix="gapfix-bench-sinks-"))
    proc = None
    try:
        img, txt = _vectors(N_PAIRS)
        ids = [f"pair-{i:06d}" for i in range(N_PAIRS)]
        manifest = write_pair_shards(tmp / "emb", img, txt, SHARD, ids)
        # write_pair_shards' metadata is {"row": i, "split": "dev"}: the bare rows carry the same
        assert json.loads((tmp / "emb" / "manifest.json").read_text())["complete"]
        tr = make_transform("centering").fit(img, txt)
        tr.save(tmp / "centering.safetensors")
        proc, uri = start_milvus_lite(tmp / "milvus")
        bare = job = 0.0
        for r in range(ROUNDS):  # alternating rounds on fresh collections; the best of each
            bare = max(bare, _bare(uri, f"bare_{r}", img, txt, tr))
            job = max(job, _job(uri, f"job_{r}", manifest, tmp / "centering.safetensors",
                                tmp / f"job_{r}"))  # fmt: skip
        return [
            BenchResult(
                "correct --sink milvus vs bare pymilvus upsert",
                job,
                "rows/s",
                baseline=bare,
                baseline_name="MilvusClient.upsert, prebuilt rows",
                target=0.8,
                note=f"{2 * N_PAIRS} rows of dim {img.shape[1]} in shards of {2 * SHARD}, "
                f"upserts of {BATCH}; Milvus Lite server on loopback; job time incl. parquet "
                "reads, centering, row building and manifest writes",
            )
        ]
    finally:
        if proc is not None:
            stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)
