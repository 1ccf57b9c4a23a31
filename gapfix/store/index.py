"""FAISS index of one vector space (raw or corrected) of an embedded collection.

``VectorIndex`` wraps one FAISS index of a kind (``index_kinds``): builds, writes (deletes are
tombstones on HNSW), ids, and search. Filtered and tombstoned searches are ``index_filters``';
files are ``index_files``'. GPU FAISS (``faiss.get_num_gpus() > 0``) is used for ``flat`` and
trained ``ivfpq``: the CPU index stays the source of truth (writes, files) and a GPU mirror is
refreshed lazily on the first search after a write; GPU search is serialised (GPU indexes are
not thread-safe) and filters by over-fetching, since selectors are CPU-only.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import faiss
import numpy as np

from gapfix.errors import InputError
from gapfix.store.index_filters import (
    hnsw_search_restricted,
    ivf_search_filtered,
    modality_ranges,
    over_fetch_search,
)
from gapfix.store.index_kinds import (
    BUILD_CHUNK,
    INDEX_KINDS,
    IndexParams,
    gpu_available,
    gpu_resources,
    train_ivfpq,
)
from gapfix.store.items import MODALITY_CODE

log = logging.getLogger(__name__)

GPU_MAX_K = 2048
# A single query searches on one OpenMP thread. FAISS parallelises over the queries (and its
# OpenBLAS runs on the same OpenMP threads), so one query gains nothing from a thread team, and
# on a busy machine (a server sharing its cores with clients and encoders) the team's wait cost
# dominates. Measured on the shared 2-core machine (`python -m benchmarks omp`, `... load`):
# flat 100k x 512 at 1 query a call 30 -> 100 q/s under load; gathered batches keep every
# thread: serialising batches below 32 cut wrk's c=32 from 629 to 143 q/s.
SERIAL_BELOW_NQ = 2


@contextlib.contextmanager
def omp_threads(n: int | None) -> Iterator[None]:
    """FAISS's OpenMP threads for this thread's calls (``None``: leave them). OpenMP keeps the
    setting per thread, so concurrent searches in other threads are not affected."""
    if n is None:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


__all__ = ["GPU_MAX_K", "INDEX_KINDS", "IndexParams", "VectorIndex", "gpu_available"]


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
        self.filter_cache: dict[tuple[int, ...], Any] = {}  # per modality set, until a write
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
            idx.index = train_ivfpq(params, vectors, fids)
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
            self.index = train_ivfpq(self.params, allx, allids)
            self._changed()

    def _changed(self) -> None:
        """After any write: the GPU mirror and the per-filter caches are out of date."""
        self._gpu_stale = True
        self.filter_cache = {}

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
                    found = over_fetch_search(self, gpu, q, k, modalities, GPU_MAX_K)
            # the over-fetch cap can leave a selective filter short: search the CPU index then
            if gpu is not None and (self.ntotal <= GPU_MAX_K or (found[1] >= 0).all()):
                return found
        with omp_threads(1 if nq < SERIAL_BELOW_NQ else None):
            return self._cpu_search(q, k, modalities)

    def _cpu_search(
        self, q: np.ndarray, k: int, modalities: Sequence[str] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        if not self.use_selectors:
            return over_fetch_search(self, self.index, q, k, modalities, None)
        keep: list[Any] = []
        sel = self._selector(modalities, keep)
        params = self._params(k, sel)
        if self.kind == "hnsw" and (modalities or self.deleted):
            return hnsw_search_restricted(self, q, k, modalities, params)
        if modalities and self.trained:
            return ivf_search_filtered(self, q, k, modalities, params)
        return self.index.search(q, k, params=params)

    def _gpu_mirror(self) -> Any:
        if self._gpu_stale or self._gpu_index is None:
            try:
                self._gpu_index = faiss.index_cpu_to_gpu(gpu_resources(), 0, self.index)
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

    # ------------------------------------------------------------------ summary
    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "dim": self.dim,
            "ntotal": self.ntotal,
            "tombstones": len(self.deleted),
            "trained": self.trained if self.kind == "ivfpq" else None,
            "gpu": self.use_gpu,
        }
