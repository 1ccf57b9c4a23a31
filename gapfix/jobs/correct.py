"""`gapfix correct`: apply a transform artifact to every shard of an embed job (no re-encoding).

Output shard *i* holds the rows of input shard *i* with corrected embeddings (same ids, order,
modalities and metadata); the output manifest records the transform. Resumable like embed.
With ``sink=URI`` the rows (raw and corrected vectors) are upserted into a Milvus or Qdrant
collection instead (`gapfix.jobs.sinks`); the output folder then keeps only the manifest and
``failures.jsonl`` (rows the database refused).
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gapfix.errors import InputError
from gapfix.jobs.manifest import MODALITIES, read_manifest, require_complete, shard_file
from gapfix.jobs.progress import Progress, check_mode
from gapfix.jobs.runner import ShardJob, ShardResult, run_with_writer, summarize
from gapfix.jobs.shards import ShardData, read_shard, shard_row_counts
from gapfix.jobs.sinks import SINK_BATCH, Sink, open_sink, parse_sink
from gapfix.jobs.sinks.job import SinkJob, accepted, default_job_dir, sink_rows


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def source_fingerprint(m: dict[str, Any]) -> str:
    """Fingerprint of a finished shard set: model, dim, and each shard's file size and counts."""
    h = hashlib.sha256()
    h.update(f"{(m.get('model') or {}).get('id')}\n{m['dim']}\n".encode())
    h.update(f"{(m.get('transform') or {}).get('sha256')}\n".encode())
    for rec in m["shards"]:
        p = shard_file(m, rec)
        size = p.stat().st_size if p.is_file() else -1
        h.update(f"{rec['index']}\t{rec['file']}\t{size}\t{sorted(rec['rows'].items())}\n".encode())
    return h.hexdigest()


def check_shards(m: dict[str, Any], manifest: str | Path) -> None:
    """Raise InputError unless every shard of ``m`` reads back with its recorded rows and dim
    (a damaged input is refused before anything is written, not half-way through)."""
    for rec in m["shards"]:
        path = shard_file(m, rec)
        try:
            counts = shard_row_counts(path, int(m["dim"]))
        except (OSError, ValueError) as exc:  # missing, not parquet, wrong dim
            raise InputError(
                f"{manifest}: shard {rec['file']} is unreadable ({exc}); rerun the embed job",
                param="manifest",
            ) from None
        want = {mod: int(rec["rows"].get(mod, 0)) for mod in MODALITIES}
        if counts != want:
            raise InputError(
                f"{manifest}: shard {rec['file']} has rows {counts}, the manifest says {want}; "
                "rerun the embed job",
                param="manifest",
            )


def correct_shard(data: ShardData, transform: Any) -> ShardData:
    """A copy of ``data`` with each modality's embeddings corrected by ``transform``."""
    emb = np.array(data.embeddings, dtype=np.float32, copy=True)
    mods = np.asarray(data.modalities)
    for modality in ("image", "text"):
        rows = np.flatnonzero(mods == modality)
        if rows.size:
            emb[rows] = transform.transform(emb[rows], modality)
    return ShardData(
        list(data.ids),
        list(data.modalities),
        emb,
        list(data.metadata),
        list(data.captions),
        list(data.thumbnails),
    )


