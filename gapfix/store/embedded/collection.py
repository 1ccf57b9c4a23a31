"""One embedded collection: items in SQLite, a raw and a corrected FAISS index, the active
transform. It implements ``gapfix.store.backend.Collection``.

Layout of a collection directory::

    items.sqlite            items, raw vectors, thumbnails, centroid sums, settings (WAL)
    indexes/raw.json        sidecar naming raw-<checksum>.faiss (+ corrected.json / .faiss)
    transforms/<fp>.safetensors   transform artifacts, by content fingerprint

Vector spaces. With no active transform the corrected space *is* the raw space and only the
raw index exists. ``search(..., corrected=True)`` corrects the raw query with T (query-side
modality) and searches the corrected index; ``corrected=False`` searches the raw index.

Consistency. SQLite is the source of truth: a write commits there first (one transaction per
batch: all or nothing), then updates the in-memory FAISS indexes (``writes``). Index files are
a cache, written by ``flush`` (periodically by the store, at close, after a rebuild) and
repaired from SQLite at open (``repair``), so a kill -9 at any point loses at most the request
in flight.

Concurrency. Writes are serialised by a write lock; FAISS mutations additionally take the write
side of a readers-writer lock that searches share (``reads``), so many searches run in parallel
(FAISS releases the GIL) and never see a half-applied write.

Transforms. ``set_transform`` / ``fit_transform`` switch in the background while the old
space keeps answering (``switch``, on the jobs of ``gapfix.store.rebuild``).
"""

from __future__ import annotations

from pathlib import Path

from gapfix.store.embedded.reads import Reads
from gapfix.store.embedded.sampling import Sampling
from gapfix.store.embedded.switch import Switch
from gapfix.store.embedded.writes import Writes


class EmbeddedCollection(Switch, Sampling, Reads, Writes):
    """A collection of items; obtain one from ``Store.create_collection`` / ``Store.get``.

    Thread-safe: any number of threads may search while one writes (writes are serialised).
    """

    def __init__(self, path: Path, use_gpu: bool = False) -> None:
        super().__init__(path, use_gpu)
        with self._write_lock:
            self._open()

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
        self._rebuilder.close()
        with self._write_lock:
            if flush:
                self.flush()
            self._closed = True
        with self._index_lock.write():
            self._db.close()
