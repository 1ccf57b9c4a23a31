"""Concurrent vector searches merged into one FAISS call (via the generic `AsyncBatcher`).

FAISS answers one (nq, d) batch far faster per query than nq single-query calls: a flat index
only takes its BLAS path when nq * d reaches ``faiss_blas_threshold``, and one memory-bound scan
serves every row of a batch. Requests searching the same collection with the same parameters
(query modality, k, modality filter, space) share a lane of the batcher: one FAISS call at a
time, taking everything queued, so 32 concurrent single-vector searches become one call of 32
rows rather than several small concurrent calls.
"""

from __future__ import annotations

import numpy as np

from gapfix.batching import AsyncBatcher
from gapfix.store import Collection, Searched

SearchKey = tuple[Collection, str, int, tuple[str, ...] | None, bool]


def search_collection(
    coll: Collection,
    vectors: np.ndarray,
    modality: str,
    k: int,
    modalities: list[str] | None,
    corrected: bool,
) -> Searched:
    """The batcher's one call into the collection: hits per row of ``vectors`` and the
    transform of the space searched."""
    return coll.search(vectors, modality, k, modalities, corrected)


def _core(key: SearchKey, parts: list[np.ndarray]) -> list[Searched]:
    """One FAISS call over every request's rows, cut back into one `Searched` per request."""
    coll, modality, k, mods, corrected = key
    mat = np.concatenate(parts) if len(parts) > 1 else parts[0]
    found = search_collection(coll, mat, modality, k, list(mods) if mods else None, corrected)
    out, start = [], 0
    for p in parts:
        out.append(Searched(found.hits[start : start + p.shape[0]], found.transform))
        start += p.shape[0]
    return out


class SearchBatcher:
    """``await batcher.search(coll, vectors, modality, k, modalities, corrected)``; ``stats``
    counts requests, FAISS calls (``batches``), query rows and refused requests."""

    def __init__(
        self,
        *,
        max_batch: int = 1024,
        max_queue: int = 4096,
        max_wait_ms: float = 50.0,
        budget_ms: float | None = None,
        threads: int = 2,
    ) -> None:
        self.batcher: AsyncBatcher[SearchKey, np.ndarray, Searched] = AsyncBatcher(
            _core,
            stage=lambda key: "search",
            max_batch=max_batch,
            max_queue=max_queue,
            max_wait_ms=max_wait_ms,
            budget_ms=budget_ms,
            core_threads=threads,
            name="gapfix-search",
        )

    @property
    def stats(self) -> dict[str, int]:
        return self.batcher.stats_of("search")

    async def search(
        self,
        coll: Collection,
        vectors: np.ndarray,
        modality: str,
        k: int,
        modalities: list[str] | None,
        corrected: bool,
    ) -> Searched:
        """Hits per row of ``vectors`` (validated raw queries of ``coll``'s dimension) and the
        transform of the space they came from. Raises `OverloadedError` when the queue is full."""
        key = (coll, modality, k, tuple(modalities) if modalities else None, bool(corrected))
        vectors = np.asarray(vectors, np.float32)
        return await self.batcher.submit(key, vectors, int(vectors.shape[0]))

    async def aclose(self) -> None:
        """Let accepted searches finish, then stop the threads."""
        await self.batcher.aclose()
