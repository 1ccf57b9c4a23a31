"""FAISS index kinds and their settings (all inner product on unit vectors, i.e. cosine).

- ``flat``: ``IndexIDMap2(IndexFlatIP)``, exact. Deletes are ``remove_ids``.
- ``hnsw``: ``IndexIDMap2(IndexHNSWFlat)``. HNSW cannot remove vectors, so deletes are
  tombstones excluded inside the search by an ``IDSelectorNot``; ``tombstone_ratio`` tells the
  collection when to compact (rebuild without them).
- ``ivfpq``: exact flat search until ``train_size`` vectors exist, then (in the writer, inside
  ``add``) an ``IndexIVFPQ`` is trained on everything stored and replaces the flat index.
  Scores are PQ approximations.

Also here: GPU detection and the shared GPU resources.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import asdict, dataclass
from typing import Any

import faiss
import numpy as np

from gapfix.errors import InputError

log = logging.getLogger(__name__)

INDEX_KINDS = ("flat", "hnsw", "ivfpq")
BUILD_CHUNK = 16_384
MAX_TRAIN_ROWS = 262_144


@dataclass
class IndexParams:
    """Per-collection index settings (``create_collection(..., index_params=...)``)."""

    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 64
    nlist: int | None = None  # ivfpq: default ~4*sqrt(n), at most n/39
    pq_m: int | None = None  # ivfpq: sub-quantizers; default dim/8 (or dim/4, dim/2, dim)
    nbits: int = 8
    nprobe: int = 16
    train_size: int = 10_000  # ivfpq: vectors needed before training

    @classmethod
    def from_dict(cls, kind: str, params: dict[str, Any] | None) -> IndexParams:
        """Validate user parameters for ``kind``; unknown or out-of-range values -> InputError."""
        allowed = {
            "flat": set(),
            "hnsw": {"hnsw_m", "ef_construction", "ef_search"},
            "ivfpq": {"nlist", "pq_m", "nbits", "nprobe", "train_size"},
        }[kind]
        params = dict(params or {})
        unknown = sorted(set(params) - allowed)
        if unknown:
            raise InputError(
                f"unknown {kind} index parameter {unknown[0]!r}; allowed: {sorted(allowed)}",
                param="index_params",
            )
        limits = {
            "hnsw_m": (4, 128),
            "ef_construction": (8, 4096),
            "ef_search": (1, 4096),
            "nlist": (1, 1 << 20),
            "pq_m": (1, 4096),
            "nbits": (1, 12),
            "nprobe": (1, 1 << 20),
            "train_size": (64, 1 << 30),
        }
        for name, value in params.items():
            lo, hi = limits[name]
            if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
                raise InputError(
                    f"index parameter {name} must be an integer in [{lo}, {hi}], got {value!r}",
                    param=f"index_params.{name}",
                )
        return cls(**params)

    def check_dim(self, kind: str, dim: int) -> None:
        """InputError when these settings cannot index ``dim``-d vectors (checked before the
        dimension is fixed: ivfpq would otherwise fail only at training, after a commit)."""
        if kind == "ivfpq" and self.pq_m is not None and dim % self.pq_m:
            raise InputError(
                f"index parameter pq_m={self.pq_m} must divide the dimension {dim}",
                "index_params.pq_m",
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_gpu_resources: Any = None
_gpu_lock = threading.Lock()


def gpu_available() -> bool:
    """True when this FAISS build sees a GPU."""
    try:
        return faiss.get_num_gpus() > 0
    except AttributeError:  # CPU-only build without the symbol
        return False


def gpu_resources() -> Any:
    """The process's FAISS GPU resources (created once)."""
    global _gpu_resources
    with _gpu_lock:
        if _gpu_resources is None:
            _gpu_resources = faiss.StandardGpuResources()
        return _gpu_resources


def default_pq_m(dim: int) -> int:
    """ivfpq's default number of sub-quantizers: dim/8 (or dim/4, dim/2, dim)."""
    for sub in (8, 4, 2, 1):
        if dim % sub == 0 and dim // sub >= 1:
            return dim // sub
    return dim


def train_ivfpq(params: IndexParams, vectors: np.ndarray, fids: np.ndarray) -> Any:
    """An ``IndexIVFPQ`` trained on ``vectors`` (a sample of at most ``MAX_TRAIN_ROWS``) and
    holding them all under ``fids``."""
    n, d = vectors.shape
    p = params
    nlist = p.nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))
    nlist = min(nlist, n)
    m = p.pq_m or default_pq_m(d)
    if d % m:
        raise InputError(
            f"index parameter pq_m={m} must divide the dimension {d}", "index_params.pq_m"
        )
    nbits = max(1, min(p.nbits, int(math.log2(n))))
    quantizer = faiss.IndexFlatIP(d)
    ivf = faiss.IndexIVFPQ(quantizer, d, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.min_points_per_centroid = 1  # small collections: train anyway, quietly
    ivf.pq.cp.min_points_per_centroid = 1
    ivf.nprobe = min(p.nprobe, nlist)
    if n > MAX_TRAIN_ROWS:
        rows = np.random.default_rng(0).choice(n, MAX_TRAIN_ROWS, replace=False)
        train = np.ascontiguousarray(vectors[np.sort(rows)], np.float32)
    else:
        train = np.ascontiguousarray(vectors, np.float32)
    ivf.train(train)
    for start in range(0, n, BUILD_CHUNK):
        sl = slice(start, start + BUILD_CHUNK)
        ivf.add_with_ids(
            np.ascontiguousarray(vectors[sl], np.float32),
            np.ascontiguousarray(fids[sl], np.int64),
        )
    log.info("trained IVF-PQ index: n=%d nlist=%d m=%d nbits=%d", n, nlist, m, nbits)
    return ivf
