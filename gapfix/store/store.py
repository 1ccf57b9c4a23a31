"""The embedded store (a ``CollectionStore``): named collections under one data directory.

Layout::

    <data_dir>/.lock                 exclusive flock: one Store per data dir (any process)
    <data_dir>/collections/<name>/   one directory per collection (see ``embedded.collection``)

A collection is created in a temp directory and renamed into place (atomic); deletion renames
it to a trash name first, so a crash never leaves a half-created or half-deleted collection
visible. A background thread flushes changed index files every ``flush_interval`` seconds.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any

from gapfix.atomic import fsync_dir
from gapfix.errors import GapfixError, InputError
from gapfix.locks import release, try_lock
from gapfix.store.embedded import EmbeddedCollection
from gapfix.store.errors import ConflictError, NotFoundError
from gapfix.store.index_kinds import INDEX_KINDS, IndexParams, gpu_available

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_collection_name(name: Any) -> str:
    """Return ``name`` if it matches ``[A-Za-z0-9_-]{1,64}``, else raise InputError."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InputError(
            f"invalid collection name {name!r}: use 1-64 letters, digits, '_' or '-'", param="name"
        )
    return name


class Store:
    """Collections persisted under ``data_dir``; reopening the directory restores them all.

    ``use_gpu``: None = GPU FAISS when ``faiss.get_num_gpus() > 0``. ``flush_interval``:
    seconds between background index flushes (None: only at close / explicit ``flush``).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        use_gpu: bool | None = None,
        flush_interval: float | None = 30.0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.use_gpu = gpu_available() if use_gpu is None else bool(use_gpu)
        self._root = self.data_dir / "collections"
        self._root.mkdir(parents=True, exist_ok=True)
        lock_fd = try_lock(self.data_dir / ".lock")
        if lock_fd is None:
            raise GapfixError(f"data directory {self.data_dir} is in use by another gapfix store")
        self._lock_fd = lock_fd
        self._lock = threading.Lock()
        self._collections: dict[str, EmbeddedCollection] = {}
        self._deleting: set[str] = set()
        self._closed = False
        try:
            for entry in sorted(self._root.iterdir()):
                if entry.name.startswith((".tmp-", ".trash-")):
                    shutil.rmtree(entry, ignore_errors=True)
                elif entry.is_dir() and NAME_RE.fullmatch(entry.name):
                    self._collections[entry.name] = EmbeddedCollection(entry, use_gpu=self.use_gpu)
        except BaseException:
            self.close()
            raise
        self._stop = threading.Event()
        self._flusher = None
        if flush_interval is not None:
            self._flusher = threading.Thread(
                target=self._flush_loop,
                args=(flush_interval,),
                name="gapfix-store-flush",
                daemon=True,
            )
            self._flusher.start()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _flush_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.flush()

    def flush(self) -> None:
        """Write every changed index file now."""
        with self._lock:
            colls = list(self._collections.values())
        for c in colls:
            try:
                c.flush()
            except Exception:
                log.exception("flushing collection %s failed", c.name)

    def create_collection(
        self,
        name: str,
        index: str = "flat",
        dim: int | None = None,
        index_params: dict[str, Any] | None = None,
    ) -> EmbeddedCollection:
        """Create an empty collection. ``dim`` None: fixed by the first vectors (or transform).

        Bad name/kind/params -> InputError; an existing name -> ConflictError.
        """
        check_collection_name(name)
        if index not in INDEX_KINDS:
            raise InputError(
                f"unknown index kind {index!r}; expected one of {list(INDEX_KINDS)}", "index"
            )
        if dim is not None and (
            not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= 65536
        ):
            raise InputError(f"dim must be an integer in [1, 65536], got {dim!r}", param="dim")
        params = IndexParams.from_dict(index, index_params)  # validates
        if dim is not None:
            params.check_dim(index, dim)
        with self._lock:
            self._check_open()
            if name in self._collections:
                raise ConflictError(f"collection {name!r} already exists", param="name")
            if name in self._deleting:
                raise ConflictError(
                    f"collection {name!r} is still being deleted; try again shortly", param="name"
                )
            tmp = self._root / f".tmp-{uuid.uuid4().hex}"
            tmp.mkdir()
            try:
                given = {k: v for k, v in params.to_dict().items() if k in (index_params or {})}
                EmbeddedCollection.initialize(tmp, name, index, dim, given)
                final = self._root / name
                os.rename(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            fsync_dir(self._root)
            coll = EmbeddedCollection(final, use_gpu=self.use_gpu)
            self._collections[name] = coll
            return coll

    def list_collections(self) -> list[dict[str, Any]]:
        """``Collection.info()`` of every collection, sorted by name."""
        with self._lock:
            colls = sorted(self._collections.values(), key=lambda c: c.name)
        return [c.info() for c in colls]

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._collections)

    def get(self, name: str) -> EmbeddedCollection:
        """The named collection; NotFoundError if it does not exist."""
        coll = self.peek(name)
        if coll is None:
            raise NotFoundError(f"collection {name!r} not found", param="collection")
        return coll

    def peek(self, name: str) -> EmbeddedCollection | None:
        """The named collection, or None (every collection is open: no I/O either way)."""
        with self._lock:
            return self._collections.get(name) if isinstance(name, str) else None

    def delete_collection(self, name: str) -> None:
        """Delete a collection and its files; NotFoundError if it does not exist."""
        with self._lock:
            self._check_open()
            coll = self._collections.pop(name, None) if isinstance(name, str) else None
            if coll is None:
                raise NotFoundError(f"collection {name!r} not found", param="collection")
            self._deleting.add(name)  # the name stays taken until its folder is gone
        try:
            # outside the store lock: closing waits for the collection's background job (a fit
            # can take minutes), and other collections must stay reachable meanwhile
            coll.close(flush=False)
            coll.remove_gauges()
            trash = self._root / f".trash-{uuid.uuid4().hex}"
            os.rename(coll.path, trash)
            fsync_dir(self._root)
        finally:
            with self._lock:
                self._deleting.discard(name)
        shutil.rmtree(trash, ignore_errors=True)

    def _check_open(self) -> None:
        if self._closed:
            raise GapfixError("the store is closed")

    def close(self) -> None:
        """Stop background work, flush indexes, close every collection, release the data dir."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            colls = list(self._collections.values())
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
        flusher = getattr(self, "_flusher", None)
        if flusher is not None:
            flusher.join()
        for c in colls:
            try:
                c.close()
            except Exception:
                log.exception("closing collection %s failed", c.name)
        release(self._lock_fd)
