"""The generic async batcher (`gapfix.batching`): one core call per lane at a time gathering
concurrent requests, bounded queues refusing at once, a time budget, errors reaching only their
request, the queue-depth gauge, a graceful close."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from prometheus_client import REGISTRY

from gapfix.batching import AsyncBatcher, BatcherClosedError, OverloadedError


class Core:
    """A core stage recording each call's batch; ``delay`` seconds per call; fails on 'bad'."""

    def __init__(self, delay: float = 0.0, gate: threading.Event | None = None) -> None:
        self.delay, self.gate = delay, gate
        self.calls: list[list] = []
        self.running: dict = {}
        self.overlap = False
        self.lock = threading.Lock()

    def __call__(self, key, items: list) -> list:
        with self.lock:
            self.overlap |= self.running.get(key, 0) > 0
            self.running[key] = self.running.get(key, 0) + 1
            self.calls.append(list(items))
        try:
            if self.gate is not None:
                self.gate.wait(10)
            time.sleep(self.delay)
            if "bad" in items:
                raise ValueError("bad item")
            return [(key, item) for item in items]
        finally:
            with self.lock:
                self.running[key] -= 1


def depth(stage: str) -> float:
    return REGISTRY.get_sample_value("gapfix_queue_depth", {"stage": stage}) or 0.0


def test_concurrent_clients_are_gathered_into_one_call_per_lane() -> None:
    """32 closed-loop clients: after the first bursts, every call carries all 32 requests
    (not two calls of 16 at once), and a lane never runs two calls at once."""
    core = Core(delay=0.04)  # a fixed cost per call: worth waiting up to 10 ms for
    batcher = AsyncBatcher(core, stage=lambda k: "t1", max_batch=1024, max_queue=4096,
                           max_wait_ms=50, core_threads=2)  # fmt: skip

    async def client(c: int) -> None:
        for r in range(10):
            assert await batcher.submit("lane", (c, r), 1) == ("lane", (c, r))
            await asyncio.sleep(0.001 * (c % 4))  # clients come back at slightly different times

    async def main() -> None:
        await asyncio.gather(*(client(c) for c in range(32)))
        await batcher.aclose()

    asyncio.run(main())
    sizes = [len(c) for c in core.calls]
    assert sum(sizes) == 320 and not core.overlap
    assert sizes[0] == 32  # all queued before the lane's worker first ran
    assert sizes.count(32) == len(sizes), sizes  # the lane waits for its recent burst
    assert batcher.stats["t1"] == {"requests": 320, "batches": 10, "items": 320, "rejected": 0}
    assert 0.005 < batcher.wait_limit() < 0.02  # a quarter of the 40 ms per call, not 50 ms


def test_a_lone_client_never_waits() -> None:
    core = Core()
    batcher = AsyncBatcher(core, stage=lambda k: "t2", max_batch=64, max_queue=64,
                           max_wait_ms=500)  # fmt: skip

    async def main() -> float:
        t0 = time.perf_counter()
        for i in range(5):
            await batcher.submit("lane", i, 1)
        return time.perf_counter() - t0

    assert asyncio.run(main()) < 0.5  # five waits of 500 ms would take 2.5 s
    assert [len(c) for c in core.calls] == [1] * 5


def test_lanes_and_max_batch() -> None:
    core = Core()
    batcher = AsyncBatcher(core, stage=lambda k: f"t3{k}", max_batch=5, max_queue=100)

    async def main() -> list:
        jobs = [batcher.submit("a", i, 2) for i in range(6)] + [batcher.submit("b", 9, 7)]
        return await asyncio.gather(*jobs)

    out = asyncio.run(main())
    assert out == [("a", i) for i in range(6)] + [("b", 9)]
    by_key = {}
    for call in core.calls:
        by_key.setdefault("b" if call == [9] else "a", []).append(len(call))
    assert by_key == {"a": [2, 2, 2], "b": [1]}  # 2 requests of 2 rows fit in 5; 7 rows alone


