"""One collection: items in SQLite, a raw and a corrected FAISS index, the active transform.

Layout of a collection directory::

    items.sqlite            items, raw vectors, thumbnails, centroid sums, settings (WAL)
    indexes/raw.json        sidecar naming raw-<checksum>.faiss (+ corrected.json / .faiss)
    transforms/<fp>.safetensors   transform artifacts, by content fingerprint

Vector spaces. Every item has an index vector in two spaces: ``raw`` (the stored embeddings;
documents fuse ``normalise(w*img + (1-w)*txt)``) and ``corrected`` (each component through the
active transform T, then fused the same way). With no active transform the corrected space *is*
the raw space and only the raw index exists. ``search(..., corrected=True)`` corrects the raw
query with T (query-side modality) and searches the corrected index; ``corrected=False``
searches the raw index.

Consistency. SQLite is the source of truth: a write commits there first (one transaction per
batch: all or nothing), then updates the in-memory FAISS indexes. Index files are a cache,
written by ``flush`` (periodically by the store, at close, after a rebuild). At open, the ids
in each index file are diffed against SQLite and the difference is re-applied from the raw
vectors (a missing, corrupt or stale file is rebuilt), so a kill -9 at any point loses at most
the request in flight.

Concurrency. Writes are serialised by a write lock; FAISS mutations additionally take the write
side of a readers-writer lock that searches share, so many searches run in parallel (FAISS
releases the GIL) and never see a half-applied write.

Transforms. ``set_transform`` / ``fit_transform`` start a background job: (fit,) save the
artifact, pin an SQLite snapshot while recording every later write in a log, re-correct all
stored vectors and build a new corrected index, then under the write lock replay the log,
persist, commit the new active transform and swap it in with its index in one assignment.
Searches use the old transform and index until that swap. A job interrupted by a restart is
resumed at open (its artifact and ``pending_transform`` are durable). HNSW tombstone
compaction uses the same job machinery.
"""

from __future__ import annotations

import contextlib
import json
import logging
import numbers
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gapfix.atomic import file_checksum, fsync_dir, remove_quietly, temp_path
from gapfix.errors import InputError, NotFittedError
from gapfix.metrics import COLLECTION_GAP, COLLECTION_ITEMS, STAGE_LATENCY
from gapfix.store._rwlock import RWLock
from gapfix.store.db import ItemDB, Rows
from gapfix.store.errors import ConflictError, NotFoundError
from gapfix.store.index import (
    IndexFileError,
    IndexParams,
    VectorIndex,
    read_index_file,
    write_index_file,
)
from gapfix.store.items import (
    CODE_MODALITY,
    ITEM_MODALITIES,
    MODALITY_CODE,
    SEQ_BITS,
    SEQ_MASK,
    Hit,
    Item,
    ItemIn,
    check_item_id,
    check_modalities,
    check_query_vectors,
    encode_fids,
    fid_seq,
    fuse,
    validate_batch,
)
from gapfix.validation import check_modality

log = logging.getLogger(__name__)

MAX_K = 1000
SUPERSEDED_POLL_S = 0.05  # how often a request waiting on its own transform job checks it
COMPONENTS = ("image", "text")


