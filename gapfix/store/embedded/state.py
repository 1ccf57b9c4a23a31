"""The state one embedded collection holds, and the small helpers every part of it uses.

``EmbeddedCollection`` (``collection``) is assembled from one class per concern, each over this
state: open/repair (``repair``), writes with index undo (``writes``), reads and search
(``reads``), sampling for statistics (``sampling``), the transform switch (``switch``).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gapfix.store import gauges
from gapfix.store._rwlock import RWLock
from gapfix.store.db import ItemDB
from gapfix.store.errors import NotFoundError
from gapfix.store.index import IndexParams, VectorIndex
from gapfix.store.index_files import write_index_file
from gapfix.store.rebuild import Job, Rebuilder
from gapfix.store.sums import Sums, zero_sums


@dataclass(frozen=True)
class View:
    """The active transform and the index of its corrected vectors (swapped as one)."""

    transform: Any = None
    fingerprint: str | None = None
    corrected: VectorIndex | None = None


class CollectionState:
    """Settings, locks, live indexes, counts and sums of one collection directory."""

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
        self._view = View()
        self._rebuilder = Rebuilder(self.name, self._write_lock)
        self._closed = False
        self._dirty = {"raw": 0, "corrected": 0}
        self._counts = self._db.counts()
        self._sums: dict[str, Sums] = {}
        self.repair_report: dict[str, str] = {}

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
            "transform_status": self._rebuilder.status["status"],
            "created_at": self.created_at,
            "gpu": bool(self._raw.use_gpu) if self._raw is not None else self._use_gpu,
        }

    # ------------------------------------------------------------------ helpers
    def _artifact_path(self, fp: str) -> Path:
        return self.path / "transforms" / f"{fp}.safetensors"

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

    def _persist(self, space: str, idx: VectorIndex, fp: str | None) -> None:
        write_index_file(
            idx, self.path / "indexes", space, {"transform": fp if space == "corrected" else None}
        )
        self._dirty[space] = 0

    def _update_gauges(self) -> None:
        gauges.update_gauges(self.name, self._counts, self._sums, self._view.transform is not None)

    def remove_gauges(self) -> None:
        """Drop this collection's metric series (after it is deleted)."""
        gauges.remove_gauges(self.name)

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
        self._sums = {"raw": zero_sums(dim)}
        if view.transform is not None:
            self._sums["corrected"] = zero_sums(dim)
        self._view = View(view.transform, view.fingerprint, corrected)

    def _live_indexes(self) -> list[tuple[str, VectorIndex]]:
        return [(sp, i) for sp, i in (("raw", self._raw), ("corrected", self._view.corrected)) if i]

    # hooks the transform switch implements (``switch.Switch``)
    def _start_job(self, job: Job) -> None:
        raise NotImplementedError

    def _maybe_compact(self) -> None:
        raise NotImplementedError

    def raw_vectors(self) -> Any:  # ``sampling.Sampling``'s, which a fit reads
        raise NotImplementedError