def test_a_full_queue_refuses_at_once_with_retry_after() -> None:
    gate = threading.Event()
    core = Core(gate=gate)
    batcher = AsyncBatcher(core, stage=lambda k: "t4", max_batch=4, max_queue=6)

    async def main() -> None:
        first = asyncio.ensure_future(batcher.submit("lane", "x", 4))
        await asyncio.sleep(0.05)  # its core call is running (blocked on the gate)
        queued = [asyncio.ensure_future(batcher.submit("lane", i, 2)) for i in range(3)]
        await asyncio.sleep(0)
        assert depth("t4") == 6 and batcher.queued_rows == 6 and batcher.is_overloaded(1)
        t0 = time.perf_counter()
        with pytest.raises(OverloadedError) as e:
            await batcher.submit("lane", "late", 1)
        assert time.perf_counter() - t0 < 0.05 and e.value.retry_after >= 1
        assert "6 rows queued (limit 6)" in e.value.message
        gate.set()
        assert await first == ("lane", "x")
        assert [await q for q in queued] == [("lane", i) for i in range(3)]
        assert depth("t4") == 0 and batcher.queued_rows == 0

    asyncio.run(main())
    assert batcher.stats["t4"]["rejected"] == 1 and batcher.stats["t4"]["requests"] == 4


def test_the_time_budget_refuses_early_and_sheds_late_requests() -> None:
    core = Core(delay=0.1)  # 1 row per call, 10 rows/s
    batcher = AsyncBatcher(core, stage=lambda k: "t5", max_batch=1, max_queue=1000,
                           budget_ms=250)  # fmt: skip

    async def main() -> list:
        await batcher.submit("lane", "warm", 1)  # measures the rate: ~10 rows/s
        jobs = [asyncio.ensure_future(batcher.submit("lane", i, 1)) for i in range(10)]
        return await asyncio.gather(*jobs, return_exceptions=True)

    out = asyncio.run(main())
    served = [r for r in out if not isinstance(r, Exception)]
    refused = [r for r in out if isinstance(r, OverloadedError)]
    assert len(served) + len(refused) == 10 and 1 <= len(served) <= 4, out
    assert all(r.retry_after >= 1 for r in refused)
    assert batcher.stats["t5"]["rejected"] >= 5  # refused at admission, not after waiting


def test_a_core_slower_than_the_budget_still_serves_requests_that_find_no_queue() -> None:
    """The budget bounds queueing, not a call's own time: with a backend slower than the
    budget (a remote vector database under load), sequential requests are all answered."""
    core = Core(delay=0.15)
    batcher = AsyncBatcher(core, stage=lambda k: "t8", max_batch=4, max_queue=100,
                           budget_ms=100)  # fmt: skip

    async def main() -> list:
        return [await batcher.submit("lane", i, 1) for i in range(4)]

    assert asyncio.run(main()) == [("lane", i) for i in range(4)]
    assert batcher.stats["t8"]["rejected"] == 0


def test_an_error_reaches_only_its_request() -> None:
    core = Core()
    batcher = AsyncBatcher(core, stage=lambda k: "t6", max_batch=10, max_queue=10)

    async def main() -> list:
        jobs = [batcher.submit("lane", x, 1) for x in ("a", "bad", "c")]
        return await asyncio.gather(*jobs, return_exceptions=True)

    a, bad, c = asyncio.run(main())
    assert a == ("lane", "a") and c == ("lane", "c")
    assert isinstance(bad, ValueError)
    assert [len(x) for x in core.calls] == [3, 1, 1, 1]  # merged, then each alone


def test_pre_stage_close_and_cancellation() -> None:
    core = Core(delay=0.05)
    batcher = AsyncBatcher(core, stage=lambda k: "t7", max_batch=8, max_queue=8,
                           pre_threads=2)  # fmt: skip

    def pre(x: str) -> str:
        if x == "broken":
            raise ValueError("cannot decode")
        return x.upper()

    async def main() -> None:
        doomed = asyncio.ensure_future(batcher.submit("lane", "gone", 1, pre))
        jobs = [asyncio.ensure_future(batcher.submit("lane", x, 1, pre)) for x in "abc"]
        broken = asyncio.ensure_future(batcher.submit("lane", "broken", 1, pre))
        await asyncio.sleep(0)
        doomed.cancel()
        await batcher.aclose()  # lets accepted requests finish
        assert [j.result() for j in jobs] == [("lane", x) for x in "ABC"]
        assert isinstance(broken.exception(), ValueError)
        with pytest.raises(BatcherClosedError):
            await batcher.submit("lane", "late", 1)
        assert batcher.queued_rows == 0 and depth("t7") == 0 and depth("t7_pre") == 0

    asyncio.run(main())
    assert all("GONE" not in call for call in core.calls)