def _is_int(value: Any) -> bool:
    """An integer, numpy's included; not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)


@dataclass(frozen=True)
class _View:
    """The active transform and the index of its corrected vectors (swapped as one)."""

    transform: Any = None
    fingerprint: str | None = None
    corrected: VectorIndex | None = None


@dataclass(frozen=True)
class Searched:
    """Hits per query and the transform whose corrected space they came from (None: raw)."""

    hits: list[list[Hit]]
    transform: Any = None


@dataclass
class _Prepared:
    """Index vectors of some rows in both spaces, and their centroid-sum contributions."""

    raw: np.ndarray
    corrected: np.ndarray | None
    sums: dict[str, dict[str, tuple[int, np.ndarray]]]


@dataclass
class RawVectors:
    """Stored raw embeddings: all image / text vectors, and the document pairs (row i <-> i)."""

    image: np.ndarray
    text: np.ndarray
    pair_image: np.ndarray
    pair_text: np.ndarray
    counts: dict[str, int]


class _Cancelled(Exception):
    pass


@dataclass
class _Job:
    kind: str  # "transform" | "compact"
    transform: Any = None
    fingerprint: str | None = None
    fit: Any = None  # an unfitted GapTransform to fit first
    spaces: tuple[str, ...] = ()
    log: list[tuple[Rows, Rows]] = field(default_factory=list)
    recording: bool = False
    cancelled: bool = False
    phase: str = "queued"
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None
    started_at: float = field(default_factory=time.time)
    thread: threading.Thread | None = None

    def describe(self) -> dict[str, Any]:
        target = self.transform if self.transform is not None else self.fit
        return {
            "kind": self.kind,
            "phase": self.phase,
            "method": getattr(target, "method", None),
            "started_at": self.started_at,
        }


def _zero_sums(dim: int) -> dict[str, tuple[int, np.ndarray]]:
    return {m: (0, np.zeros(dim, np.float64)) for m in COMPONENTS}


def _add_sums(
    a: dict[str, tuple[int, np.ndarray]], b: dict[str, tuple[int, np.ndarray]], sign: int
) -> dict:
    return {m: (a[m][0] + sign * b[m][0], a[m][1] + sign * b[m][1]) for m in COMPONENTS}


def _check_maps_finite(transform: Any, param: str) -> None:
    """InputError unless ``transform`` maps generic vectors to finite non-zero ones: a NaN, inf
    or overflowing parameter would otherwise fill the corrected index with garbage."""
    probe = np.random.default_rng(0).standard_normal((16, int(transform.dim_)))
    probe = (probe / np.linalg.norm(probe, axis=1, keepdims=True)).astype(np.float32)
    for modality in COMPONENTS:
        for role in (None, "query"):
            y = transform.transform(probe, modality, role=role)
            if not np.isfinite(y).all() or not y.any(axis=1).all():
                raise InputError(
                    f"the transform maps {modality} vectors to NaN, inf or zero; check its "
                    "parameters",
                    param=param,
                )


def _gap(sums: dict[str, tuple[int, np.ndarray]] | None) -> float | None:
    if not sums or sums["image"][0] < 1 or sums["text"][0] < 1:
        return None
    (ni, si), (nt, st) = sums["image"], sums["text"]
    return float(np.linalg.norm(si / ni - st / nt))


class Collection:
    """A collection of items; obtain one from ``Store.create_collection`` / ``Store.get``.

    Thread-safe: any number of threads may search while one writes (writes are serialised).
    """

    compact_min_tombstones = 1000
    compact_ratio = 0.25

    def __init__(self, path: Path, use_gpu: bool = False) -> None:
        self.path = path
        self._use_gpu = use_gpu
        self._db = ItemDB(path / "items.sqlite")
        self.name: str = self._db.get_meta("name")
        self.index_kind: str = self._db.get_meta("index")
        self.index_params = IndexParams.from_dict(
            self.index_kind, self._db.get_meta("index_params", {})
        )
        self.created_at: float = self._db.get_meta("created_at", 0.0)
        self._dim: int | None = self._db.get_meta("dim")
        self._write_lock = threading.RLock()
        self._index_lock = RWLock()
        self._raw: VectorIndex | None = None
        self._view = _View()
        self._job: _Job | None = None
        self._last_error: str | None = None
        self._closed = False
        self._dirty = {"raw": 0, "corrected": 0}
        self._counts = self._db.counts()
        self._sums: dict[str, dict[str, tuple[int, np.ndarray]]] = {}
        self.repair_report: dict[str, str] = {}
        with self._write_lock:
            self._open()

    # ------------------------------------------------------------------ creation / opening
    @staticmethod
    def initialize(path: Path, name: str, index: str, dim: int | None, index_params: dict) -> None:
        """Write the settings of a new collection into ``path`` (a fresh directory)."""
        db = ItemDB(path / "items.sqlite")
        try:
            with db.tx():
                db.set_meta("name", name)
                db.set_meta("index", index)
                db.set_meta("index_params", index_params)
                db.set_meta("dim", dim)
                db.set_meta("created_at", time.time())
                db.set_meta("active_transform", None)
                db.set_meta("pending_transform", None)
        finally:
            db.close()

    def _artifact_path(self, fp: str) -> Path:
        return self.path / "transforms" / f"{fp}.safetensors"

    def _open(self) -> None:
        from gapfix.transforms.artifact import load_transform

        fp = self._db.get_meta("active_transform")
        transform = None
        if fp:
            try:
                transform = load_transform(self._artifact_path(fp))
            except Exception as exc:  # a damaged artifact must not make the data unreachable
                log.error("collection %s: active transform %s unreadable: %s", self.name, fp, exc)
                self._last_error = (
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
                    self._sums[space] = _zero_sums(self._dim)
            with self._db.snapshot() as conn:
                seqs, codes = self._db.seqs_and_codes(conn)
            expected = np.sort(encode_fids(seqs, codes))
            self._raw = self._reconcile("raw", None, None, expected)
            corrected = self._reconcile("corrected", transform, fp, expected) if transform else None
            self._view = _View(transform, fp, corrected)
        else:
            self._view = _View(transform, fp, None)
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
                self._last_error = f"pending transform {pending} could not be resumed: {exc}"
                with self._db.tx():
                    self._db.set_meta("pending_transform", None)
            else:
                log.info("collection %s: resuming the switch to transform %s", self.name, pending)
                self._start_job(_Job("transform", transform=t, fingerprint=pending))

    def _cleanup_files(self) -> None:
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
            prep = self._prepare(rows, transform if space == "corrected" else None)
            vecs = prep.corrected if space == "corrected" else prep.raw
            idx.add(vecs, encode_fids(rows.seqs, rows.codes))
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

    # ------------------------------------------------------------------ helpers
    def _check_open(self) -> None:
        if self._closed:
            raise NotFoundError(
                f"collection {self.name!r} does not exist (deleted or closed)", "collection"
            )

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """A read outside the index lock: a delete or close that closes the database under it
        is a NotFoundError, like any later call, not the driver's error (a 500)."""
        self._check_open()
        try:
            yield
        except (sqlite3.Error, RuntimeError):
            self._check_open()  # closed meanwhile: raises NotFoundError
            raise
        self._check_open()  # deleted while it read: what it read is gone too

    def _prepare(self, rows: Rows, transform: Any) -> _Prepared:
        """Index vectors of ``rows`` (raw, and corrected when ``transform`` is given) + sums."""
        raw = fuse(rows.image, rows.text, rows.codes, rows.weights)
        comps = {"image": rows.image[rows.has_image], "text": rows.text[rows.has_text]}
        sums = {"raw": {m: (len(c), c.sum(axis=0, dtype=np.float64)) for m, c in comps.items()}}
        corrected = None
        if transform is not None:
            with STAGE_LATENCY.labels("correct").time():
                ci = np.zeros_like(rows.image)
                ct = np.zeros_like(rows.text)
                if rows.has_image.any():
                    ci[rows.has_image] = transform.transform(comps["image"], "image")
                if rows.has_text.any():
                    ct[rows.has_text] = transform.transform(comps["text"], "text")
                corrected = fuse(ci, ct, rows.codes, rows.weights)
            sums["corrected"] = {
                "image": (len(comps["image"]), ci[rows.has_image].sum(axis=0, dtype=np.float64)),
                "text": (len(comps["text"]), ct[rows.has_text].sum(axis=0, dtype=np.float64)),
            }
        return _Prepared(raw, corrected, sums)

    def _persist(self, space: str, idx: VectorIndex, fp: str | None) -> None:
        write_index_file(
            idx, self.path / "indexes", space, {"transform": fp if space == "corrected" else None}
        )
        self._dirty[space] = 0

    def _update_gauges(self) -> None:
        for m in ITEM_MODALITIES:
            COLLECTION_ITEMS.labels(self.name, m).set(self._counts.get(m, 0))
        raw = _gap(self._sums.get("raw"))
        corr = _gap(self._sums.get("corrected")) if self._view.transform is not None else raw
        if raw is not None:
            COLLECTION_GAP.labels(self.name, "raw").set(raw)
        if corr is not None:
            COLLECTION_GAP.labels(self.name, "corrected").set(corr)

    def remove_gauges(self) -> None:
        """Drop this collection's metric series (after it is deleted)."""
        for m in ITEM_MODALITIES:
            with contextlib.suppress(KeyError):
                COLLECTION_ITEMS.remove(self.name, m)
        for s in ("raw", "corrected"):
            with contextlib.suppress(KeyError):
                COLLECTION_GAP.remove(self.name, s)

    def _init_dim(self, dim: int) -> None:
        """Fix the dimension (first vectors or first transform): create the empty indexes."""
        self._dim = dim
        self._raw = VectorIndex(self.index_kind, dim, self.index_params, self._use_gpu)
        view = self._view
        corrected = (
            VectorIndex(self.index_kind, dim, self.index_params, self._use_gpu)
            if view.transform
            else None
        )
        self._sums = {"raw": _zero_sums(dim)}
        if view.transform is not None:
            self._sums["corrected"] = _zero_sums(dim)
        self._view = _View(view.transform, view.fingerprint, corrected)

    # ------------------------------------------------------------------ info
    @property
    def dim(self) -> int | None:
        """Embedding dimension (None until the first vectors or transform fix it)."""
        return self._dim

    def count(self) -> int:
        """Number of items."""
        return sum(self._counts.values())

    def counts(self) -> dict[str, int]:
        """Items per modality: ``{"image": n, "text": n, "document": n}``."""
        return dict(self._counts)

    def info(self) -> dict[str, Any]:
        """JSON-safe summary for listings."""
        view = self._view
        return {
            "name": self.name,
            "index": self.index_kind,
            "index_params": self.index_params.to_dict(),
            "dim": self._dim,
            "count": self.count(),
            "counts": self.counts(),
            "transform": view.transform.method if view.transform is not None else None,
            "transform_status": self.transform_status["status"],
            "created_at": self.created_at,
            "gpu": bool(self._raw.use_gpu) if self._raw is not None else self._use_gpu,
        }

    # ------------------------------------------------------------------ writes
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
            new_prep = self._prepare(new, view.transform)
            old_prep = self._prepare(old, view.transform)
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
            old_prep = self._prepare(old, view.transform)
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

    def _new_sums(self, dim: int, old: _Prepared, new: _Prepared | None) -> dict:
        cur = self._sums if self._dim is not None else {s: _zero_sums(dim) for s in old.sums}
        out = {}
        for space in old.sums:
            s = _add_sums(cur.get(space) or _zero_sums(dim), old.sums[space], -1)
            if new is not None:
                s = _add_sums(s, new.sums[space], 1)
            out[space] = s
        return out

    def _live_indexes(self) -> list[tuple[str, VectorIndex]]:
        return [(sp, i) for sp, i in (("raw", self._raw), ("corrected", self._view.corrected)) if i]

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

    def _index_restore(self, old: Rows, prep: _Prepared) -> None:
        """Undo ``_index_remove`` after a failed commit."""
        if not len(old):
            return
        fids = encode_fids(old.seqs, old.codes)
        with self._guard(), self._index_lock.write():
            for space, idx in self._live_indexes():
                idx.restore(prep.raw if space == "raw" else prep.corrected, fids)

    def _index_add(self, new: Rows, prep: _Prepared) -> None:
        """Put committed items into the live indexes."""
        fids = encode_fids(new.seqs, new.codes)
        with self._guard(), self._index_lock.write():
            for space, idx in self._live_indexes():
                idx.add(prep.raw if space == "raw" else prep.corrected, fids)
                self._dirty[space] += len(fids)

    def _record(self, old: Rows, new: Rows) -> None:
        job = self._job
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
        with self._db.snapshot() as conn:
            seqs, codes = self._db.seqs_and_codes(conn)
        expected = np.sort(encode_fids(seqs, codes))
        with self._index_lock.write():
            self._raw = self._reconcile("raw", None, None, expected)
            view = self._view
            if view.transform is not None:
                self._view = _View(
                    view.transform,
                    view.fingerprint,
                    self._reconcile("corrected", view.transform, view.fingerprint, expected),
                )

    # ------------------------------------------------------------------ reads
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
        if not (_is_int(offset) and _is_int(limit)) or offset < 0 or not 1 <= limit <= 10_000:
            raise InputError(
                f"offset must be an integer >= 0 and limit an integer in [1, 10000], got "
                f"{offset!r} and {limit!r}",
                param="limit",
            )
        with self._reading():
            return self._db.list_ids(int(offset), int(limit))

    def transform_view(self) -> tuple[Any, str | None]:
        """The active transform and its fingerprint, read together from one view (a
        concurrent switch replaces both at once, so they always belong together)."""
        view = self._view
        return view.transform, view.fingerprint

    def active_artifact(self) -> tuple[str, bytes] | None:
        """Fingerprint and artifact bytes of the active transform (None: no transform)."""
        with self._write_lock:  # replaced artifacts are removed under it
            fp = self._view.fingerprint
            if fp is None:
                return None
            return fp, self._artifact_path(fp).read_bytes()

    def correct(self, vectors: Any, modality: str) -> np.ndarray:
        """Raw vectors of ``modality`` through the active transform (unit length, float32)."""
        check_modality(modality)
        q = check_query_vectors(vectors, self._dim)
        transform = self._view.transform
        if transform is None:
            return q
        with STAGE_LATENCY.labels("correct").time():
            return np.ascontiguousarray(transform.transform(q, modality), np.float32)

    @staticmethod
    def _check_k(k: Any) -> int:
        if not _is_int(k) or not 1 <= k <= MAX_K:
            raise InputError(f"k must be an integer in [1, {MAX_K}], got {k!r}", param="k")
        return int(k)

    def search(
        self,
        vectors: Any,
        query_modality: str,
        k: int = 10,
        modalities: list[str] | None = None,
        corrected: bool = True,
    ) -> list[list[Hit]]:
        """Top-k items for each raw query vector ((nq, d) or (d,)) of ``query_modality``.

        ``corrected=True`` corrects the queries with the active transform and searches the
        corrected index; ``False`` searches the raw index. ``modalities`` filters the item
        modalities returned (default: all). Scores are inner products of unit vectors.
        """
        return self.search_view(vectors, query_modality, k, modalities, corrected).hits

    def search_view(
        self,
        vectors: Any,
        query_modality: str,
        k: int = 10,
        modalities: list[str] | None = None,
        corrected: bool = True,
    ) -> Searched:
        """`search`, also naming the transform of the space searched (read in the same view)."""
        check_modality(query_modality, "query_modality")
        k = self._check_k(k)
        mods = check_modalities(modalities)
        self._check_open()
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

    def search_by_id(
        self,
        item_id: str,
        k: int = 10,
        modalities: list[str] | None = None,
        corrected: bool = True,
        exclude_self: bool = True,
    ) -> list[Hit]:
        """Top-k neighbours of a stored item's own index vector (itself excluded by default)."""
        return self.search_by_id_view(item_id, k, modalities, corrected, exclude_self).hits[0]

    def search_by_id_view(
        self,
        item_id: str,
        k: int = 10,
        modalities: list[str] | None = None,
        corrected: bool = True,
        exclude_self: bool = True,
    ) -> Searched:
        """`search_by_id` as one query's `Searched`, naming the transform of the space searched."""
        check_item_id(item_id)
        k = self._check_k(k)
        mods = check_modalities(modalities)
        self._check_open()
        with self._index_lock.read():
            view = self._view
            rows = None
            if self._dim is not None:
                with self._db.reader() as conn:
                    rows = self._db.rows_for_ids([item_id], self._dim, conn)
            if rows is None or not len(rows):
                raise NotFoundError(f"item {item_id!r} not found", param="id")
            use_corrected = corrected and view.transform is not None
            prep = self._prepare(rows, view.transform if use_corrected else None)
            q = prep.corrected if use_corrected else prep.raw
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

    # ------------------------------------------------------------------ raw data and statistics
    def raw_vectors(self) -> RawVectors:
        """All stored raw embeddings from one consistent snapshot (for fitting transforms)."""
        self._check_open()
        dim = self._dim or 0
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("image", "text", "pi", "pt")}
        if self._dim is not None:
            with self._reading(), self._db.snapshot() as conn:
                for rows in self._db.iter_rows(conn, dim):
                    parts["image"].append(rows.image[rows.has_image])
                    parts["text"].append(rows.text[rows.has_text])
                    doc = rows.has_image & rows.has_text
                    parts["pi"].append(rows.image[doc])
                    parts["pt"].append(rows.text[doc])

        def cat(xs: list[np.ndarray]) -> np.ndarray:
            return np.concatenate(xs) if xs else np.zeros((0, dim), np.float32)

        return RawVectors(
            cat(parts["image"]),
            cat(parts["text"]),
            cat(parts["pi"]),
            cat(parts["pt"]),
            self.counts(),
        )

    def gap_statistics(self, max_rows: int = 5000) -> dict[str, Any]:
        """Gap statistics of the stored vectors, raw and corrected (``gapfix.stats``).

        Computed on at most ``max_rows`` vectors per modality (a fixed random sample); paired
        statistics when every stored vector belongs to a document. ``centroid_gap`` is exact
        over everything stored (kept up to date on every write; also the Prometheus gauge).
        """
        from gapfix.stats import gap_statistics

        self._check_open()
        view = self._view
        rng = np.random.default_rng(0)
        img = txt = np.zeros((0, self._dim or 0), np.float32)
        sampled = paired = False
        counts = self.counts()
        if self._dim is not None:
            with self._reading(), self._db.snapshot() as conn:  # sample seqs: never load all
                seqs, codes = self._db.seqs_and_codes(conn)
                counts = {m: int((codes == c).sum()) for m, c in MODALITY_CODE.items()}
                paired = counts["image"] == 0 and counts["text"] == 0 and counts["document"] >= 2

                def pick(mask: np.ndarray) -> np.ndarray:
                    nonlocal sampled
                    pool = seqs[mask]
                    if len(pool) > max_rows:
                        sampled = True
                        pool = np.sort(rng.choice(pool, max_rows, replace=False))
                    return pool

                doc = codes == MODALITY_CODE["document"]
                if paired:
                    rows = self._db.rows_for_seqs(pick(doc), self._dim, conn)
                    img, txt = rows.image, rows.text
                else:
                    pi = pick(doc | (codes == MODALITY_CODE["image"]))
                    pt = pick(doc | (codes == MODALITY_CODE["text"]))
                    rows = self._db.rows_for_seqs(np.union1d(pi, pt), self._dim, conn)
                    img = rows.image[np.isin(rows.seqs, pi) & rows.has_image]
                    txt = rows.text[np.isin(rows.seqs, pt) & rows.has_text]
        with self._write_lock:
            raw_gap = _gap(self._sums.get("raw"))
            corr_gap = _gap(self._sums.get("corrected")) if view.transform is not None else raw_gap
        out: dict[str, Any] = {
            "counts": counts,
            "paired": paired,
            "sampled": sampled,
            "rows": {"image": len(img), "text": len(txt)},
            "transform": view.transform.method if view.transform is not None else None,
            "centroid_gap": {"raw": raw_gap, "corrected": corr_gap},
            "raw": None,
            "corrected": None,
        }
        if len(img) < 2 or len(txt) < 2:
            out["note"] = "gap statistics need at least 2 image and 2 text vectors"
            return out
        out["raw"] = gap_statistics(img, txt, paired=paired)
        if view.transform is None:
            out["corrected"] = out["raw"]
        else:
            ci = view.transform.transform(img, "image")
            ct = view.transform.transform(txt, "text")
            out["corrected"] = gap_statistics(ci, ct, paired=paired)
        self._update_gauges()
        return out

    # ------------------------------------------------------------------ transforms
    @property
    def active_transform(self) -> Any:
        """The active GapTransform, or None (corrected = raw)."""
        return self._view.transform

    @property
    def transform_status(self) -> dict[str, Any]:
        """``{"status": "active"|"rebuilding"|"failed", "error", "job"}``."""
        job = self._job
        if job is not None and not job.done.is_set():
            return {"status": "rebuilding", "error": None, "job": job.describe()}
        if self._last_error is not None:
            return {"status": "failed", "error": self._last_error, "job": None}
        return {"status": "active", "error": None, "job": None}

    def transform_info(self) -> dict[str, Any]:
        """Active transform summary (method, params, fit stats, auto's fit table) + status."""
        view = self._view
        summary = view.transform.to_summary() if view.transform is not None else {"method": None}
        return {**self.transform_status, "fingerprint": view.fingerprint, "active": summary}

    def wait_transform(self, timeout: float | None = None, job: _Job | None = None) -> bool:
        """Wait for the running transform job (or ``job``); True when it finished and is active.

        Waiting on a ``job`` that a later request superseded raises ConflictError: its
        transform will never be active, whatever the collection's status says.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            current = self._job if job is None else job
            if current is None:
                return self._last_error is None
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            step = remaining
            if job is not None:  # own job: look for being superseded now and then
                step = SUPERSEDED_POLL_S if remaining is None else min(SUPERSEDED_POLL_S, remaining)
            finished = current.done.wait(step)
            if job is not None:
                if job.cancelled:
                    raise ConflictError(
                        "this transform was superseded by a later transform request before it "
                        "became active",
                        param="method",
                    )
                if finished:
                    return job.error is None
                if deadline is not None and time.monotonic() >= deadline:
                    return False
            elif not finished:
                return False

    def set_transform(self, transform: Any, wait_seconds: float | None = None) -> bool:
        """Activate a fitted transform (None: no correction); re-corrects in the background.

        Returns True when the new transform is active within ``wait_seconds`` (None: wait
        until done), False while it is still rebuilding (see ``transform_status``).
        """
        if transform is not None:
            try:
                tdim = int(transform.dim_)
            except (AttributeError, NotFittedError):
                raise InputError("the transform is not fitted", param="transform") from None
            if self._dim is not None and tdim != self._dim:
                raise InputError(
                    f"transform dimension {tdim} does not match the collection's dimension "
                    f"{self._dim}",
                    param="transform",
                )
            self.index_params.check_dim(self.index_kind, tdim)
            _check_maps_finite(transform, "transform")
        with self._write_lock:
            self._check_open()
            if transform is None:
                self._activate_none()
                return True
            fp = self._save_artifact(transform)
            from gapfix.transforms.artifact import load_transform

            own = load_transform(self._artifact_path(fp))
            if self._dim is None:  # nothing stored: activate at once and fix the dimension
                self._cancel_job()
                with self._db.tx():
                    self._db.set_meta("dim", tdim)
                    self._db.set_meta("active_transform", fp)
                    self._db.set_meta("pending_transform", None)
                self._view = _View(own, fp, None)
                self._init_dim(tdim)
                self._last_error = None
                self._cleanup_files()
                return True
            job = _Job("transform", transform=own, fingerprint=fp)
            self._start_job(job)
        return self.wait_transform(wait_seconds, job)

    def fit_transform(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        objective: str | None = None,
        wait_seconds: float | None = None,
    ) -> bool:
        """Fit ``method`` on the stored raw vectors and activate it (in the background).

        Paired methods (and ``auto``) fit on documents (items with both vectors); unpaired
        methods on every image vs every text vector. ``objective`` is ``auto``'s (default
        balanced). Bad method/params or too little data -> InputError before anything starts.
        Returns like ``set_transform``; a failed fit leaves the old transform active and
        ``transform_status`` "failed" with the error.
        """
        from gapfix.transforms import make_transform

        params = dict(params or {})
        if method == "auto":
            if objective is not None:
                params.setdefault("objective", objective)
            if params.get("objective", "balanced") == "zeroshot":
                raise InputError(
                    "objective 'zeroshot' needs class labels; collections have none", "objective"
                )
        if params.get("query_text_mean"):
            raise InputError(
                "query_text_mean needs separate query texts to fit; a collection has none",
                param="params.query_text_mean",
            )
        transform = make_transform(method, **params)
        with self._write_lock:
            self._check_open()
            c = self.counts()
            need = 4 if method == "auto" else 2
            if transform.paired:
                if c["document"] < need:
                    raise InputError(
                        f"method {method!r} needs paired data: documents (items with both an image "
                        f"and a text vector); this collection has {c['document']}",
                        param="method",
                    )
            else:
                n_img, n_txt = c["image"] + c["document"], c["text"] + c["document"]
                if n_img < 2 or n_txt < 2:
                    raise InputError(
                        f"fitting needs at least 2 image and 2 text vectors; this collection has "
                        f"{n_img} and {n_txt}",
                        param="method",
                    )
            job = _Job("transform", fit=transform)
            self._start_job(job)
        return self.wait_transform(wait_seconds, job)

    def _save_artifact(self, transform: Any) -> str:
        tdir = self.path / "transforms"
        tdir.mkdir(exist_ok=True)
        tmp = temp_path(tdir / "transform.safetensors")
        try:
            transform.save(tmp)
            fp = file_checksum(tmp)[:16]
            tmp.replace(self._artifact_path(fp))
        finally:
            remove_quietly(tmp)
        fsync_dir(tdir)
        return fp

    def _activate_none(self) -> None:
        self._cancel_job()
        with self._db.tx() as conn:
            self._db.set_meta("active_transform", None)
            self._db.set_meta("pending_transform", None)
            self._db.clear_centroids(conn, "corrected")
        with self._index_lock.write():
            self._view = _View()
        self._sums.pop("corrected", None)
        for p in (self.path / "indexes").glob("corrected*"):
            remove_quietly(p)
        self._last_error = None
        self._cleanup_files()
        self._update_gauges()

    def _cancel_job(self) -> None:
        job = self._job
        if job is not None:
            job.cancelled = True
            job.recording = False
            self._job = None

    def _maybe_compact(self) -> None:
        if self._job is not None or self._raw is None:
            return
        spaces = tuple(
            space
            for space, idx in (("raw", self._raw), ("corrected", self._view.corrected))
            if idx is not None
            and len(idx.deleted) >= self.compact_min_tombstones
            and idx.tombstone_ratio >= self.compact_ratio
        )
        if spaces:
            self._start_job(_Job("compact", spaces=spaces))

    def _start_job(self, job: _Job) -> None:
        """Start ``job`` (under the write lock), superseding a running one."""
        old = self._job
        self._cancel_job()
        if old is not None and old.kind == "transform":
            with self._db.tx():  # the superseded switch must not resume after a restart
                self._db.set_meta("pending_transform", None)
        self._last_error = None
        self._job = job
        job.thread = threading.Thread(
            target=self._run_job, args=(job,), name=f"gapfix-rebuild-{self.name}", daemon=True
        )
        job.thread.start()

    def _run_job(self, job: _Job) -> None:
        try:
            if job.fit is not None:
                job.phase = "fitting"
                rv = self.raw_vectors()
                t = job.fit
                img, txt = (rv.pair_image, rv.pair_text) if t.paired else (rv.image, rv.text)
                t.fit(img, txt)
                _check_maps_finite(t, "params")
                job.transform = t
            with self._write_lock:
                if job.cancelled:
                    return
                if job.kind == "transform":
                    if job.fingerprint is None:
                        job.fingerprint = self._save_artifact(job.transform)
                        from gapfix.transforms.artifact import load_transform

                        job.transform = load_transform(self._artifact_path(job.fingerprint))
                    with self._db.tx():
                        self._db.set_meta("pending_transform", job.fingerprint)
                    spaces = ["corrected"]
                    if self._raw is not None and self._raw.tombstone_ratio >= self.compact_ratio:
                        spaces.append("raw")
                    job.spaces = tuple(spaces)
                else:
                    job.transform = self._view.transform
                    job.fingerprint = self._view.fingerprint
                snap = self._db.snapshot()
                conn = snap.__enter__()
                job.recording = True
            try:
                job.phase = "indexing"
                built, sums = self._build(conn, job.spaces, job.transform, job)
            finally:
                snap.__exit__(None, None, None)
            with self._write_lock:
                if job.cancelled:
                    return
                job.phase = "switching"
                self._commit_job(job, built, sums)
        except _Cancelled:
            return
        except Exception as exc:
            log.exception("collection %s: %s job failed", self.name, job.kind)
            job.error = f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"
            with self._write_lock:
                if not job.cancelled and self._job is job and job.kind == "transform":
                    # a failed compaction is only logged; a failed switch shows in the status
                    self._last_error = job.error
                    with contextlib.suppress(Exception), self._db.tx():
                        self._db.set_meta("pending_transform", None)
                    self._cleanup_files()
        finally:
            with self._write_lock:
                job.recording = False
                if self._job is job:
                    self._job = None
                job.done.set()

    def _build(
        self, conn: Any, spaces: tuple[str, ...], transform: Any, job: _Job | None
    ) -> tuple[dict[str, VectorIndex], dict[str, tuple[int, np.ndarray]] | None]:
        """New indexes of ``spaces`` from every row visible in ``conn``'s snapshot."""
        assert self._dim is not None
        dim = self._dim
        n = int(conn.execute("SELECT COUNT(*) FROM items").fetchone()[0])
        vecs = {s: np.empty((n, dim), np.float32) for s in spaces}
        fids = np.empty(n, np.int64)
        use_t = transform if "corrected" in spaces else None
        sums = _zero_sums(dim) if use_t is not None else None
        pos = 0
        for rows in self._db.iter_rows(conn, dim):
            if job is not None and job.cancelled:
                raise _Cancelled
            prep = self._prepare(rows, use_t)
            m = len(rows)
            fids[pos : pos + m] = encode_fids(rows.seqs, rows.codes)
            for s in spaces:
                vecs[s][pos : pos + m] = prep.corrected if s == "corrected" else prep.raw
            if sums is not None:
                sums = _add_sums(sums, prep.sums["corrected"], 1)
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
                raise _Cancelled
        return built, sums

    def _commit_job(self, job: _Job, built: dict[str, VectorIndex], sums: Any) -> None:
        """Under the write lock: replay the log, persist, commit, swap."""
        for old, new in job.log:
            prep = self._prepare(new, job.transform if "corrected" in built else None)
            old_f, new_f = encode_fids(old.seqs, old.codes), encode_fids(new.seqs, new.codes)
            for s, idx in built.items():
                idx.remove(old_f)
                idx.add(prep.corrected if s == "corrected" else prep.raw, new_f)
            if sums is not None:
                sums = _add_sums(sums, self._prepare(old, job.transform).sums["corrected"], -1)
                sums = _add_sums(sums, prep.sums["corrected"], 1)
        job.recording = False
        for s, idx in built.items():
            self._persist(s, idx, job.fingerprint)
        if job.kind == "transform":
            with self._db.tx() as conn:
                self._db.set_meta("active_transform", job.fingerprint)
                self._db.set_meta("pending_transform", None)
                self._db.put_centroids(conn, "corrected", sums)
        with self._index_lock.write():
            if "raw" in built:
                self._raw = built["raw"]
            if job.kind == "transform":
                self._view = _View(job.transform, job.fingerprint, built["corrected"])
            elif "corrected" in built:
                self._view = _View(self._view.transform, self._view.fingerprint, built["corrected"])
        if job.kind == "transform":
            self._sums["corrected"] = sums
        self._last_error = None
        job.phase = "done"
        self._cleanup_files()
        self._update_gauges()
        log.info("collection %s: %s job done (%s)", self.name, job.kind, ", ".join(built))

    # ------------------------------------------------------------------ lifecycle
    def flush(self) -> None:
        """Write index files that changed since the last flush (the data is in SQLite already)."""
        with self._write_lock:
            if self._closed:
                return
            view = self._view
            for space, idx in (("raw", self._raw), ("corrected", view.corrected)):
                if idx is not None and self._dirty[space]:
                    self._persist(space, idx, view.fingerprint)

    def close(self, flush: bool = True) -> None:
        """Stop a running job (a pending transform resumes at the next open), flush, close."""
        with self._write_lock:
            if self._closed:
                return
            job = self._job
            if job is not None:
                job.cancelled = True
                job.recording = False
        if job is not None and job.thread is not None:
            job.thread.join()
        with self._write_lock:
            if flush:
                self.flush()
            self._closed = True
            self._job = None
        with self._index_lock.write():
            self._db.close()
