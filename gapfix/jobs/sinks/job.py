"""Shard bookkeeping of a `gapfix correct --sink` run: the manifest, without parquet shards.

The job folder (``--out``, by default ``<input folder>/sinks/<scheme>-<host>-<port>-<name>``)
holds ``manifest.json`` and ``failures.jsonl`` exactly as a parquet run does; a shard's record
is written only after all of its rows were upserted, so a killed run redoes at most the shards
that were in flight, and the upserts by key make that redo harmless.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from gapfix.jobs.failures import write_shard_failures
from gapfix.jobs.manifest import record_shard, write_manifest
from gapfix.jobs.runner import ShardJob, ShardResult, shard_name
from gapfix.jobs.shards import ShardData
from gapfix.jobs.sinks import SinkRows, SinkSpec, sink_keys

SINK_FILE_PREFIX = "sink:"  # a shard record's "file" when its rows live in the sink


def default_job_dir(src_root: str | Path, spec: SinkSpec) -> Path:
    """Where a sink run keeps its manifest when ``--out`` is not given (stable across reruns)."""
    if spec.scheme == "qdrant+local":
        where = spec.path
    else:
        where = f"{spec.host}-{spec.port}" + (f"-{spec.db}" if spec.db else "")
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{spec.scheme}-{where}-{spec.collection}")
    return Path(src_root) / "sinks" / slug.strip("-")


def sink_rows(data: ShardData, corrected: ShardData) -> SinkRows:
    """The rows of one shard as the sink takes them (raw from ``data``)."""
    assert data.embeddings is not None and corrected.embeddings is not None
    return SinkRows(
        keys=sink_keys(data.ids, data.modalities),
        modalities=list(data.modalities),
        metadata=list(data.metadata),
        raw=data.embeddings,
        corrected=corrected.embeddings,
    )


def accepted(data: ShardData, refused: set[str], keys: list[str]) -> ShardData:
    """The ids and modalities of the rows not refused (what the manifest counts)."""
    keep = [i for i, k in enumerate(keys) if k not in refused]
    return ShardData(ids=[data.ids[i] for i in keep], modalities=[data.modalities[i] for i in keep])


class SinkJob(ShardJob):
    """A `ShardJob` whose rows go to a database: same manifest and resume, no parquet."""

    def __init__(self, out: str | Path, *, spec: SinkSpec, **kwargs: Any) -> None:
        super().__init__(out, **kwargs)
        self.fresh["sink"] = {"uri": spec.display, "collection": spec.collection}

    def _verify(self, rec: dict[str, Any]) -> str | None:
        # the record is written after its upserts finished: nothing on disk to check
        if not str(rec.get("file", "")).startswith(SINK_FILE_PREFIX):
            return "is not a sink record"
        return None

    def commit(self, result: ShardResult) -> dict[str, Any]:
        """Record one shard whose rows are in the sink (failures, then manifest)."""
        name = shard_name(result.index)
        write_shard_failures(self.out, name, result.failures)
        rec = {
            "index": result.index,
            "file": f"{SINK_FILE_PREFIX}{name}",
            "rows": result.data.counts(),
            "items": result.items,
            "failures": len(result.failures),
            "seconds": round(result.seconds, 3),
        }
        record_shard(self.manifest, rec)
        write_manifest(self.manifest_file, self.manifest)
        return rec
