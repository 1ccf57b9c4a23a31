"""Embedding shards on disk: parquet files with columns id, modality, embedding, metadata,
caption, thumbnail.

``embedding`` is ``fixed_size_list<float32>[dim]``; ``metadata`` is a JSON object as a string;
``caption`` is the embedded text of text rows (null on image rows); ``thumbnail`` is a small
JPEG of image rows when the job was asked for thumbnails (else null). The last two let
`gapfix index build` give the store what the search page shows.
Shards are written to a temporary name and renamed only when complete; readers here stream them
in bounded memory (`iter_embedding_blocks` for fitting, `iter_shard_batches` for indexing).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gapfix.atomic import atomic_path
from gapfix.errors import ArtifactError, InputError
from gapfix.jobs.manifest import MODALITIES, read_manifest, shard_file

__all__ = [
    "ShardData",
    "iter_embedding_blocks",
    "iter_paired_blocks",
    "iter_shard_batches",
    "read_manifest",
    "read_shard",
    "shard_row_counts",
    "write_shard",
]

ROW_GROUP_ROWS = 8192
DEFAULT_BLOCK_ROWS = 65536


def schema(dim: int) -> Any:
    """The arrow schema of a shard with ``dim``-dimensional embeddings."""
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("modality", pa.string(), nullable=False),
            pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
            pa.field("metadata", pa.string(), nullable=False),
            pa.field("caption", pa.string(), nullable=True),
            pa.field("thumbnail", pa.binary(), nullable=True),
        ]
    )


@dataclass
class ShardData:
    """The rows of one shard, in order."""

    ids: list[str] = field(default_factory=list)
    modalities: list[str] = field(default_factory=list)
    embeddings: np.ndarray | None = None  # (n, dim) float32
    metadata: list[str] = field(default_factory=list)  # JSON strings
    captions: list[str | None] = field(default_factory=list)  # text rows' text
    thumbnails: list[bytes | None] = field(default_factory=list)  # image rows' JPEG

    def __post_init__(self) -> None:
        n = len(self.ids)
        self.captions = list(self.captions) or [None] * n
        self.thumbnails = list(self.thumbnails) or [None] * n

    def __len__(self) -> int:
        return len(self.ids)

    def counts(self) -> dict[str, int]:
        return {m: sum(1 for x in self.modalities if x == m) for m in MODALITIES}


def to_table(data: ShardData, dim: int) -> Any:
    """Build the arrow table of a shard."""
    import pyarrow as pa

    n = len(data)
    emb = data.embeddings if data.embeddings is not None else np.zeros((0, dim), np.float32)
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    if emb.shape != (n, dim):
        raise ValueError(f"shard embeddings have shape {emb.shape}, expected ({n}, {dim})")
    values = pa.array(emb.reshape(-1), type=pa.float32())
    return pa.Table.from_arrays(
        [
            pa.array(data.ids, type=pa.string()),
            pa.array(data.modalities, type=pa.string()),
            pa.FixedSizeListArray.from_arrays(values, dim),
            pa.array(data.metadata, type=pa.string()),
            pa.array(data.captions, type=pa.string()),
            pa.array(data.thumbnails, type=pa.binary()),
        ],
        schema=schema(dim),
    )


def write_shard(path: Path, data: ShardData, dim: int) -> None:
    """Write a shard atomically: temp file, fsync, rename (a reader never sees half of it)."""
    import pyarrow.parquet as pq

    table = to_table(data, dim)
    with atomic_path(Path(path)) as tmp:
        pq.write_table(
            table,
            tmp,
            row_group_size=ROW_GROUP_ROWS,
            compression={
                "id": "zstd",
                "modality": "zstd",
                "embedding": "none",
                "metadata": "zstd",
                "caption": "zstd",
                "thumbnail": "none",
            },
            use_dictionary=["modality"],
        )


def shard_row_counts(path: Path, dim: int | None = None) -> dict[str, int]:
    """Rows per modality of a shard file (reads only the modality column); checks the dim."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    if dim is not None:
        t = pf.schema_arrow.field("embedding").type
        if getattr(t, "list_size", None) != dim:
            raise ArtifactError(f"shard {path} holds embeddings of type {t}, expected dim {dim}")
    col = pf.read(columns=["modality"]).column("modality").to_pylist()
    return {m: col.count(m) for m in MODALITIES}


def read_shard(path: Path) -> ShardData:
    """Read a whole shard into memory."""
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    return _from_table(t)


def _from_table(t: Any) -> ShardData:
    names = t.schema.names
    emb_col = t.column("embedding")
    if hasattr(emb_col, "combine_chunks"):  # a Table's ChunkedArray (a RecordBatch's is plain)
        emb_col = emb_col.combine_chunks()
    dim = emb_col.type.list_size
    flat = emb_col.flatten().to_numpy(zero_copy_only=False)
    return ShardData(
        ids=t.column("id").to_pylist(),
        modalities=t.column("modality").to_pylist(),
        embeddings=np.asarray(flat, dtype=np.float32).reshape(len(t), dim),
        metadata=t.column("metadata").to_pylist(),
        captions=t.column("caption").to_pylist() if "caption" in names else [],
        thumbnails=t.column("thumbnail").to_pylist() if "thumbnail" in names else [],
    )


