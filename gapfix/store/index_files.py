"""Index files: ``write_index_file`` writes ``<space>-<checksum>.faiss`` (``faiss.write_index``
to a temp name, fsync, rename) and then the sidecar ``<space>.json`` that names it, so a crash
at any point leaves a sidecar that names a complete file. ``read_index_file`` verifies the
checksum and raises ``IndexFileError`` on anything unexpected (the caller rebuilds).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import faiss

from gapfix.atomic import atomic_write_json, file_checksum, fsync_file, remove_quietly, temp_path
from gapfix.store.index import VectorIndex
from gapfix.store.index_kinds import IndexParams

FILE_FORMAT = 1


class IndexFileError(Exception):
    """An index file is missing, unreadable, corrupt or does not match the collection."""


def write_index_file(index: VectorIndex, directory: Path, space: str, meta: dict[str, Any]) -> Path:
    """Persist ``index`` as ``<space>-<checksum>.faiss`` + sidecar ``<space>.json`` (atomic)."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(directory / f"{space}.faiss")
    try:
        faiss.write_index(index.index, str(tmp))
        fsync_file(tmp)
        checksum = file_checksum(tmp)
        final = directory / f"{space}-{checksum[:16]}.faiss"
        tmp.replace(final)
    except BaseException:
        remove_quietly(tmp)
        raise
    sidecar = {
        "tombstones": sorted(index.deleted),
        "format": FILE_FORMAT,
        "file": final.name,
        "checksum": checksum,
        "kind": index.kind,
        "dim": index.dim,
        "ntotal": index.ntotal,
        **meta,
    }
    atomic_write_json(directory / f"{space}.json", sidecar)
    for old in directory.glob(f"{space}-*.faiss"):
        if old.name != final.name:
            remove_quietly(old)
    return final


def read_sidecar(directory: Path, space: str) -> dict[str, Any]:
    """The sidecar ``<space>.json``; IndexFileError if missing, unreadable or of another format."""
    path = directory / f"{space}.json"
    try:
        side = json.loads(path.read_text())
    except FileNotFoundError:
        raise IndexFileError(f"no {space} index file") from None
    except (OSError, ValueError) as exc:
        raise IndexFileError(f"unreadable {path.name}: {exc}") from None
    if not isinstance(side, dict) or side.get("format") != FILE_FORMAT:
        raise IndexFileError(f"{path.name}: unknown format")
    return side


def read_index_file(
    directory: Path, space: str, kind: str, dim: int, params: IndexParams, use_gpu: bool
) -> tuple[VectorIndex, dict[str, Any]]:
    """Load and verify a persisted index; raise IndexFileError if anything is off."""
    side = read_sidecar(directory, space)
    if side.get("kind") != kind or side.get("dim") != dim:
        raise IndexFileError(
            f"{space} index is {side.get('kind')}/{side.get('dim')}, want {kind}/{dim}"
        )
    path = directory / str(side.get("file", ""))
    if not path.is_file() or path.parent != directory:
        raise IndexFileError(f"{space} index file {path.name} is missing")
    try:
        if file_checksum(path) != side.get("checksum"):
            raise IndexFileError(f"{space} index file {path.name} fails its checksum")
        raw = faiss.read_index(str(path))
    except (OSError, RuntimeError) as exc:
        raise IndexFileError(f"{space} index file {path.name} is unreadable: {exc}") from None
    idx = VectorIndex(kind, dim, params, use_gpu)
    idx.index = raw
    if raw.d != dim or raw.ntotal != side.get("ntotal"):
        raise IndexFileError(f"{space} index file {path.name} does not match its sidecar")
    ok_type = isinstance(raw, faiss.IndexIVFPQ) if kind == "ivfpq" else False
    if isinstance(raw, faiss.IndexIDMap2):
        inner = faiss.downcast_index(raw.index)
        want = faiss.IndexHNSWFlat if kind == "hnsw" else faiss.IndexFlatIP
        ok_type = isinstance(inner, want)
        if kind == "hnsw" and ok_type:
            with contextlib.suppress(AttributeError):
                inner.hnsw.efSearch = params.ef_search
    if not ok_type:
        raise IndexFileError(f"{space} index file holds {type(raw).__name__}, not a {kind} index")
    tomb = side.get("tombstones") or []
    if tomb:
        if kind != "hnsw" or not all(isinstance(t, int) for t in tomb):
            raise IndexFileError(f"{space} index sidecar has invalid tombstones")
        idx.deleted = set(tomb)
    return idx, side
