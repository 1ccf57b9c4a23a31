"""Reads of an embedded collection: items, thumbnails, listings, query correction, search.

A search holds the index read lock from reading the view (the active transform and its index)
until its hits are resolved against SQLite, so it sees one whole state: never a half-applied
write, never the transform of one space with the index of the other. FAISS releases the GIL,
so many searches run in parallel.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from gapfix.metrics import STAGE_LATENCY
from gapfix.store.backend import Searched, check_page, check_search
from gapfix.store.embedded.prepare import prepare
from gapfix.store.embedded.state import CollectionState
from gapfix.store.errors import NotFoundError
from gapfix.store.index import VectorIndex
from gapfix.store.items import (
    CODE_MODALITY,
    SEQ_BITS,
    SEQ_MASK,
    Hit,
    Item,
    check_item_id,
    check_query_vectors,
    fid_seq,
)
from gapfix.validation import check_modality


class Reads(CollectionState):
    """``get_item``, ``get_thumbnail``, ``list_items``, ``correct`` and ``search``."""

    def get_item(self, item_id: str) -> Item:
        """The stored item (raw vectors, metadata); NotFoundError if absent."""
        check_item_id(item_id)
        with self._reading():
            item = self._db.get_item(item_id)
        if item is None:
            raise NotFoundError(f"item {item_id!r} not found", param="id")
        return item

    def get_thumbnail(self, item_id: str) -> bytes | None:
        """The item's thumbnail bytes, or None if it has none; NotFoundError if no such item."""
        check_item_id(item_id)
        with self._reading():
            exists, data = self._db.get_thumbnail(item_id)
        if not exists:
            raise NotFoundError(f"item {item_id!r} not found", param="id")
        return data

    def list_items(self, offset: int = 0, limit: int = 100) -> list[tuple[str, str]]:
        """``(id, modality)`` pairs in insertion order, for paging through a collection."""
        offset, limit = check_page(offset, limit)
        with self._reading():
            return self._db.list_ids(offset, limit)

    def correct(self, vectors: Any, modality: str) -> np.ndarray:
        """Raw vectors of ``modality`` through the active transform (unit length, float32)."""
        check_modality(modality)
        q = check_query_vectors(vectors, self._dim)
        transform = self._view.transform
        if transform is None:
            return q
        with STAGE_LATENCY.labels("correct").time():
            return np.ascontiguousarray(transform.transform(q, modality), np.float32)

    def search(
        self,
        vectors: Any = None,
        query_modality: str | None = None,
        k: int = 10,
        modalities: list[str] | None = None,
        corrected: bool = True,
        *,
        item_id: str | None = None,
        exclude_self: bool = True,
    ) -> Searched:
        """Top-k items for each raw query vector ((nq, d) or (d,)) of ``query_modality``, or
        for ``item_id``'s own index vector (one row; the item itself excluded unless
        ``exclude_self`` is False), and the transform of the space searched.

        ``corrected=True`` corrects the queries with the active transform and searches the
        corrected index; ``False`` searches the raw index. ``modalities`` filters the item
        modalities returned (default: all). Scores are inner products of unit vectors.
        """
        k, mods = check_search(vectors, query_modality, k, modalities, item_id)
        self._check_open()
        if item_id is not None:
            return self._search_by_id(item_id, k, mods, corrected, exclude_self)
        q = check_query_vectors(vectors, self._dim)
        with self._index_lock.read():  # one view (transform + its index) for the whole search
            view = self._view
            if self._dim is None:
                return Searched([[] for _ in range(q.shape[0])])
            if corrected and view.transform is not None:
                with STAGE_LATENCY.labels("correct").time():
                    # role "query": a transform fitted with a separate query-text mean uses it
                    q = view.transform.transform(q, query_modality, role="query")
                return Searched(self._search_locked(q, k, mods, view.corrected), view.transform)
            return Searched(self._search_locked(q, k, mods, self._raw))

    def _search_by_id(
        self, item_id: str, k: int, mods: list[str] | None, corrected: bool, exclude_self: bool
    ) -> Searched:
        with self._index_lock.read():
            view = self._view
            rows = None
            if self._dim is not None:
                with self._db.reader() as conn:
                    rows = self._db.rows_for_ids([item_id], self._dim, conn)
            if rows is None or not len(rows):
                raise NotFoundError(f"item {item_id!r} not found", param="id")
            use_corrected = corrected and view.transform is not None
            prep = prepare(rows, view.transform if use_corrected else None)
            q = prep.vectors("corrected" if use_corrected else "raw")
            idx = view.corrected if use_corrected else self._raw
            hits = self._search_locked(q, k + 1 if exclude_self else k, mods, idx)[0]
        if exclude_self:
            hits = [h for h in hits if h.id != item_id]
        return Searched([hits[:k]], view.transform if use_corrected else None)

    def _search_locked(
        self, q: np.ndarray, k: int, mods: list[str] | None, idx: VectorIndex | None
    ) -> list[list[Hit]]:
        """Search ``idx`` and resolve hits (caller holds the index read lock, so no write can
        remove a row between the two)."""
        if idx is None:
            return [[] for _ in range(q.shape[0])]
        with STAGE_LATENCY.labels("search").time():
            scores, fids = idx.search(np.ascontiguousarray(q, np.float32), k, mods)
            return self._resolve(scores, fids)

    def _resolve(self, scores: np.ndarray, fids: np.ndarray) -> list[list[Hit]]:
        """Hits for FAISS results (ids -1, or without a row, are skipped)."""
        valid = fids >= 0
        found = self._db.lookup(np.unique(fid_seq(fids[valid])).tolist())
        meta: dict[int, Any] = {}
        out = []
        for drow, irow in zip(scores, fids, strict=True):
            hits = []
            for d, f in zip(drow.tolist(), irow.tolist(), strict=True):
                if f < 0:
                    continue
                seq = f & SEQ_MASK
                rec = found.get(seq)
                if rec is None:  # cannot happen under the read lock; be safe anyway
                    continue
                if seq not in meta:
                    meta[seq] = json.loads(rec[1])
                hits.append(
                    Hit(rec[0], d, CODE_MODALITY[f >> SEQ_BITS], meta[seq], rec[2], bool(rec[3]))
                )
            out.append(hits)
        return out
