"""Opening an embedded collection: load the active transform and the index files, and make
each index hold exactly SQLite's items (SQLite is the source of truth; index files are a cache).

At open, the ids in each index file are diffed against SQLite and the difference is re-applied
from the raw vectors; a missing, corrupt or stale file (or one whose tombstones disagree) is
rebuilt from a snapshot. A switch interrupted by a restart (its artifact and
``pending_transform`` are durable) is resumed. ``repair_report`` says what happened per space.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from gapfix.atomic import remove_quietly
from gapfix.store.embedded.prepare import prepare
from gapfix.store.embedded.state import CollectionState, View
from gapfix.store.index import VectorIndex
from gapfix.store.index_files import IndexFileError, read_index_file
from gapfix.store.items import encode_fids, fid_seq
from gapfix.store.rebuild import Cancelled, Job
from gapfix.store.sums import Sums, add_sums, zero_sums

log = logging.getLogger(__name__)


class Repair(CollectionState):
    """Open / reconcile / rebuild of the live indexes from SQLite."""

    def _open(self) -> None:
        """Load the transform and indexes, repairing them; resume a pending switch."""
        from gapfix.transforms.artifact import load_transform

        fp = self._db.get_meta("active_transform")
        transform = None
        if fp:
            try:
                transform = load_transform(self._artifact_path(fp))
            except Exception as exc:  # a damaged artifact must not make the data unreachable
                log.error("collection %s: active transform %s unreadable: %s", self.name, fp, exc)
                self._rebuilder.error = (
                    f"active transform artifact {fp} is unreadable ({exc}); searching uncorrected"
                )
                with self._db.tx() as conn:
                    self._db.set_meta("active_transform", None)
                    self._db.clear_centroids(conn, "corrected")
                fp = None
        self._sums = {"raw": self._db.get_centroids("raw")}
        if transform is not None:
            self._sums["corrected"] = self._db.get_centroids("corrected")
        if self._dim is not None:
            for space in list(self._sums):
                if not self._sums[space]:
                    self._sums[space] = zero_sums(self._dim)
            expected = self._expected_fids()
            self._raw = self._reconcile("raw", None, None, expected)
            corrected = self._reconcile("corrected", transform, fp, expected) if transform else None
            self._view = View(transform, fp, corrected)
        else:
            self._view = View(transform, fp, None)
        if transform is None:
            for p in (self.path / "indexes").glob("corrected*"):
                remove_quietly(p)
        self._cleanup_files()
        self._update_gauges()
        pending = self._db.get_meta("pending_transform")
        if pending:
            try:
                t = load_transform(self._artifact_path(pending))
            except Exception as exc:
                self._rebuilder.error = f"pending transform {pending} could not be resumed: {exc}"
                with self._db.tx():
                    self._db.set_meta("pending_transform", None)
            else:
                log.info("collection %s: resuming the switch to transform %s", self.name, pending)
                self._start_job(Job("transform", transform=t, fingerprint=pending))

    def _expected_fids(self) -> np.ndarray:
        """Sorted FAISS ids of every item in SQLite."""
        with self._db.snapshot() as conn:
            seqs, codes = self._db.seqs_and_codes(conn)
        return np.sort(encode_fids(seqs, codes))

    def _cleanup_files(self) -> None:
        """Remove transform artifacts neither active nor pending, and leftover temp files."""
        keep = {self._db.get_meta("active_transform"), self._db.get_meta("pending_transform")}
        for p in (self.path / "transforms").glob("*"):
            if p.stem not in keep or p.name.startswith("."):
                remove_quietly(p)
        for p in self.path.glob("**/.*.tmp-*"):
            remove_quietly(p)

    def _reconcile(
        self, space: str, transform: Any, fp: str | None, expected: np.ndarray
    ) -> VectorIndex:
        """Load the ``space`` index file and make its ids equal SQLite's, or rebuild it."""
        assert self._dim is not None
        try:
            idx, side = read_index_file(
                self.path / "indexes",
                space,
                self.index_kind,
                self._dim,
                self.index_params,
                self._use_gpu,
            )
            if space == "corrected" and side.get("transform") != fp:
                raise IndexFileError("corrected index was built with another transform")
        except IndexFileError as exc:
            if expected.size == 0:  # nothing stored yet (e.g. dim given at creation)
                self.repair_report[space] = "empty"
            else:
                log.warning("collection %s: rebuilding %s index (%s)", self.name, space, exc)
                self.repair_report[space] = f"rebuilt: {exc}"
            return self._rebuild(space, transform, fp)
        present = idx.all_ids()
        if idx.deleted:
            dead = np.fromiter(idx.deleted, np.int64, len(idx.deleted))
            if np.isin(expected, dead).any():  # a stored item marked deleted: do not trust it
                self.repair_report[space] = "rebuilt: tombstones disagree with SQLite"
                return self._rebuild(space, transform, fp)
            present = np.setdiff1d(present, dead)
        extra = np.setdiff1d(present, expected, assume_unique=True)
        missing = np.setdiff1d(expected, idx.all_ids(), assume_unique=True)
        if extra.size:
            idx.remove(extra)
        if missing.size:
            with self._db.snapshot() as conn:
                rows = self._db.rows_for_seqs(fid_seq(missing), self._dim, conn)
            prep = prepare(rows, transform if space == "corrected" else None)
            idx.add(prep.vectors(space), encode_fids(rows.seqs, rows.codes))
        if extra.size or missing.size:
            log.warning(
                "collection %s: %s index repaired from SQLite (+%d, -%d)",
                self.name,
                space,
                missing.size,
                extra.size,
            )
            self.repair_report[space] = f"repaired: +{missing.size} -{extra.size}"
            self._persist(space, idx, fp)
        else:
            self.repair_report[space] = "loaded"
        return idx

    def _rebuild(self, space: str, transform: Any, fp: str | None) -> VectorIndex:
        with self._db.snapshot() as conn:
            built, _ = self._build(conn, (space,), transform, None)
        self._persist(space, built[space], fp)
        return built[space]

    def _build(
        self, conn: Any, spaces: tuple[str, ...], transform: Any, job: Job | None
    ) -> tuple[dict[str, VectorIndex], Sums | None]:
        """New indexes of ``spaces`` from every row visible in ``conn``'s snapshot, and the
        corrected sums when ``corrected`` is among them. A cancelled ``job`` stops it."""
        assert self._dim is not None
        dim = self._dim
        n = int(conn.execute("SELECT COUNT(*) FROM items").fetchone()[0])
        vecs = {s: np.empty((n, dim), np.float32) for s in spaces}
        fids = np.empty(n, np.int64)
        use_t = transform if "corrected" in spaces else None
        sums = zero_sums(dim) if use_t is not None else None
        pos = 0
        for rows in self._db.iter_rows(conn, dim):
            if job is not None and job.cancelled:
                raise Cancelled
            prep = prepare(rows, use_t)
            m = len(rows)
            fids[pos : pos + m] = encode_fids(rows.seqs, rows.codes)
            for s in spaces:
                vecs[s][pos : pos + m] = prep.vectors(s)
            if sums is not None:
                sums = add_sums(sums, prep.sums["corrected"], 1)
            pos += m
        cancelled = (lambda: job.cancelled) if job is not None else None
        built = {}
        for s in spaces:
            built[s] = VectorIndex.build(
                self.index_kind,
                dim,
                self.index_params,
                vecs[s][:pos],
                fids[:pos],
                self._use_gpu,
                cancelled,
            )
            if job is not None and job.cancelled:
                raise Cancelled
        return built, sums