def run_correct(
    manifest: str | Path,
    transform_path: str | Path,
    out: str | Path | None,
    *,
    sink: str | None = None,
    sink_batch: int = SINK_BATCH,
    ray: str | None = None,
    workers: int | None = None,
    progress_mode: str = "auto",
    log_interval: float = 10.0,
    log: Callable[[str], None] = _stderr,
) -> dict[str, Any]:
    """Write corrected copies of the shards of ``manifest`` under ``out`` (or upsert them into
    ``sink``, keeping the job's manifest in ``out``); returns a summary."""
    from gapfix import load_transform

    check_mode(progress_mode)
    spec = parse_sink(sink) if sink is not None else None
    if spec is None and out is None:
        raise InputError("--out or --sink is required", param="out")
    if spec is not None and ray and spec.scheme == "qdrant+local":
        raise InputError(
            "--sink qdrant+local:// is one process's folder; with --ray use a Qdrant server",
            param="sink",
        )
    if sink_batch < 1:
        raise InputError(f"--sink-batch must be >= 1, got {sink_batch}", param="sink_batch")
    src = read_manifest(manifest)
    require_complete(src, manifest)
    transform = load_transform(transform_path)
    dim = int(src["dim"])
    if int(transform.dim_) != dim:
        raise InputError(
            f"transform {transform_path} was fitted on dimension {transform.dim_}, "
            f"but the shards have dimension {dim}",
            param="transform",
        )
    model = dict(src.get("model") or {})
    tr_model = getattr(transform, "model_id", None)
    if tr_model and model.get("id") and tr_model != model["id"]:
        raise InputError(
            f"transform {transform_path} was fitted on embeddings of model {tr_model!r}, "
            f"the shards come from {model['id']!r}",
            param="transform",
        )
    if out is None:
        assert spec is not None
        out = default_job_dir(src["root"], spec)
    if Path(out).resolve() == Path(src["root"]).resolve():
        raise InputError("--out must differ from the input shards' folder", param="out")
    check_shards(src, manifest)
    transform_info = {
        "path": str(Path(transform_path).resolve()),
        "sha256": file_sha256(transform_path),
        "method": transform.method,
        "summary": transform.to_summary(),
    }
    input_info = {
        "kind": "shards",
        "path": str(Path(src["root"]) / "manifest.json"),
        "fingerprint": source_fingerprint(src),
        "shard_size": (src.get("input") or {}).get("shard_size"),
        "num_shards": int(src["input"]["num_shards"]),
        "total_items": int(src["totals"]["rows"]),
        "source_model": model,
    }
    job_kw: dict[str, Any] = dict(
        kind="correct", model=model, dim=dim, input_info=input_info, transform=transform_info,
        log=log,
    )  # fmt: skip
    target = None
    if spec is None:
        job: ShardJob = ShardJob(out, **job_kw)
    else:
        target = open_sink(spec)
        try:
            state = target.prepare(dim)
        except BaseException:
            target.close()
            raise
        log(f"correct: sink {spec.display}: collection {state}; job folder {out}")
        job = SinkJob(out, spec=spec, **job_kw)
    run = _Run(transform, str(transform_path), target, sink, sink_batch, ray, workers, dim,
               progress_mode, log_interval, log)  # fmt: skip
    try:
        return _run(job, src, run)
    finally:
        if target is not None:
            target.close()


@dataclass(frozen=True)
class _Run:
    """What `_run` needs besides the job and its input (checked by `run_correct`)."""

    transform: Any
    transform_path: str
    target: Sink | None  # an open sink, or None: parquet shards
    sink: str | None  # its URI (Ray actors open their own client)
    sink_batch: int
    ray: str | None
    workers: int | None
    dim: int
    progress_mode: str
    log_interval: float
    log: Callable[[str], None]


def _run(job: ShardJob, src: dict[str, Any], run: _Run) -> dict[str, Any]:
    """Correct the pending shards of ``job`` (parquet or sink) and summarise."""
    log, target = run.log, run.target
    src_recs = {r["index"]: r for r in src["shards"]}
    pending = job.open()
    skipped = len(src_recs) - len(pending)
    if skipped:
        log(f"correct: resuming: {skipped} of {len(src_recs)} shards already done")
    remaining = sum(
        int(src_recs[i]["rows"]["image"] + src_recs[i]["rows"]["text"]) for i in pending
    )
    progress = Progress("correct", remaining, mode=run.progress_mode, interval=run.log_interval)
    counts = {"image": 0, "text": 0, "items": 0, "failures": 0, "shards": 0}
    t0 = time.monotonic()

    raws: dict[int, ShardData] = {}  # local sink runs: the input rows, until written

    def commit(res: ShardResult) -> None:
        res.items = int(src_recs[res.index].get("items", len(res.data)))
        raw = raws.pop(res.index, None)
        if target is not None and raw is not None:  # local: upsert here, off the reading thread
            rows = sink_rows(raw, res.data)
            res.failures = target.write(rows, shard=res.index, batch=run.sink_batch)
            res.data = accepted(raw, {f.id for f in res.failures}, rows.keys)
            progress.update(0, len(res.failures))
        job.commit(res)
        counts["failures"] += len(res.failures)
        c = res.data.counts()
        counts["image"] += c["image"]
        counts["text"] += c["text"]
        counts["items"] += res.items  # items, as embed counts them (len(res.data) is rows)
        counts["shards"] += 1

    def produce_local(on_result: Callable[[ShardResult], None]) -> None:
        for idx in pending:
            t = time.monotonic()
            data = read_shard(shard_file(src, src_recs[idx]))
            fixed = correct_shard(data, run.transform)
            if target is not None:
                raws[idx] = data
            on_result(ShardResult(idx, fixed, [], len(data), time.monotonic() - t))
            progress.update(len(data))

    def produce_ray(on_result: Callable[[ShardResult], None]) -> None:
        from gapfix.jobs.ray_correct import run_correct_ray

        shards = [(i, str(shard_file(src, src_recs[i]))) for i in pending]
        run_correct_ray(
            run.ray or "local", shards, run.transform_path, run.workers, run.dim, on_result,
            progress, sink=run.sink, sink_batch=run.sink_batch,
        )  # fmt: skip

    try:
        if pending:
            run_with_writer(produce_ray if run.ray else produce_local, commit)
    finally:
        progress.close()
        job.finish()
    return summarize("correct", job, counts, time.monotonic() - t0, skipped, log)
