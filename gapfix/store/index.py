"""FAISS index of one vector space (raw or corrected) of a collection.

Kinds (all inner product on unit vectors, i.e. cosine):

- ``flat``: ``IndexIDMap2(IndexFlatIP)``, exact. Deletes are ``remove_ids``.
- ``hnsw``: ``IndexIDMap2(IndexHNSWFlat)``. HNSW cannot remove vectors, so deletes are
  tombstones excluded inside the search by an ``IDSelectorNot``; ``tombstone_ratio`` tells the
  collection when to compact (rebuild without them).
- ``ivfpq``: exact flat search until ``train_size`` vectors exist, then (in the writer, inside
  ``add``) an ``IndexIVFPQ`` is trained on everything stored and replaces the flat index.
  Scores are PQ approximations.

Modality filters are id ranges (see ``items``) passed as ``SearchParameters(sel=...)``, which
the three CPU kinds honour inside the search. An approximate index would still walk the graph
(HNSW) or probe the lists (IVF) nearest the query, which the modality gap fills with the other
modality, and return few or no hits; so a filter (or tombstones) on HNSW is searched exactly
over the matching live vectors when they are few (``FILTER_EXACT_MAX_ROWS``), otherwise with
``efSearch`` scaled by their share and widened for rows that came back short, and a filter on
trained IVF probes the nearest lists that hold matching vectors, enough of them to hold k. GPU FAISS (``faiss.get_num_gpus() > 0``) is used
for ``flat`` and trained ``ivfpq``: the CPU index stays the source of truth (writes, files) and
a GPU mirror is refreshed lazily on the first search after a write; GPU search is serialised
(GPU indexes are not thread-safe) and filters by over-fetching, since selectors are CPU-only.

Files: ``write_index_file`` writes ``<space>-<checksum>.faiss`` (``faiss.write_index`` to a
temp name, fsync, rename) and then the sidecar ``<space>.json`` that names it, so a crash at
any point leaves a sidecar that names a complete file. ``read_index_file`` verifies the
checksum and raises ``IndexFileError`` on anything unexpected (the caller rebuilds).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from gapfix.atomic import (
    atomic_write_json,
    file_checksum,
    fsync_file,
    remove_quietly,
    temp_path,
)
from gapfix.errors import InputError
from gapfix.store.items import MODALITY_CODE, SEQ_BITS, fid_code

log = logging.getLogger(__name__)

INDEX_KINDS = ("flat", "hnsw", "ivfpq")
FILE_FORMAT = 1
BUILD_CHUNK = 16_384
GPU_MAX_K = 2048
FILTER_EXACT_MAX_ROWS = 16_384  # HNSW: a filter matching at most this many is searched exactly
FILTER_EF_MAX = 4096  # HNSW: efSearch ceiling for a selective filter over more vectors
EF_RETRY_MAX = 65_536  # HNSW: the widest walk tried for rows that came back short
EXACT_FALLBACK_MAX_ROWS = 1_000_000  # HNSW: rows a short walk may still search exactly
MAX_TRAIN_ROWS = 262_144


class IndexFileError(Exception):
    """An index file is missing, unreadable, corrupt or does not match the collection."""


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


def _gpu_res() -> Any:
    global _gpu_resources
    with _gpu_lock:
        if _gpu_resources is None:
            _gpu_resources = faiss.StandardGpuResources()
        return _gpu_resources


def _pq_m(dim: int) -> int:
    for sub in (8, 4, 2, 1):
        if dim % sub == 0 and dim // sub >= 1:
            return dim // sub
    return dim


def modality_ranges(modalities: Sequence[str]) -> list[tuple[int, int]]:
    """Contiguous FAISS id ranges ``[lo, hi)`` covering the given modalities."""
    codes = sorted(MODALITY_CODE[m] for m in modalities)
    ranges: list[list[int]] = []
    for c in codes:
        if ranges and ranges[-1][1] == c:
            ranges[-1][1] = c + 1
        else:
            ranges.append([c, c + 1])
    return [(lo << SEQ_BITS, hi << SEQ_BITS) for lo, hi in ranges]


class VectorIndex:
    """One FAISS index (CPU source of truth, optional GPU mirror) with tombstones for HNSW.

    Not thread-safe for writers: the collection calls ``add``/``remove`` under its write lock
    and never concurrently with ``search`` (readers-writer lock). ``search`` itself may be
    called from many threads at once.
    """

    def __init__(self, kind: str, dim: int, params: IndexParams, use_gpu: bool = False) -> None:
        if kind not in INDEX_KINDS:
            raise InputError(
                f"unknown index kind {kind!r}; expected one of {list(INDEX_KINDS)}", "index"
            )
        self.kind = kind
        self.dim = dim
        self.params = params
        self.use_gpu = use_gpu and kind != "hnsw"
        self.use_selectors = True  # False: over-fetch and filter (what GPU search does)
        self.deleted: set[int] = set()
        self._deleted_sel: Any = None
        self._gpu_index: Any = None
        self._gpu_stale = True
        self._gpu_search_lock = threading.Lock()
        self._filter_cache: dict[tuple[int, ...], Any] = {}  # per modality set, until a write
        self.index: Any = self._empty()

    # ------------------------------------------------------------------ construction
    def _empty(self) -> Any:
        if self.kind == "hnsw":
            inner = faiss.IndexHNSWFlat(self.dim, self.params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = self.params.ef_construction
            inner.hnsw.efSearch = self.params.ef_search
            return faiss.IndexIDMap2(inner)
        return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))

    @property
    def trained(self) -> bool:
        """For ivfpq: whether the IVF-PQ index replaced the exact warm-up index."""
        return isinstance(self.index, faiss.IndexIVFPQ)

    @property
    def ntotal(self) -> int:
        """Vectors in the FAISS index, tombstones included."""
        return int(self.index.ntotal)

    @property
    def live(self) -> int:
        return self.ntotal - len(self.deleted)

    @property
    def tombstone_ratio(self) -> float:
        return len(self.deleted) / self.ntotal if self.ntotal else 0.0

    @classmethod
    def build(
        cls,
        kind: str,
        dim: int,
        params: IndexParams,
        vectors: np.ndarray,
        fids: np.ndarray,
        use_gpu: bool = False,
        cancelled: Callable[[], bool] | None = None,
    ) -> VectorIndex:
        """A fresh index holding ``vectors`` under ``fids`` (trained if ivfpq and big enough)."""
        idx = cls(kind, dim, params, use_gpu)
        if kind == "ivfpq" and len(fids) >= params.train_size:
            idx.index = idx._train_ivfpq(vectors, fids)
            return idx
        for start in range(0, len(fids), BUILD_CHUNK):
            if cancelled is not None and cancelled():
                break
            sl = slice(start, start + BUILD_CHUNK)
            idx.index.add_with_ids(
                np.ascontiguousarray(vectors[sl], np.float32),
                np.ascontiguousarray(fids[sl], np.int64),
            )
        return idx

    def _train_ivfpq(self, vectors: np.ndarray, fids: np.ndarray) -> Any:
        n, d = vectors.shape
        p = self.params
        nlist = p.nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))
        nlist = min(nlist, n)
        m = p.pq_m or _pq_m(d)
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

    # ------------------------------------------------------------------ writes
    def add(self, vectors: np.ndarray, fids: np.ndarray) -> None:
        """Add vectors under ids; an ivfpq warm-up index is trained once it holds train_size."""
        if len(fids) == 0:
            return
        x = np.ascontiguousarray(vectors, np.float32)
        ids = np.ascontiguousarray(fids, np.int64)
        self.index.add_with_ids(x, ids)
        self._changed()
        if self.kind == "ivfpq" and not self.trained and self.ntotal >= self.params.train_size:
            allx, allids = self.reconstruct_all()
            self.index = self._train_ivfpq(allx, allids)
            self._changed()

    def _changed(self) -> None:
        """After any write: the GPU mirror and the per-filter caches are out of date."""
        self._gpu_stale = True
        self._filter_cache = {}

    def restore(self, vectors: np.ndarray, fids: np.ndarray) -> None:
        """Undo ``remove`` of these ids (HNSW: drop the tombstones; others: add them back)."""
        if self.kind == "hnsw":
            self.deleted.difference_update(int(f) for f in fids)
            self._deleted_sel = None
            self._changed()
        else:
            self.add(vectors, fids)

    def remove(self, fids: np.ndarray) -> int:
        """Remove ids (HNSW: tombstone them). Unknown ids are ignored; returns how many went."""
        fids = np.asarray(fids, np.int64)
        if len(fids) == 0:
            return 0
        self._changed()
        if self.kind == "hnsw":
            present = np.intersect1d(fids, self.all_ids())
            before = len(self.deleted)
            self.deleted.update(int(f) for f in present)
            self._deleted_sel = None
            return len(self.deleted) - before
        sel = faiss.IDSelectorBatch(len(fids), faiss.swig_ptr(np.ascontiguousarray(fids)))
        return int(self.index.remove_ids(sel))

    # ------------------------------------------------------------------ reading ids/vectors
    def all_ids(self) -> np.ndarray:
        """Every id in the FAISS index (tombstones included), int64."""
        if isinstance(self.index, faiss.IndexIVF):
            invlists = self.index.invlists
            parts = [
                faiss.rev_swig_ptr(invlists.get_ids(lst), invlists.list_size(lst)).copy()
                for lst in range(self.index.nlist)
                if invlists.list_size(lst)
            ]
            return np.concatenate(parts) if parts else np.empty(0, np.int64)
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def live_ids(self) -> np.ndarray:
        ids = self.all_ids()
        if self.deleted:
            ids = np.setdiff1d(ids, np.fromiter(self.deleted, np.int64, len(self.deleted)))
        return ids

    def reconstruct_all(self) -> tuple[np.ndarray, np.ndarray]:
        """Vectors and ids of a flat or HNSW index, in storage order (tombstones included)."""
        inner = faiss.downcast_index(self.index.index)
        n = self.ntotal
        x = inner.reconstruct_n(0, n) if n else np.empty((0, self.dim), np.float32)
        return np.ascontiguousarray(x, np.float32), self.all_ids()

    # ------------------------------------------------------------------ search
    def _selector(self, modalities: Sequence[str] | None, keep: list[Any]) -> Any:
        sel = None
        if modalities:
            parts = [faiss.IDSelectorRange(lo, hi) for lo, hi in modality_ranges(modalities)]
            keep.extend(parts)
            sel = parts[0]
            for p in parts[1:]:
                sel = faiss.IDSelectorOr(sel, p)
                keep.append(sel)
        if self.deleted:
            dsel = self._deleted_sel
            if dsel is None:
                arr = np.fromiter(self.deleted, np.int64, len(self.deleted))
                batch = faiss.IDSelectorBatch(len(arr), faiss.swig_ptr(arr))
                dsel = (faiss.IDSelectorNot(batch), batch)
                self._deleted_sel = dsel
            keep.append(dsel)
            sel = dsel[0] if sel is None else faiss.IDSelectorAnd(sel, dsel[0])
            keep.append(sel)
        return sel

    def _params(self, k: int, sel: Any) -> Any:
        if self.kind == "hnsw":
            p = faiss.SearchParametersHNSW()
            p.efSearch = max(self.params.ef_search, k)
        elif self.trained:
            p = faiss.SearchParametersIVF()
            p.nprobe = min(self.params.nprobe, self.index.nlist)
        elif sel is None:
            return None
        else:
            p = faiss.SearchParameters()
        if sel is not None:
            p.sel = sel
        return p

    def search(
        self, queries: np.ndarray, k: int, modalities: Sequence[str] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k inner products and FAISS ids (-1 where fewer than k match) for each query."""
        q = np.ascontiguousarray(queries, np.float32)
        nq = q.shape[0]
        if self.ntotal == 0:
            return np.full((nq, k), -np.inf, np.float32), np.full((nq, k), -1, np.int64)
        if modalities and set(modalities) >= set(MODALITY_CODE):
            modalities = None  # every modality: no filter
        if self.use_gpu and self.kind != "hnsw" and k <= GPU_MAX_K:
            with self._gpu_search_lock:
                gpu = self._gpu_mirror()
                if gpu is not None:
                    found = self._search_filtered(gpu, q, k, modalities, GPU_MAX_K)
            # the over-fetch cap can leave a selective filter short: search the CPU index then
            if gpu is not None and (self.ntotal <= GPU_MAX_K or (found[1] >= 0).all()):
                return found
        if not self.use_selectors:
            return self._search_filtered(self.index, q, k, modalities, None)
        keep: list[Any] = []
        sel = self._selector(modalities, keep)
        params = self._params(k, sel)
        if self.kind == "hnsw" and (modalities or self.deleted):
            return self._hnsw_search_restricted(q, k, modalities, params)
        if modalities and self.trained:
            return self._ivf_search_filtered(q, k, modalities, params)
        return self.index.search(q, k, params=params)

    def _codes(self, modalities: Sequence[str] | None) -> tuple[int, ...]:
        names = modalities if modalities else MODALITY_CODE
        return tuple(sorted({MODALITY_CODE[m] for m in names}))

    def _hnsw_search_restricted(
        self, q: np.ndarray, k: int, modalities: Sequence[str] | None, params: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        """HNSW search where only some vectors count (a modality filter, tombstones): k hits
        whenever k live vectors match. Few matches: exact search over them; else the graph,
        with ``efSearch`` scaled by the share that matches and raised for rows that came back
        short, then (up to ``EXACT_FALLBACK_MAX_ROWS`` matches) exact search for those rows."""
        codes = self._codes(modalities)
        matching = self._hnsw_matching(codes)
        if isinstance(matching, tuple):
            return _exact_top_k(q, k, *matching)
        want = min(k, matching)
        ef = min(
            max(params.efSearch, FILTER_EF_MAX),
            math.ceil(params.efSearch * self.ntotal / max(matching, 1)),
        )
        params.efSearch = ef
        dist, ids = self.index.search(q, k, params=params)
        short = np.flatnonzero((ids >= 0).sum(axis=1) < want)
        while short.size and ef < min(self.ntotal, EF_RETRY_MAX):
            ef = min(ef * 4, self.ntotal, EF_RETRY_MAX)
            params.efSearch = ef
            dist[short], ids[short] = self.index.search(q[short], k, params=params)
            short = short[(ids[short] >= 0).sum(axis=1) < want]
        if short.size and matching <= EXACT_FALLBACK_MAX_ROWS:  # a walk that cannot reach them
            found = self._hnsw_vectors(*self._hnsw_rows(codes))
            dist[short], ids[short] = _exact_top_k(q[short], k, *found)
        return dist, ids

    def _hnsw_rows(self, codes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Storage rows and ids of the live vectors of these modality codes."""
        ids = self.all_ids()  # storage order
        ok = np.isin(fid_code(ids), codes)
        if self.deleted:
            ok &= ~np.isin(ids, np.fromiter(self.deleted, np.int64, len(self.deleted)))
        rows = np.flatnonzero(ok)
        return rows, ids[rows]

    def _hnsw_vectors(self, rows: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The stored vectors at storage ``rows`` (a copy), with their ids."""
        storage = faiss.downcast_index(faiss.downcast_index(self.index.index).storage)
        xb = faiss.rev_swig_ptr(storage.get_xb(), self.ntotal * self.dim)
        return np.ascontiguousarray(xb.reshape(self.ntotal, self.dim)[rows]), ids

    def _hnsw_matching(self, codes: tuple[int, ...]) -> Any:
        """Live vectors of these modality codes: ``(vectors, ids)`` when few enough to search
        exactly, else their count. Cached until the next write."""
        cached = self._filter_cache.get(codes)
        if cached is None:
            rows, ids = self._hnsw_rows(codes)
            small = len(rows) <= FILTER_EXACT_MAX_ROWS
            cached = self._hnsw_vectors(rows, ids) if small else len(rows)
            self._filter_cache[codes] = cached
        return cached

    def _ivf_search_filtered(
        self, q: np.ndarray, k: int, modalities: Sequence[str], params: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        """IVF search over the nearest lists holding matching vectors: at least ``nprobe`` of
        them, and enough to hold k matches."""
        key = self._codes(modalities)
        counts = self._filter_cache.get(key)
        if counts is None:  # matching vectors per list
            inv = self.index.invlists
            counts = np.zeros(self.index.nlist, np.int64)
            for lst in range(self.index.nlist):
                size = inv.list_size(lst)
                if size:
                    ids = faiss.rev_swig_ptr(inv.get_ids(lst), size)
                    counts[lst] = np.count_nonzero(np.isin(fid_code(ids), key))
            self._filter_cache[key] = counts
        dist, lists = self.index.quantizer.search(q, self.index.nlist)
        # per query: the nearest lists holding matches, at least nprobe of them and enough
        # to hold k matching vectors
        picks = []
        for r in range(q.shape[0]):
            held = np.flatnonzero(counts[lists[r]] > 0)
            enough = np.searchsorted(np.cumsum(counts[lists[r, held]]), k) + 1
            picks.append(held[: max(params.nprobe, enough)])
        width = max(len(p) for p in picks)
        if width == 0:  # nothing matches the filter anywhere
            nq = q.shape[0]
            return np.full((nq, k), -np.inf, np.float32), np.full((nq, k), -1, np.int64)
        assign = np.full((q.shape[0], width), -1, np.int64)
        coarse = np.zeros((q.shape[0], width), np.float32)
        for r, pick in enumerate(picks):
            assign[r, : len(pick)] = lists[r, pick]
            coarse[r, : len(pick)] = dist[r, pick]
        params.nprobe = width
        nq = q.shape[0]
        out_d = np.empty((nq, k), np.float32)
        out_i = np.empty((nq, k), np.int64)
        # the Python wrapper refuses params (the selector); call the C++ method directly
        self.index.search_preassigned_c(
            nq, faiss.swig_ptr(q), k, faiss.swig_ptr(assign), faiss.swig_ptr(coarse),
            faiss.swig_ptr(out_d), faiss.swig_ptr(out_i), False, params,
        )  # fmt: skip
        return out_d, out_i

    def _gpu_mirror(self) -> Any:
        if self._gpu_stale or self._gpu_index is None:
            try:
                self._gpu_index = faiss.index_cpu_to_gpu(_gpu_res(), 0, self.index)
                if self.trained:
                    faiss.GpuParameterSpace().set_index_parameter(
                        self._gpu_index, "nprobe", min(self.params.nprobe, self.index.nlist)
                    )
                self._gpu_stale = False
            except Exception as exc:  # unsupported on this build/GPU: stay on CPU for good
                log.warning(
                    "GPU FAISS unavailable for %s index (%s); searching on CPU", self.kind, exc
                )
                self.use_gpu = False
                self._gpu_index = None
        return self._gpu_index

    def _search_filtered(
        self, index: Any, q: np.ndarray, k: int, modalities: Sequence[str] | None, max_k: int | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Over-fetch, drop ids outside the filter or tombstoned, grow the fetch until k remain."""
        codes = None if not modalities else np.array([MODALITY_CODE[m] for m in modalities])
        limit = self.ntotal if max_k is None else min(self.ntotal, max_k)
        fetch = min(limit, max(k * 4, k + len(self.deleted)))
        dead = np.fromiter(self.deleted, np.int64, len(self.deleted)) if self.deleted else None
        while True:
            params = None
            if self.trained and index is self.index:
                params = faiss.SearchParametersIVF()
                params.nprobe = min(self.params.nprobe, self.index.nlist)
            elif self.kind == "hnsw":
                params = faiss.SearchParametersHNSW()
                params.efSearch = max(self.params.ef_search, fetch)
            dist, ids = index.search(q, fetch, params=params)
            ok = ids >= 0
            if codes is not None:
                ok &= np.isin(fid_code(ids), codes)
            if dead is not None:
                ok &= ~np.isin(ids, dead)
            enough = ok.sum(axis=1) >= k
            if enough.all() or fetch >= limit:
                break
            fetch = min(limit, fetch * 4)
        outD = np.full((q.shape[0], k), -np.inf, np.float32)
        outI = np.full((q.shape[0], k), -1, np.int64)
        for r in range(q.shape[0]):
            sel = np.flatnonzero(ok[r])[:k]
            outD[r, : len(sel)] = dist[r, sel]
            outI[r, : len(sel)] = ids[r, sel]
        return outD, outI

    # ------------------------------------------------------------------ files
    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "dim": self.dim,
            "ntotal": self.ntotal,
            "tombstones": len(self.deleted),
            "trained": self.trained if self.kind == "ivfpq" else None,
            "gpu": self.use_gpu,
        }


def _exact_top_k(
    q: np.ndarray, k: int, vectors: np.ndarray, ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner products of ``q`` against ``vectors`` (padded with -inf / -1)."""
    nq = q.shape[0]
    dist = np.full((nq, k), -np.inf, np.float32)
    out = np.full((nq, k), -1, np.int64)
    n = len(ids)
    if n == 0:
        return dist, out
    scores = q @ vectors.T
    kk = min(k, n)
    top = (
        np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        if kk < n
        else np.tile(np.arange(n), (nq, 1))
    )
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-top_scores, axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    dist[:, :kk] = np.take_along_axis(top_scores, order, axis=1)
    out[:, :kk] = ids[top]
    return dist, out


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
    import json

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