def _check_modality(modality: str) -> None:
    if modality not in MODALITIES:
        raise InputError(f"modality must be one of {MODALITIES}, got {modality!r}", "modality")


def iter_shard_batches(
    manifest_path: str | Path, batch_rows: int = ROW_GROUP_ROWS, modality: str | None = None
) -> Iterator[ShardData]:
    """Stream every finished shard of a manifest as batches of rows (bounded memory)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if modality is not None:
        _check_modality(modality)
    m = read_manifest(manifest_path)
    for rec in m["shards"]:
        path = shard_file(m, rec)
        if not path.is_file():
            raise ArtifactError(f"shard listed in the manifest is missing: {path}")
        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(batch_size=batch_rows):
            if modality is not None:
                batch = batch.filter(pc.equal(batch.column("modality"), modality))
                if batch.num_rows == 0:
                    continue
            yield _from_table(batch)


def iter_embedding_blocks(
    manifest_path: str | Path, modality: str, block_rows: int = DEFAULT_BLOCK_ROWS
) -> Iterator[np.ndarray]:
    """Yield the embeddings of one modality from all finished shards, ``block_rows`` at a time.

    Blocks are C-contiguous float32 ``(<= block_rows, dim)`` arrays; only one block (plus one
    parquet row group) is held in memory at a time, so any number of rows can be streamed into
    ``GapTransform.partial_fit``.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    _check_modality(modality)
    if block_rows < 1:
        raise InputError("block_rows must be >= 1", "block_rows")
    m = read_manifest(manifest_path)
    dim = int(m["dim"])
    buf = np.empty((block_rows, dim), np.float32)
    fill = 0
    for rec in m["shards"]:
        if int(rec["rows"].get(modality, 0)) == 0:
            continue
        path = shard_file(m, rec)
        if not path.is_file():
            raise ArtifactError(f"shard listed in the manifest is missing: {path}")
        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(batch_size=ROW_GROUP_ROWS, columns=["modality", "embedding"]):
            batch = batch.filter(pc.equal(batch.column("modality"), modality))
            n = batch.num_rows
            if n == 0:
                continue
            col = batch.column("embedding")
            if col.type.list_size != dim:
                raise ArtifactError(f"shard {path} has dim {col.type.list_size}, manifest {dim}")
            rows = col.flatten().to_numpy(zero_copy_only=False).reshape(n, dim)
            done = 0
            while done < n:
                take = min(block_rows - fill, n - done)
                buf[fill : fill + take] = rows[done : done + take]
                fill += take
                done += take
                if fill == block_rows:
                    yield buf.copy()
                    fill = 0
    if fill:
        yield buf[:fill].copy()


def iter_paired_blocks(
    manifest_path: str | Path, block_rows: int = DEFAULT_BLOCK_ROWS
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(image, text)`` blocks whose row i are the two embeddings of one id.

    Only ids with both an image and a text row take part (an item whose image failed is
    left out). For paired fits (``procrustes``, ``auto``): ``partial_fit(image=a, text=b)``.
    """
    if block_rows < 1:
        raise InputError("block_rows must be >= 1", "block_rows")
    m = read_manifest(manifest_path)
    dim = int(m["dim"])
    img = np.empty((block_rows, dim), np.float32)
    txt = np.empty((block_rows, dim), np.float32)
    fill = 0
    prev: tuple[str, str, np.ndarray] | None = None  # last row seen (pairs may straddle batches)
    for data in iter_shard_batches(manifest_path, batch_rows=ROW_GROUP_ROWS):
        emb = data.embeddings
        assert emb is not None
        # the rows of one id are adjacent, image first (see ShardAssembler)
        for rid, mod, vec in zip(data.ids, data.modalities, emb, strict=True):
            if mod == "text" and prev is not None and prev[1] == "image" and prev[0] == rid:
                img[fill], txt[fill] = prev[2], vec
                fill += 1
                if fill == block_rows:
                    yield img.copy(), txt.copy()
                    fill = 0
            prev = (rid, mod, vec)
    if fill:
        yield img[:fill].copy(), txt[:fill].copy()


def _finite(value: Any) -> Any:
    """``value`` with NaN/inf floats (not JSON; the store refuses them) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def metadata_json(meta: dict[str, Any] | None) -> str:
    """Serialise item metadata as strict JSON (dates and other non-JSON values become
    strings, NaN and infinities null)."""
    return json.dumps(
        _finite(meta or {}), ensure_ascii=False, sort_keys=True, default=str, allow_nan=False
    )
