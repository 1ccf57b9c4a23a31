"""One generic async batcher: concurrent requests merged into batched calls, with back-pressure.

Modelled on infinity's ``BatchHandler``. A request goes through up to three stages:

- **pre** (optional, per request, in a small thread pool): e.g. decode and preprocess images, so
  a bad input fails only its own request;
- **core** (per batch, in a dedicated thread pool): ``core(key, items) -> one result per item``,
  e.g. one model forward pass or one FAISS search over the concatenated rows; ``post`` work
  (splitting, normalising) belongs to ``core`` and runs in the same thread;
- the caller gets its own result back on the event loop.

Requests with the same ``key`` (a modality, or a collection plus search parameters) share a
*lane*: one core call per lane at a time, taking everything queued in it (up to ``max_batch``
rows). While a call runs, new requests queue; when it ends the next call takes them all, so one
large call replaces several small concurrent ones (FAISS and the encoders are far faster per
row in large batches, and use every core by themselves). A lane that recently served ``n``
requests at once waits for ``n`` to gather again, at most ``max_wait_ms`` and at most a quarter
of a recent call's duration (see `AsyncBatcher.wait_limit`); a lone client (``n`` = 1) never
waits.

Back-pressure: rows admitted but not yet handed to core are bounded by ``max_queue``, and a
request whose estimated wait exceeds ``budget_ms`` is refused at once with `OverloadedError` (HTTP 429 with ``Retry-After``); one that would
nevertheless end past the budget (slower calls than estimated ahead of it) is refused when its
turn comes instead of running late. The wait is estimated from a model of recent core calls, ``seconds = a + b *
rows`` (least squares, recent calls weighted most): flat FAISS search costs about the same per
call whatever its rows, an encoder about the same per row. If a merged call fails, each of its requests runs alone, so the error reaches
only the request that causes it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from gapfix.errors import GapfixError
from gapfix.metrics import BATCH_ROWS, QUEUE_DEPTH

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
R = TypeVar("R")

HISTORY_S = 1.0  # how long (or 4 calls, if longer) a burst of n requests makes a lane wait for n
COST_DECAY = 0.9  # weight of older core calls in the call-time model (~10 calls' memory)


class OverloadedError(GapfixError, RuntimeError):
    """The batcher's queue is full (or would take longer than its budget): retry later.

    ``retry_after`` is the estimated time, in seconds, until the queue has drained.
    """

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.message = message
        self.param = None
        self.retry_after = float(retry_after)


class BatcherClosedError(GapfixError, RuntimeError):
    """A request reached a batcher after it was closed (the service is shutting down)."""


class CallCost:
    """Seconds of a core call as ``a + b * rows``, fitted by exponentially weighted least
    squares over recent calls; while every recent call had the same size, all of it is
    taken as per-call cost (``b`` = 0)."""

    def __init__(self, decay: float = COST_DECAY) -> None:
        self.decay = decay
        self._s = [0.0] * 5  # weights, sum x, sum y, sum x^2, sum x*y

    def add(self, rows: int, seconds: float) -> None:
        """Record one call of ``rows`` rows that took ``seconds``."""
        d, x, y = self.decay, float(rows), float(seconds)
        for i, v in enumerate((1.0, x, y, x * x, x * y)):
            self._s[i] = d * self._s[i] + v

    def coefficients(self) -> tuple[float, float] | None:
        """``(a, b)``: seconds per call and per row (None before any call)."""
        w, sx, sy, sxx, sxy = self._s
        if w == 0:
            return None
        mx, my = sx / w, sy / w
        var = sxx / w - mx * mx
        if var <= 1e-6 * max(mx * mx, 1.0):
            return my, 0.0
        b = max(0.0, (sxy / w - mx * my) / var)
        return max(0.0, my - b * mx), b

    def mean_seconds(self) -> float | None:
        """Weighted mean duration of recent calls (None before any call)."""
        w, _, sy, _, _ = self._s
        return sy / w if w else None

    def estimate(self, rows: int, max_batch: int) -> float | None:
        """Seconds to serve ``rows`` rows in calls of at most ``max_batch``."""
        ab = self.coefficients()
        if ab is None:
            return None
        return math.ceil(rows / max_batch) * ab[0] + rows * ab[1]


@dataclass(eq=False)
class _Request:
    item: Any
    rows: int
    future: asyncio.Future
    enqueued: float = 0.0


@dataclass(eq=False)
class _Lane:
    stage: str
    pending: deque[_Request] = field(default_factory=deque)
    rows: int = 0
    task: asyncio.Task | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    recent: deque[tuple[float, int]] = field(default_factory=deque)  # (time, requests seen)
    free_at: float = 0.0  # when the lane's last call ended

    def burst(self, now: float, window: float = HISTORY_S) -> int:
        """Most requests outstanding at the end of a call (answered by it, or queued while it
        ran) in the last ``window`` seconds: how many requests to gather for the next call."""
        while self.recent and now - self.recent[0][0] > window:
            self.recent.popleft()
        return max((n for _, n in self.recent), default=1)


class AsyncBatcher(Generic[K, T, R]):
    """``await batcher.submit(key, item, rows)`` -> ``core(key, [..., item, ...])``'s result
    for ``item``, merged with concurrent requests of the same key.

    ``stage(key)`` names the lane in the ``gapfix_queue_depth{stage}`` gauge and in ``stats``
    (requests, batches, items and rejected requests per stage). Use from one event loop;
    ``await aclose()`` lets accepted requests finish, then stops the threads.
    """

    def __init__(
        self,
        core: Callable[[K, list[T]], Sequence[R]],
        *,
        stage: Callable[[K], str],
        max_batch: int,
        max_queue: int,
        max_wait_ms: float = 5.0,
        budget_ms: float | None = None,
        core_threads: int = 1,
        pre_threads: int = 0,
        name: str = "gapfix-batch",
    ) -> None:
        if max_batch < 1 or max_queue < 1:
            raise ValueError(f"max_batch and max_queue must be positive ({max_batch}, {max_queue})")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.core = core
        self.stage = stage
        self.max_batch = int(max_batch)
        self.max_queue = int(max_queue)
        self.max_wait = max_wait_ms / 1000.0
        self.budget = None if budget_ms is None else budget_ms / 1000.0
        self._core_pool = ThreadPoolExecutor(core_threads, thread_name_prefix=f"{name}-core")
        self._pre_pool = (
            ThreadPoolExecutor(pre_threads, thread_name_prefix=f"{name}-pre")
            if pre_threads
            else None
        )
        self._lanes: dict[K, _Lane] = {}
        self._admitted = 0  # rows accepted and not yet handed to core (pre stage + queues)
        self.cost = CallCost()
        self._inflight = 0
        self._idle: asyncio.Event | None = None
        self._closed = False
        self.stats: dict[str, dict[str, int]] = {}

    # ---- public ---------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def queued_rows(self) -> int:
        """Rows admitted and not yet handed to a core call."""
        return self._admitted

    def estimated_wait(self, rows: int = 0) -> float | None:
        """Seconds the queue (plus ``rows`` more) needs to drain, from recent core calls."""
        if self._admitted + rows == 0:
            return 0.0
        return self.cost.estimate(self._admitted + rows, self.max_batch)

    def is_overloaded(self, rows: int = 1) -> bool:
        """Whether ``rows`` more rows would overflow the queue or its time budget (never
        while the queue is empty: a lone request, however large, is served)."""
        if self._admitted == 0:
            return False
        if self._admitted + rows > self.max_queue:
            return True
        wait = self.estimated_wait(rows)
        return self.budget is not None and wait is not None and wait > self.budget

    def retry_after(self, rows: int = 1) -> float:
        """Seconds a refused client should wait: the estimated drain time (at least 1)."""
        wait = self.estimated_wait(rows)
        return max(1.0, math.ceil(wait)) if wait is not None else 1.0

    async def submit(
        self, key: K, item: Any, rows: int, pre: Callable[[Any], T] | None = None
    ) -> R:
        """Run ``pre(item)`` (if given, in the pre-stage threads), then the batched core call;
        ``rows`` is the request's share of ``max_batch`` / ``max_queue``. Raises
        `OverloadedError` at once when the queue is full or over its time budget."""
        if self._closed:
            raise BatcherClosedError("the service is shutting down")
        stage = self.stage(key)
        stats = self.stats_of(stage)
        if self.is_overloaded(rows):
            stats["rejected"] += 1
            raise self._overloaded(rows)
        stats["requests"] += 1
        self._admitted += rows
        self._enter()
        try:
            if pre is not None:
                item = await self._run_pre(stage, pre, item)
            loop = asyncio.get_running_loop()
            lane = self._lanes.get(key)
            if lane is None:
                self._prune(loop.time())
                lane = self._lanes[key] = _Lane(stage)
            request = _Request(item, rows, loop.create_future(), loop.time())
            lane.pending.append(request)
            lane.rows += rows
            QUEUE_DEPTH.labels(stage).inc(rows)
            rows = 0  # the lane owns them now
            lane.arrived.set()
            if lane.task is None:
                lane.task = loop.create_task(self._drain(key, lane), name=f"batch-{stage}")
            return await request.future
        finally:
            self._admitted -= rows
            self._leave()

    async def aclose(self) -> None:
        """Refuse new requests, let accepted ones finish, stop the threads."""
        if self._closed:
            return
        self._closed = True
        if self._idle is not None and self._inflight:
            await self._idle.wait()
        self._core_pool.shutdown(wait=False)
        if self._pre_pool is not None:
            self._pre_pool.shutdown(wait=False, cancel_futures=True)

    def stats_of(self, stage: str) -> dict[str, int]:
        """Counters of one stage: requests, batches (core calls), items (rows), rejected."""
        stats = self.stats.get(stage)
        if stats is None:
            stats = self.stats[stage] = {"requests": 0, "batches": 0, "items": 0, "rejected": 0}
        return stats

    # ---- internals ------------------------------------------------------------------------

    def _overloaded(self, rows: int) -> OverloadedError:
        wait = self.estimated_wait(rows)
        why = (
            f"about {wait:.1f} s of work queued (budget {self.budget:.1f} s)"
            if wait is not None and self.budget is not None and wait > self.budget
            else f"{self._admitted} rows queued (limit {self.max_queue})"
        )
        return OverloadedError(f"server overloaded: {why}; retry later", self.retry_after(rows))

    def _enter(self) -> None:
        if self._idle is None:
            self._idle = asyncio.Event()
        self._inflight += 1
        self._idle.clear()

    def _leave(self) -> None:
        self._inflight -= 1
        if self._inflight == 0 and self._idle is not None:
            self._idle.set()

    async def _run_pre(self, stage: str, pre: Callable[[Any], T], item: Any) -> T:
        label = f"{stage}_pre"
        gauge = QUEUE_DEPTH.labels(label)
        gauge.inc()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pre_pool, pre, item)
        finally:
            gauge.dec()

    async def _drain(self, key: K, lane: _Lane) -> None:
        """The lane's worker: gather, run one core call, repeat until the lane is empty."""
        loop = asyncio.get_running_loop()
        try:
            while lane.pending:
                await self._gather(lane, loop)
                batch, rows = [], 0
                while lane.pending and (not batch or rows + lane.pending[0].rows <= self.max_batch):
                    req = lane.pending.popleft()
                    batch.append(req)
                    rows += req.rows
                lane.rows -= rows
                self._admitted -= rows
                QUEUE_DEPTH.labels(lane.stage).dec(rows)
                batch = self._shed(batch, loop.time())
                if batch:
                    await self._run(key, lane.stage, batch)
                    # concurrency seen: the requests just answered plus those queued meanwhile
                    lane.free_at = loop.time()
                    lane.recent.append((lane.free_at, len(batch) + len(lane.pending)))
        finally:  # an idle lane stays (its burst history with it) until `_prune`
            lane.task = None
            if lane.pending and self._lanes.get(key) is lane:  # after an unexpected error
                lane.task = loop.create_task(self._drain(key, lane))

    def _prune(self, now: float) -> None:
        """Forget idle lanes whose burst history has expired."""
        for key, lane in list(self._lanes.items()):
            if lane.task is None and not lane.pending and lane.burst(now) <= 1:
                del self._lanes[key]

    def wait_limit(self) -> float:
        """How long a lane may wait to gather a batch: ``max_wait``, or a quarter of a recent
        core call when that is less (waiting 5 ms to merge 1 ms HNSW calls would cost more
        than it saves; a 30 ms flat scan serves 32 rows for the price of 1)."""
        mean = self.cost.mean_seconds()
        return self.max_wait if mean is None else min(self.max_wait, mean / 4)

    async def _gather(self, lane: _Lane, loop: asyncio.AbstractEventLoop) -> None:
        """Wait (at most `wait_limit`) for as many requests as the lane's recent bursts, unless
        a full batch is already queued."""
        # from the oldest arrival, or from the end of the lane's last call: requests queued
        # behind a call wait a little for the callers it just answered to come back
        deadline = max(lane.pending[0].enqueued, lane.free_at) + self.wait_limit()
        ab = self.cost.coefficients()  # remember bursts for a few calls, however slow
        want = lane.burst(loop.time(), max(HISTORY_S, 4 * ab[0]) if ab else HISTORY_S)
        while len(lane.pending) < want and lane.rows < self.max_batch:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            lane.arrived.clear()
            try:
                await asyncio.wait_for(lane.arrived.wait(), remaining)
            except TimeoutError:
                return

    def _shed(self, batch: list[_Request], now: float) -> list[_Request]:
        """Drop cancelled requests; refuse those whose wait plus the estimated call would end
        past the budget. A request that waited less than the call itself takes is served: the
        call's own time is not queueing (a backend slower than the budget, e.g. a remote
        vector database under load, still answers requests that find no queue)."""
        call = self.cost.estimate(sum(r.rows for r in batch), self.max_batch) or 0.0
        keep = []
        for r in batch:
            if r.future.done():
                continue
            waited = now - r.enqueued
            if self.budget is not None and waited > call and waited + call > self.budget:
                r.future.set_exception(
                    OverloadedError(
                        f"server overloaded: queued {now - r.enqueued:.1f} s, over the "
                        f"{self.budget:.1f} s budget; retry later",
                        self.retry_after(),
                    )
                )
                continue
            keep.append(r)
        return keep

    async def _run(self, key: K, stage: str, batch: list[_Request]) -> None:
        loop = asyncio.get_running_loop()
        items = [r.item for r in batch]
        t0 = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._core_pool, self.core, key, items)
            if len(results) != len(batch):
                raise RuntimeError(f"core returned {len(results)} results for {len(batch)}")
        except Exception as exc:
            if len(batch) == 1:
                if not batch[0].future.done():
                    batch[0].future.set_exception(exc)
                return
            for r in batch:  # find whose input failed: each request alone
                if not r.future.done():
                    await self._run(key, stage, [r])
            return
        rows = sum(r.rows for r in batch)
        self.cost.add(rows, time.perf_counter() - t0)
        BATCH_ROWS.labels(stage).observe(rows)
        stats = self.stats_of(stage)
        stats["batches"] += 1
        stats["items"] += rows
        for r, res in zip(batch, results, strict=True):
            if not r.future.done():
                r.future.set_result(res)
