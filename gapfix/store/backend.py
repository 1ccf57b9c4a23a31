"""What a collection backend implements: the ``Collection`` and ``CollectionStore`` protocols,
the values they return, and the request checks every backend applies the same way.

The service and the jobs only use these protocols. ``embedded`` (``EmbeddedCollection`` in
SQLite + FAISS files under a data dir, ``Store``) is the default backend; a second backend
(e.g. a Milvus collection) implements the same methods with the same errors:

- ``InputError`` (HTTP 400/422) for bad arguments, raised before anything is written;
- ``NotFoundError`` (404) for a missing item, or a collection deleted or closed meanwhile;
- ``ConflictError`` (409) for existing ids without ``upsert``, and for a transform request
  that a later one (or ``set_transform(None)``, or ``close``) superseded while it waited.

Spaces. Every item has an index vector in ``raw`` (stored embeddings; documents fuse
``normalise(w*img + (1-w)*txt)``) and ``corrected`` (each component through the active
transform, then fused). Without an active transform corrected IS raw. A transform switch
re-corrects in the background (``gapfix.store.rebuild``) while the old space keeps answering;
``Searched.transform`` names the space an answer came from.

Writing a backend: implement ``Collection`` (``tests/test_store_backend.py`` checks names,
parameter kinds and defaults against this file) and reuse the neutral parts: ``check_search``
/ ``check_page`` / ``check_k`` for arguments; ``gapfix.store.items`` for ``ItemIn`` validation
(``validate_batch``) and ``fuse``; ``gapfix.store.rebuild`` for the switch (``Rebuilder``: one
current job, superseding, ``wait`` raising ConflictError for a superseded request, status;
``make_fit`` / ``check_fit_data`` / ``fitted_dim`` / ``check_maps_finite`` / ``fit_job``);
``gapfix.store.sums`` for the running centroid sums; ``gapfix.store.gauges`` for Prometheus.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from gapfix.errors import InputError
from gapfix.store.items import Hit, Item, ItemIn, check_item_id, check_modalities
from gapfix.validation import check_modality

MAX_K = 1000
MAX_PAGE = 10_000


@dataclass(frozen=True)
class Searched:
    """Hits per query and the transform whose corrected space they came from (None: raw)."""

    hits: list[list[Hit]]
    transform: Any = None


@dataclass
class RawVectors:
    """Stored raw embeddings: all image / text vectors, and the document pairs (row i <-> i)."""

    image: np.ndarray
    text: np.ndarray
    pair_image: np.ndarray
    pair_text: np.ndarray
    counts: dict[str, int]

    @classmethod
    def collect(
        cls,
        chunks: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
        dim: int,
        counts: dict[str, int],
    ) -> RawVectors:
        """Concatenate ``(image, text, has_image, has_text)`` row chunks of a backend's scan:
        each modality's present vectors, and the pairs of items that have both."""
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("image", "text", "pi", "pt")}
        for image, text, has_image, has_text in chunks:
            parts["image"].append(image[has_image])
            parts["text"].append(text[has_text])
            doc = has_image & has_text
            parts["pi"].append(image[doc])
            parts["pt"].append(text[doc])

        def cat(xs: list[np.ndarray]) -> np.ndarray:
            return np.concatenate(xs) if xs else np.zeros((0, dim), np.float32)

        return cls(
            cat(parts["image"]), cat(parts["text"]), cat(parts["pi"]), cat(parts["pt"]), counts
        )


