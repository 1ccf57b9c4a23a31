"""The service's search batcher: concurrent vector searches merged into one FAISS call, with
the same results as searching one by one, and errors reaching only the request that caused them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from gapfix.errors import InputError
from gapfix.store import ItemIn, Store
from service.search_batching import SearchBatcher

D = 16


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture
def coll(tmp_path: Path):
    rng = np.random.default_rng(0)
    with Store(tmp_path / "data", flush_interval=None) as store:
        c = store.create_collection("c")
        x = unit(rng.standard_normal((200, D)))
        c.add(
            [
                ItemIn(f"i{n}", image=x[n]) if n % 2 else ItemIn(f"t{n}", text=x[n])
                for n in range(200)
            ]
        )
        yield c


def _ids(hits) -> list[list[str]]:
    return [[h.id for h in row] for row in hits]


def test_concurrent_searches_are_merged_with_identical_results(coll) -> None:
    rng = np.random.default_rng(1)
    queries = [unit(rng.standard_normal((n, D))) for n in (1, 3, 1, 2, 1, 1, 4, 1)]
    expected = [_ids(coll.search(q, "text", k=5, modalities=["image"]).hits) for q in queries]
    batcher = SearchBatcher()

    async def main():
        return await asyncio.gather(
            *(batcher.search(coll, q, "text", 5, ["image"], True) for q in queries)
        )

    got = asyncio.run(main())
    assert [_ids(g.hits) for g in got] == expected
    # all eight were queued before the lane's worker ran: one FAISS call of 14 rows
    assert batcher.stats == {"requests": 8, "batches": 1, "items": 14, "rejected": 0}
    assert all(lane.task is None and not lane.pending for lane in batcher.batcher._lanes.values())


def test_different_parameters_are_not_merged(coll) -> None:
    q = unit(np.random.default_rng(2).standard_normal((1, D)))
    batcher = SearchBatcher()

    async def main():
        return await asyncio.gather(
            batcher.search(coll, q, "text", 3, None, True),
            batcher.search(coll, q, "text", 4, None, True),
            batcher.search(coll, q, "image", 3, None, True),
            batcher.search(coll, q, "text", 3, ["text"], False),
        )

    a, b, c, d = asyncio.run(main())
    assert len(a.hits[0]) == 3 and len(b.hits[0]) == 4 and len(c.hits[0]) == 3
    assert {h.modality for h in d.hits[0]} == {"text"}
    assert batcher.stats["batches"] == 4


def test_an_error_reaches_only_its_request(coll) -> None:
    good = unit(np.random.default_rng(3).standard_normal((2, D)))
    bad = np.ones((1, D + 1), np.float32)  # wrong dimension
    batcher = SearchBatcher()

    async def main():
        return await asyncio.gather(
            batcher.search(coll, good[:1], "text", 3, None, True),
            batcher.search(coll, good[1:], "text", 3, None, True),
            batcher.search(coll, bad, "text", 3, None, True),
            batcher.search(coll, good, "text", 3, None, True),
            return_exceptions=True,
        )

    r = asyncio.run(main())
    assert isinstance(r[2], InputError)
    assert _ids(r[1].hits) == _ids(coll.search(good[1:], "text", k=3).hits)
    assert _ids(r[3].hits) == _ids(coll.search(good, "text", k=3).hits)
