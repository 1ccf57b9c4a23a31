"""Writes to an embedded collection: all or nothing, SQLite first, then the live indexes.

A write takes the write lock, takes the replaced/deleted items out of the live indexes (under
the index write lock, so a search never resolves an id without a row), commits the batch and
the new centroid sums in one SQLite transaction, then adds the new items. A failed commit
puts the removed vectors back; a failed index update re-derives the indexes from SQLite. A
running switch records every write (``Job.log``) to replay into the index it builds.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import numpy as np

from gapfix.store.db import Rows
from gapfix.store.embedded.prepare import Prepared, prepare
from gapfix.store.embedded.repair import Repair
from gapfix.store.embedded.state import View
from gapfix.store.errors import ConflictError, NotFoundError
from gapfix.store.items import CODE_MODALITY, ItemIn, check_item_id, encode_fids, validate_batch
from gapfix.store.sums import apply_delta, zero_sums

log = logging.getLogger(__name__)


class Writes(Repair):
    """``add`` / ``delete_items`` and the index updates (with undo) they make."""

    def add(self, items: list[ItemIn], upsert: bool = False) -> dict[str, int]:
        """Add a batch, all or nothing. Existing ids -> ConflictError unless ``upsert``.

        Returns ``{"added": new items, "replaced": upserted items}``.
        """
        batch = validate_batch(items, self._dim)
        with self._write_lock:
            self._check_open()
            if self._dim is not None and batch.dim != self._dim:
                batch = validate_batch(items, self._dim)  # the dimension was fixed meanwhile
            if self._dim is None:
                self.index_params.check_dim(self.index_kind, batch.dim)
            view = self._view
            dim = batch.dim
            old = self._db.rows_for_ids(batch.ids, dim)
            if len(old) and not upsert:
                shown = ", ".join(repr(i) for i in (old.ids or [])[:5])
                raise ConflictError(
                    f"{len(old)} item id(s) already exist ({shown}); pass upsert to replace them",
                    param="items",
                )
            new = Rows.from_batch(batch, np.zeros(len(batch), np.int64))
            new_prep = prepare(new, view.transform)
            old_prep = prepare(old, view.transform)
            sums = self._new_sums(dim, old_prep, new_prep)
            self._index_remove(old)
            try:
                with self._db.tx() as conn:
                    self._db.delete(conn, old.seqs.tolist())
                    seqs = self._db.insert(conn, batch)
                    if self._dim is None:
                        self._db.set_meta("dim", dim)
                    for space, s in sums.items():
                        self._db.put_centroids(conn, space, s)
            except BaseException:
                self._index_restore(old, old_prep)
                raise
            new.seqs = np.asarray(seqs, np.int64)
            if self._dim is None:
                self._init_dim(dim)
            self._index_add(new, new_prep)
            self._record(old, new)
            self._sums = sums
            for rows, sign in ((old, -1), (new, 1)):
                for code in rows.codes:
                    self._counts[CODE_MODALITY[int(code)]] += sign
            self._update_gauges()
            if len(old):  # an upsert tombstones the replaced HNSW vectors, as a delete does
                self._maybe_compact()
        return {"added": len(batch) - len(old), "replaced": len(old)}

    def delete_items(self, ids: list[str], missing_ok: bool = False) -> int:
        """Delete items by id, all or nothing; unknown id -> NotFoundError unless ``missing_ok``."""
        ids = [check_item_id(i, f"ids[{n}]") for n, i in enumerate(ids)]
        with self._write_lock:
            self._check_open()
            if self._dim is None:
                if ids and not missing_ok:
                    raise NotFoundError(f"item {ids[0]!r} not found", param="id")
                return 0
            old = self._db.rows_for_ids(list(dict.fromkeys(ids)), self._dim)
            if not missing_ok and len(old) < len(set(ids)):
                gone = next(i for i in ids if i not in set(old.ids or []))
                raise NotFoundError(f"item {gone!r} not found", param="id")
            if not len(old):
                return 0
            view = self._view
            old_prep = prepare(old, view.transform)
            sums = self._new_sums(self._dim, old_prep, None)
            self._index_remove(old)
            try:
                with self._db.tx() as conn:
                    self._db.delete(conn, old.seqs.tolist())
                    for space, s in sums.items():
                        self._db.put_centroids(conn, space, s)
            except BaseException:
                self._index_restore(old, old_prep)
                raise
            self._record(old, Rows.empty(self._dim))
            self._sums = sums
            for code in old.codes:
                self._counts[CODE_MODALITY[int(code)]] -= 1
            self._update_gauges()
            self._maybe_compact()
            return len(old)

    def delete_item(self, item_id: str) -> None:
        """Delete one item; NotFoundError if it does not exist."""
        self.delete_items([item_id])

    def _new_sums(self, dim: int, old: Prepared, new: Prepared | None) -> dict:
        cur = self._sums if self._dim is not None else {s: zero_sums(dim) for s in old.sums}
        return apply_delta(cur, dim, old.sums, new.sums if new is not None else None)

    def _index_remove(self, old: Rows) -> None:
        """Take replaced/deleted items out of the live indexes BEFORE the SQLite commit, so a
        search (which resolves hits under the read lock) never meets an id without a row."""
        if not len(old):
            return
        fids = encode_fids(old.seqs, old.codes)
        with self._guard(), self._index_lock.write():
            for space, idx in self._live_indexes():
                idx.remove(fids)
                self._dirty[space] += len(fids)

    def _index_restore(self, old: Rows, prep: Prepared) -> None:
        """Undo ``_index_remove`` after a failed commit."""
        if not len(old):
            return
        fids = encode_fids(old.seqs, old.codes)
        with self._guard(), self._index_lock.write():
            for space, idx in self._live_indexes():
                idx.restore(prep.vectors(space), fids)

    def _index_add(self, new: Rows, prep: Prepared) -> None:
        """Put committed items into the live indexes."""
        fids = encode_fids(new.seqs, new.codes)
        with self._guard(), self._index_lock.write():
            for space, idx in self._live_indexes():
                idx.add(prep.vectors(space), fids)
                self._dirty[space] += len(fids)

    def _record(self, old: Rows, new: Rows) -> None:
        """Log a committed write for the running job's replay."""
        job = self._rebuilder.job
        if job is not None and job.recording:
            job.log.append((old, new))

    @contextlib.contextmanager
    def _guard(self) -> Any:
        """On a failed index update, re-derive the indexes from SQLite, then re-raise."""
        try:
            yield
        except Exception:
            log.exception("collection %s: index update failed; resyncing from SQLite", self.name)
            self._resync()
            raise

    def _resync(self) -> None:
        assert self._dim is not None
        expected = self._expected_fids()
        with self._index_lock.write():
            self._raw = self._reconcile("raw", None, None, expected)
            view = self._view
            if view.transform is not None:
                self._view = View(
                    view.transform,
                    view.fingerprint,
                    self._reconcile("corrected", view.transform, view.fingerprint, expected),
                )
