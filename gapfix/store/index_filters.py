"""Searching a FAISS index where only some vectors count: a modality filter, HNSW tombstones.

Modality filters are id ranges (see ``items``) passed as ``SearchParameters(sel=...)``, which
the three CPU kinds honour inside the search. An approximate index would still walk the graph
(HNSW) or probe the lists (IVF) nearest the query, which the modality gap fills with the other
modality, and return few or no hits; so a filter (or tombstones) on HNSW is searched exactly
over the matching live vectors when they are few (``FILTER_EXACT_MAX_ROWS``), otherwise with
``efSearch`` scaled by their share and widened for rows that came back short, and a filter on
trained IVF probes the nearest lists that hold matching vectors, enough of them to hold k.
GPU indexes (no selectors) and ``use_selectors = False`` over-fetch and filter instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

from gapfix.store.items import MODALITY_CODE, SEQ_BITS, fid_code

if TYPE_CHECKING:
    from gapfix.store.index import VectorIndex

FILTER_EXACT_MAX_ROWS = 16_384  # HNSW: a filter matching at most this many is searched exactly
FILTER_EF_MAX = 4096  # HNSW: efSearch ceiling for a selective filter over more vectors
EF_RETRY_MAX = 65_536  # HNSW: the widest walk tried for rows that came back short
EXACT_FALLBACK_MAX_ROWS = 1_000_000  # HNSW: rows a short walk may still search exactly


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


def modality_codes(modalities: Sequence[str] | None) -> tuple[int, ...]:
    names = modalities if modalities else MODALITY_CODE
    return tuple(sorted({MODALITY_CODE[m] for m in names}))


def hnsw_search_restricted(
    idx: VectorIndex, q: np.ndarray, k: int, modalities: Sequence[str] | None, params: Any
) -> tuple[np.ndarray, np.ndarray]:
    """HNSW search where only some vectors count (a modality filter, tombstones): k hits
    whenever k live vectors match. Few matches: exact search over them; else the graph,
    with ``efSearch`` scaled by the share that matches and raised for rows that came back
    short, then (up to ``EXACT_FALLBACK_MAX_ROWS`` matches) exact search for those rows."""
    codes = modality_codes(modalities)
    matching = _hnsw_matching(idx, codes)
    if isinstance(matching, tuple):
        return exact_top_k(q, k, *matching)
    want = min(k, matching)
    ef = min(
        max(params.efSearch, FILTER_EF_MAX),
        math.ceil(params.efSearch * idx.ntotal / max(matching, 1)),
    )
    params.efSearch = ef
    dist, ids = idx.index.search(q, k, params=params)
    short = np.flatnonzero((ids >= 0).sum(axis=1) < want)
    while short.size and ef < min(idx.ntotal, EF_RETRY_MAX):
        ef = min(ef * 4, idx.ntotal, EF_RETRY_MAX)
        params.efSearch = ef
        dist[short], ids[short] = idx.index.search(q[short], k, params=params)
        short = short[(ids[short] >= 0).sum(axis=1) < want]
    if short.size and matching <= EXACT_FALLBACK_MAX_ROWS:  # a walk that cannot reach them
        found = _hnsw_vectors(idx, *_hnsw_rows(idx, codes))
        dist[short], ids[short] = exact_top_k(q[short], k, *found)
    return dist, ids


def _hnsw_rows(idx: VectorIndex, codes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Storage rows and ids of the live vectors of these modality codes."""
    ids = idx.all_ids()  # storage order
    ok = np.isin(fid_code(ids), codes)
    if idx.deleted:
        ok &= ~np.isin(ids, np.fromiter(idx.deleted, np.int64, len(idx.deleted)))
    rows = np.flatnonzero(ok)
    return rows, ids[rows]


def _hnsw_vectors(
    idx: VectorIndex, rows: np.ndarray, ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The stored vectors at storage ``rows`` (a copy), with their ids."""
    storage = faiss.downcast_index(faiss.downcast_index(idx.index.index).storage)
    xb = faiss.rev_swig_ptr(storage.get_xb(), idx.ntotal * idx.dim)
    return np.ascontiguousarray(xb.reshape(idx.ntotal, idx.dim)[rows]), ids


def _hnsw_matching(idx: VectorIndex, codes: tuple[int, ...]) -> Any:
    """Live vectors of these modality codes: ``(vectors, ids)`` when few enough to search
    exactly, else their count. Cached until the next write."""
    cached = idx.filter_cache.get(codes)
    if cached is None:
        rows, ids = _hnsw_rows(idx, codes)
        small = len(rows) <= FILTER_EXACT_MAX_ROWS
        cached = _hnsw_vectors(idx, rows, ids) if small else len(rows)
        idx.filter_cache[codes] = cached
    return cached


def ivf_search_filtered(
    idx: VectorIndex, q: np.ndarray, k: int, modalities: Sequence[str], params: Any
) -> tuple[np.ndarray, np.ndarray]:
    """IVF search over the nearest lists holding matching vectors: at least ``nprobe`` of
    them, and enough to hold k matches."""
    key = modality_codes(modalities)
    counts = idx.filter_cache.get(key)
    if counts is None:  # matching vectors per list
        inv = idx.index.invlists
        counts = np.zeros(idx.index.nlist, np.int64)
        for lst in range(idx.index.nlist):
            size = inv.list_size(lst)
            if size:
                ids = faiss.rev_swig_ptr(inv.get_ids(lst), size)
                counts[lst] = np.count_nonzero(np.isin(fid_code(ids), key))
        idx.filter_cache[key] = counts
    dist, lists = idx.index.quantizer.search(q, idx.index.nlist)
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
    idx.index.search_preassigned_c(
        nq, faiss.swig_ptr(q), k, faiss.swig_ptr(assign), faiss.swig_ptr(coarse),
        faiss.swig_ptr(out_d), faiss.swig_ptr(out_i), False, params,
    )  # fmt: skip
    return out_d, out_i


def over_fetch_search(
    idx: VectorIndex,
    index: Any,
    q: np.ndarray,
    k: int,
    modalities: Sequence[str] | None,
    max_k: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Over-fetch, drop ids outside the filter or tombstoned, grow the fetch until k remain."""
    codes = None if not modalities else np.array([MODALITY_CODE[m] for m in modalities])
    limit = idx.ntotal if max_k is None else min(idx.ntotal, max_k)
    fetch = min(limit, max(k * 4, k + len(idx.deleted)))
    dead = np.fromiter(idx.deleted, np.int64, len(idx.deleted)) if idx.deleted else None
    while True:
        params = None
        if idx.trained and index is idx.index:
            params = faiss.SearchParametersIVF()
            params.nprobe = min(idx.params.nprobe, idx.index.nlist)
        elif idx.kind == "hnsw":
            params = faiss.SearchParametersHNSW()
            params.efSearch = max(idx.params.ef_search, fetch)
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


def exact_top_k(
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
