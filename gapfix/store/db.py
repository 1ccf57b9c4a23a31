"""SQLite storage of one collection: items, raw vectors (float32 BLOBs), thumbnails, metadata,
running centroid sums, and the collection's settings (``meta``).

WAL journal with ``synchronous=FULL``: a committed write survives kill -9 and power loss.
One writer connection (callers serialise writes with the collection's write lock); readers
take connections from a small pool and see committed snapshots, so searches never block on
writes. ``seq`` (INTEGER PRIMARY KEY AUTOINCREMENT) is never reused, which is what lets the
FAISS id of an item encode its seq.
"""

from __future__ import annotations

import contextlib
import json
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gapfix.store.items import CODE_MODALITY, MODALITY_CODE, Batch, Item

SCHEMA_VERSION = 1
SQL_CHUNK = 900  # host parameters per IN (...) list
READ_CHUNK = 8192

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    modality INTEGER NOT NULL,
    weight REAL NOT NULL,
    metadata TEXT NOT NULL,
    has_thumb INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    image BLOB,
    text BLOB,
    caption TEXT
);
CREATE TABLE IF NOT EXISTS thumbnails (seq INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS centroids (
    space TEXT NOT NULL, modality TEXT NOT NULL, n INTEGER NOT NULL, sum BLOB NOT NULL,
    PRIMARY KEY (space, modality)
);
"""


@dataclass
class Rows:
    """Stored rows in array form: components are unit-length; missing ones are zero rows."""

    seqs: np.ndarray  # int64
    codes: np.ndarray  # int64 modality codes
    weights: np.ndarray  # float32 image weight
    image: np.ndarray  # (n, d) float32
    text: np.ndarray  # (n, d) float32
    has_image: np.ndarray  # bool
    has_text: np.ndarray  # bool
    ids: list[str] | None = None

    def __len__(self) -> int:
        return len(self.seqs)

    @classmethod
    def from_batch(cls, batch: Batch, seqs: Sequence[int]) -> Rows:
        return cls(
            np.asarray(seqs, np.int64),
            batch.codes,
            batch.weights,
            batch.image,
            batch.text,
            batch.has_image,
            batch.has_text,
            list(batch.ids),
        )

    @classmethod
    def empty(cls, dim: int) -> Rows:
        z = np.zeros((0, dim), np.float32)
        return cls(
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
            np.zeros(0, np.float32),
            z,
            z.copy(),
            np.zeros(0, bool),
            np.zeros(0, bool),
            [],
        )


def _rows(records: list[tuple[Any, ...]], dim: int) -> Rows:
    """Rows from ``(seq, id, modality, weight, image, text)`` records."""
    n = len(records)
    image = np.zeros((n, dim), np.float32)
    text = np.zeros((n, dim), np.float32)
    has_image = np.zeros(n, bool)
    has_text = np.zeros(n, bool)
    for i, (_, _, _, _, img, txt) in enumerate(records):
        if img is not None:
            image[i] = np.frombuffer(img, np.float32)
            has_image[i] = True
        if txt is not None:
            text[i] = np.frombuffer(txt, np.float32)
            has_text[i] = True
    return Rows(
        seqs=np.fromiter((r[0] for r in records), np.int64, n),
        codes=np.fromiter((r[2] for r in records), np.int64, n),
        weights=np.fromiter((r[3] for r in records), np.float32, n),
        image=image,
        text=text,
        has_image=has_image,
        has_text=has_text,
        ids=[r[1] for r in records],
    )


_ROW_COLS = "seq, id, modality, weight, image, text"


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=60)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=60000")
    return conn


class ItemDB:
    """Items of one collection in ``items.sqlite``. Write methods need the caller's write lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._w = _connect(path)
        self._w.executescript(_SCHEMA)
        cols = {r[1] for r in self._w.execute("PRAGMA table_info(items)")}
        if "caption" not in cols:  # a collection created before captions were stored
            self._w.execute("ALTER TABLE items ADD COLUMN caption TEXT")
        self._pool: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()  # idle readers
        self._lock = threading.Lock()
        self._closed = False
        if self.get_meta("schema_version") is None:
            with self.tx():
                self.set_meta("schema_version", SCHEMA_VERSION)

    # ------------------------------------------------------------------ connections
    @contextlib.contextmanager
    def reader(self) -> Iterator[sqlite3.Connection]:
        """A pooled read connection (autocommit: each statement sees the latest commit).

        ``close`` never closes a connection another thread is reading through (that is a
        use-after-free inside SQLite, a segfault): a connection lent at close time is closed
        by its borrower when it comes back.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("collection is closed")
            try:
                conn = self._pool.get_nowait()
            except queue.Empty:
                conn = _connect(self.path)
        try:
            yield conn
        finally:
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.rollback()
            with self._lock:
                if self._closed:
                    with contextlib.suppress(sqlite3.Error):
                        conn.close()
                else:
                    self._pool.put(conn)

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any exception)."""
        self._w.execute("BEGIN IMMEDIATE")
        try:
            yield self._w
        except BaseException:
            self._w.rollback()
            raise
        self._w.execute("COMMIT")

    def close(self) -> None:
        """Close the writer and every idle read connection; lent ones close on return."""
        with self._lock:
            self._closed = True
            idle = [self._w]
            while True:
                try:
                    idle.append(self._pool.get_nowait())
                except queue.Empty:
                    break
            for conn in idle:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()

    # ------------------------------------------------------------------ meta
    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self._w.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def set_meta(self, key: str, value: Any) -> None:
        """Set a setting (inside the caller's ``tx``)."""
        self._w.execute(
            "INSERT INTO meta(key, value) VALUES(?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (key, json.dumps(value)),
        )

    # ------------------------------------------------------------------ writes (in tx)
    def insert(self, conn: sqlite3.Connection, batch: Batch) -> list[int]:
        """Insert a validated batch; returns the new seqs in batch order."""
        now = time.time()
        seqs = []
        for i, item_id in enumerate(batch.ids):
            img = batch.image[i].tobytes() if batch.has_image[i] else None
            txt = batch.text[i].tobytes() if batch.has_text[i] else None
            thumb = batch.thumbnails[i]
            caption = batch.captions[i] if batch.captions else None
            cur = conn.execute(
                "INSERT INTO items(id, modality, weight, metadata, has_thumb, created, image, "
                "text, caption) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    item_id,
                    int(batch.codes[i]),
                    float(batch.weights[i]),
                    batch.metadata_json[i],
                    int(thumb is not None),
                    now,
                    img,
                    txt,
                    caption,
                ),
            )
            seq = int(cur.lastrowid)
            if thumb is not None:
                conn.execute("INSERT INTO thumbnails(seq, data) VALUES (?, ?)", (seq, thumb))
            seqs.append(seq)
        return seqs

    def delete(self, conn: sqlite3.Connection, seqs: Sequence[int]) -> None:
        for start in range(0, len(seqs), SQL_CHUNK):
            part = [int(s) for s in seqs[start : start + SQL_CHUNK]]
            marks = ",".join("?" * len(part))
            conn.execute(f"DELETE FROM items WHERE seq IN ({marks})", part)
            conn.execute(f"DELETE FROM thumbnails WHERE seq IN ({marks})", part)

    def put_centroids(
        self, conn: sqlite3.Connection, space: str, sums: dict[str, tuple[int, np.ndarray]]
    ) -> None:
        for modality, (n, vec) in sums.items():
            conn.execute(
                "INSERT INTO centroids(space, modality, n, sum) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(space, modality) DO UPDATE SET n=excluded.n, sum=excluded.sum",
                (space, modality, int(n), np.asarray(vec, np.float64).tobytes()),
            )

    def clear_centroids(self, conn: sqlite3.Connection, space: str) -> None:
        conn.execute("DELETE FROM centroids WHERE space = ?", (space,))

    # ------------------------------------------------------------------ reads
    def get_centroids(self, space: str) -> dict[str, tuple[int, np.ndarray]]:
        rows = self._w.execute("SELECT modality, n, sum FROM centroids WHERE space = ?", (space,))
        return {m: (int(n), np.frombuffer(s, np.float64).copy()) for m, n, s in rows}

    def rows_for_ids(
        self, ids: Sequence[str], dim: int, conn: sqlite3.Connection | None = None
    ) -> Rows:
        """Stored rows of the given item ids (missing ids are left out)."""
        conn = conn or self._w
        records: list[tuple[Any, ...]] = []
        for start in range(0, len(ids), SQL_CHUNK):
            part = list(ids[start : start + SQL_CHUNK])
            marks = ",".join("?" * len(part))
            records += conn.execute(
                f"SELECT {_ROW_COLS} FROM items WHERE id IN ({marks})", part
            ).fetchall()
        return _rows(records, dim)

    def rows_for_seqs(self, seqs: Sequence[int], dim: int, conn: sqlite3.Connection) -> Rows:
        records: list[tuple[Any, ...]] = []
        for start in range(0, len(seqs), SQL_CHUNK):
            part = [int(s) for s in seqs[start : start + SQL_CHUNK]]
            marks = ",".join("?" * len(part))
            records += conn.execute(
                f"SELECT {_ROW_COLS} FROM items WHERE seq IN ({marks})", part
            ).fetchall()
        return _rows(records, dim)

    def iter_rows(
        self, conn: sqlite3.Connection, dim: int, chunk: int = READ_CHUNK
    ) -> Iterator[Rows]:
        """All rows in seq order, in chunks (inside one read transaction if ``conn`` has one)."""
        last = -1
        while True:
            records = conn.execute(
                f"SELECT {_ROW_COLS} FROM items WHERE seq > ? ORDER BY seq LIMIT ?", (last, chunk)
            ).fetchall()
            if not records:
                return
            yield _rows(records, dim)
            last = records[-1][0]

    def seqs_and_codes(self, conn: sqlite3.Connection) -> tuple[np.ndarray, np.ndarray]:
        rows = conn.execute("SELECT seq, modality FROM items ORDER BY seq").fetchall()
        arr = np.array(rows, np.int64).reshape(-1, 2)
        return arr[:, 0].copy(), arr[:, 1].copy()

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(MODALITY_CODE, 0)
        for code, n in self._w.execute("SELECT modality, COUNT(*) FROM items GROUP BY modality"):
            out[CODE_MODALITY[code]] = int(n)
        return out

    def lookup(self, seqs: Sequence[int]) -> dict[int, tuple[str, str, str | None, int]]:
        """``seq -> (id, metadata JSON, caption, has_thumb)`` for hits (read connection)."""
        out: dict[int, tuple[str, str, str | None, int]] = {}
        with self.reader() as conn:
            for start in range(0, len(seqs), SQL_CHUNK):
                part = [int(s) for s in seqs[start : start + SQL_CHUNK]]
                marks = ",".join("?" * len(part))
                for seq, item_id, meta, caption, has_thumb in conn.execute(
                    "SELECT seq, id, metadata, caption, has_thumb FROM items "
                    f"WHERE seq IN ({marks})",
                    part,
                ):
                    out[seq] = (item_id, meta, caption, has_thumb)
        return out

    def get_item(self, item_id: str) -> Item | None:
        with self.reader() as conn:
            row = conn.execute(
                "SELECT modality, weight, metadata, has_thumb, created, image, text, caption "
                "FROM items WHERE id = ?",
                (item_id,),
            ).fetchone()
        if row is None:
            return None
        code, weight, meta, has_thumb, created, img, txt, caption = row
        modality = CODE_MODALITY[code]
        return Item(
            id=item_id,
            modality=modality,
            metadata=json.loads(meta),
            image=None if img is None else np.frombuffer(img, np.float32).copy(),
            text=None if txt is None else np.frombuffer(txt, np.float32).copy(),
            weight=float(weight) if modality == "document" else None,
            has_thumbnail=bool(has_thumb),
            created_at=float(created),
            caption=caption,
        )

    def get_thumbnail(self, item_id: str) -> tuple[bool, bytes | None]:
        """``(item exists, thumbnail bytes or None)``."""
        with self.reader() as conn:
            row = conn.execute(
                "SELECT t.data FROM items i LEFT JOIN thumbnails t ON t.seq = i.seq WHERE i.id = ?",
                (item_id,),
            ).fetchone()
        return (False, None) if row is None else (True, row[0])

    def list_ids(self, offset: int, limit: int) -> list[tuple[str, str]]:
        with self.reader() as conn:
            rows = conn.execute(
                "SELECT id, modality FROM items ORDER BY seq LIMIT ? OFFSET ?", (limit, offset)
            ).fetchall()
        return [(i, CODE_MODALITY[c]) for i, c in rows]

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read connection holding one read transaction: every query sees the same state.

        The snapshot is fixed when this returns (a first read is made), so entering it under
        the write lock pins "the state before any later write".
        """
        with self.reader() as conn:
            conn.execute("BEGIN")
            conn.execute("SELECT COUNT(*) FROM items").fetchone()
            try:
                yield conn
            finally:
                conn.rollback()
