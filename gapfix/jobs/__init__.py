"""Batch jobs: embed inputs into resumable parquet shards, re-correct them, index them.

- `run_embed` (``gapfix embed``): image folders, CSV/TSV/parquet tables, WebDataset tars ->
  ``shards/part-NNNNN.parquet`` (id, modality, embedding, metadata, caption, thumbnail) +
  ``manifest.json`` +
  ``failures.jsonl``; single machine (DataLoader workers) or Ray Data (``ray=...``).
- `run_correct` (``gapfix correct``): apply a transform artifact to every shard, into new
  shards or (``sink=URI``) upserted into a Milvus or Qdrant collection (`gapfix.jobs.sinks`).
- `build_index` (``gapfix index build``): shards -> a store collection ``gapfix serve`` serves.
- `read_manifest`, `iter_embedding_blocks`, `iter_paired_blocks`: stream shards for fitting.
"""

from __future__ import annotations

from gapfix.jobs.correct import run_correct
from gapfix.jobs.embed import EmbedOptions, run_embed
from gapfix.jobs.index import build_index
from gapfix.jobs.manifest import read_manifest
from gapfix.jobs.shards import iter_embedding_blocks, iter_paired_blocks, iter_shard_batches

__all__ = [
    "EmbedOptions",
    "build_index",
    "iter_embedding_blocks",
    "iter_paired_blocks",
    "iter_shard_batches",
    "read_manifest",
    "run_correct",
    "run_embed",
]
