"""Merge concurrent vector searches into batched FAISS calls (no added wait).

FAISS answers one (nq, d) batch far faster per query than nq single-query calls (a single query
takes a slow, single-threaded path). Requests searching the same collection with the same
parameters (query modality, k, modality filter, space) join a queue; at most ``max_inflight``
merged calls per parameter set run at once (in worker threads), and each call takes everything
queued when it starts. A request arriving to an idle queue runs at once, alone, so latency at
low load is unchanged; under load, batches form by themselves.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from starlette.concurrency import run_in_threadpool

from gapfix.store import Collection, Searched


@dataclass(eq=False)
class _Request:
    vectors: np.ndarray
    future: asyncio.Future


@dataclass(eq=False)
class _Queue:
    pending: deque[_Request] = field(default_factory=deque)
    inflight: int = 0


class SearchBatcher:
    """``await batcher.search(coll, vectors, modality, k, modalities, corrected)``; ``stats``
    counts requests and the FAISS calls that served them."""

    def __init__(self, max_inflight: int | None = None, max_queries: int = 1024) -> None:
        self.max_inflight = max_inflight or max(1, min(4, os.cpu_count() or 1))
        self.max_queries = max_queries
        self._queues: dict[tuple, _Queue] = {}
        self._tasks: set[asyncio.Task] = set()
        self.stats = {"requests": 0, "calls": 0, "queries": 0}

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
        transform of the space they came from."""
        key = (coll, modality, k, tuple(modalities) if modalities else None, bool(corrected))
        queue = self._queues.setdefault(key, _Queue())
        request = _Request(
            np.asarray(vectors, np.float32), asyncio.get_running_loop().create_future()
        )
        queue.pending.append(request)
        self.stats["requests"] += 1
        self._dispatch(key, queue)
        return await request.future

    def _dispatch(self, key: tuple, queue: _Queue) -> None:
        while queue.pending and queue.inflight < self.max_inflight:
            batch = [queue.pending.popleft()]
            rows = batch[0].vectors.shape[0]
            while queue.pending and rows + queue.pending[0].vectors.shape[0] <= self.max_queries:
                req = queue.pending.popleft()
                batch.append(req)
                rows += req.vectors.shape[0]
            queue.inflight += 1
            task = asyncio.get_running_loop().create_task(self._run(key, queue, batch))
            self._tasks.add(task)  # keep a reference until it is done
            task.add_done_callback(self._tasks.discard)
        if not queue.pending and not queue.inflight:
            self._queues.pop(key, None)

    async def _run(self, key: tuple, queue: _Queue, batch: list[_Request]) -> None:
        coll, modality, k, mods, corrected = key
        mods = list(mods) if mods else None
        try:
            batch = [r for r in batch if not r.future.done()]  # cancelled callers
            if batch:
                try:
                    mat = (
                        np.concatenate([r.vectors for r in batch])
                        if len(batch) > 1
                        else batch[0].vectors
                    )
                    found = await run_in_threadpool(coll.search, mat, modality, k, mods, corrected)
                except Exception as exc:
                    if len(batch) == 1:
                        if not batch[0].future.done():
                            batch[0].future.set_exception(exc)
                    else:  # find whose query failed: each request alone
                        for r in batch:
                            try:
                                res = await run_in_threadpool(
                                    coll.search, r.vectors, modality, k, mods, corrected
                                )
                            except Exception as one:
                                if not r.future.done():
                                    r.future.set_exception(one)
                            else:
                                if not r.future.done():
                                    r.future.set_result(res)
                    return
                self.stats["calls"] += 1
                self.stats["queries"] += mat.shape[0]
                start = 0
                for r in batch:
                    n = r.vectors.shape[0]
                    if not r.future.done():
                        r.future.set_result(
                            Searched(found.hits[start : start + n], found.transform)
                        )
                    start += n
        finally:
            queue.inflight -= 1
            self._dispatch(key, queue)