@runtime_checkable
class Collection(Protocol):
    """A named collection of items with a raw and a corrected vector space. Thread-safe: any
    number of threads search while writes are serialised."""

    name: str

    @property
    def dim(self) -> int | None:
        """Embedding dimension (None until the first vectors or transform fix it)."""

    def count(self) -> int:
        """Number of items."""

    def counts(self) -> dict[str, int]:
        """Items per modality: ``{"image": n, "text": n, "document": n}``."""

    def info(self) -> dict[str, Any]:
        """JSON-safe summary: name, index, index_params, dim, count, counts, transform,
        transform_status, created_at, gpu."""

    # writes: all or nothing
    def add(self, items: list[ItemIn], upsert: bool = False) -> dict[str, int]:
        """Add a batch; returns ``{"added": n, "replaced": n}``. Existing ids: ConflictError
        unless ``upsert``."""

    def delete_items(self, ids: list[str], missing_ok: bool = False) -> int:
        """Delete by id; returns the number deleted. Unknown id: NotFoundError unless
        ``missing_ok``."""

    def delete_item(self, item_id: str) -> None:
        """Delete one item; NotFoundError if absent."""

    # reads
    def get_item(self, item_id: str) -> Item:
        """The stored item (raw vectors, metadata, caption); NotFoundError if absent."""

    def get_thumbnail(self, item_id: str) -> bytes | None:
        """The item's thumbnail, None if it has none; NotFoundError if no such item."""

    def list_items(self, offset: int = 0, limit: int = 100) -> list[tuple[str, str]]:
        """``(id, modality)`` pairs in insertion order (checked with ``check_page``)."""

    def correct(self, vectors: Any, modality: str) -> np.ndarray:
        """Raw vectors of ``modality`` through the active transform (unit length, float32)."""

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
        """Top-k items per raw query vector ((nq, d) or (d,)) of ``query_modality``, or (with
        ``item_id``) one row: the neighbours of a stored item's own index vector, itself
        excluded unless ``exclude_self`` is False. ``corrected`` searches the corrected space
        (queries through the active transform with role "query"), else the raw one;
        ``modalities`` filters the item modalities. Scores are inner products of unit
        vectors. Arguments are checked with ``check_search``."""

    def raw_vectors(self) -> RawVectors:
        """All stored raw embeddings from one consistent snapshot (for fitting)."""

    def gap_statistics(self, max_rows: int = 5000) -> dict[str, Any]:
        """Gap statistics raw and corrected (``gapfix.stats``) on at most ``max_rows``
        sampled vectors per modality, plus the exact ``centroid_gap`` of the running sums."""

    # the transform lifecycle
    @property
    def active_transform(self) -> Any:
        """The active GapTransform, or None (corrected = raw)."""

    def transform_view(self) -> tuple[Any, str | None]:
        """The active transform and its fingerprint, read together from one view."""

    def active_artifact(self) -> tuple[str, bytes] | None:
        """Fingerprint and artifact bytes of the active transform (None: no transform)."""

    @property
    def transform_status(self) -> dict[str, Any]:
        """``{"status": "active"|"rebuilding"|"failed", "error", "job"}``."""

    def transform_info(self) -> dict[str, Any]:
        """``transform_status`` + ``fingerprint`` + ``active`` (the transform's summary)."""

    def wait_transform(self, timeout: float | None = None) -> bool:
        """Wait for the running switch; True when none runs and the last one did not fail."""

    def set_transform(self, transform: Any, wait_seconds: float | None = None) -> bool:
        """Activate a fitted transform (None: no correction) with a background re-correction.
        True when active within ``wait_seconds`` (None: wait), False while rebuilding;
        ConflictError if a later request superseded it meanwhile."""

    def fit_transform(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        objective: str | None = None,
        wait_seconds: float | None = None,
    ) -> bool:
        """Fit ``method`` on the stored raw vectors, then switch as ``set_transform``. A failed
        fit leaves the old transform active and ``transform_status`` "failed"."""

    # lifecycle
    def flush(self) -> None:
        """Persist what is only in memory (the embedded store: changed index files)."""

    def close(self, flush: bool = True) -> None:
        """Stop background work (a pending switch resumes at the next open) and release."""


@runtime_checkable
class CollectionStore(Protocol):
    """Named collections of one backend (``gapfix.store.Store`` for ``embedded``)."""

    def create_collection(
        self,
        name: str,
        index: str = "flat",
        dim: int | None = None,
        index_params: dict[str, Any] | None = None,
    ) -> Collection:
        """Create an empty collection: InputError for a bad name/kind/params, ConflictError
        for an existing name."""

    def get(self, name: str) -> Collection:
        """The named collection; NotFoundError if it does not exist."""

    def peek(self, name: str) -> Collection | None:
        """The named collection if this process has it open, found without any I/O (safe on
        an event loop); None otherwise (``get`` then finds it, or says it does not exist)."""

    def names(self) -> list[str]:
        """Collection names, sorted."""

    def list_collections(self) -> list[dict[str, Any]]:
        """``Collection.info()`` of every collection, sorted by name."""

    def delete_collection(self, name: str) -> None:
        """Delete a collection and its data; NotFoundError if it does not exist."""

    def flush(self) -> None:
        """``Collection.flush`` of every collection."""

    def close(self) -> None:
        """Close every collection and release the backend."""


def is_int(value: Any) -> bool:
    """An integer, numpy's included; not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)


def check_k(k: Any) -> int:
    """``k`` as an int in [1, MAX_K], else InputError."""
    if not is_int(k) or not 1 <= k <= MAX_K:
        raise InputError(f"k must be an integer in [1, {MAX_K}], got {k!r}", param="k")
    return int(k)


def check_page(offset: Any, limit: Any) -> tuple[int, int]:
    """``list_items``'s paging arguments, else InputError."""
    if not (is_int(offset) and is_int(limit)) or offset < 0 or not 1 <= limit <= MAX_PAGE:
        raise InputError(
            f"offset must be an integer >= 0 and limit an integer in [1, {MAX_PAGE}], got "
            f"{offset!r} and {limit!r}",
            param="limit",
        )
    return int(offset), int(limit)


def check_search(
    vectors: Any,
    query_modality: str | None,
    k: Any,
    modalities: list[str] | None,
    item_id: str | None,
) -> tuple[int, list[str] | None]:
    """Check ``Collection.search``'s arguments (the vectors themselves are the backend's to
    check against its dimension); returns ``(k, modalities)``."""
    if (vectors is None) == (item_id is None):
        raise InputError("search needs either query vectors or an item id", param="query")
    if item_id is None:
        check_modality(query_modality, "query_modality")
    else:
        check_item_id(item_id)
    k = check_k(k)
    return k, check_modalities(modalities)
