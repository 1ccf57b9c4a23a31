"""The backend interface: the embedded store implements the protocols, one ``search`` for
vectors and stored ids, and the background jobs of the transform lifecycle (``rebuild``)."""

from __future__ import annotations

import inspect
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from gapfix.errors import InputError
from gapfix.store import (
    Collection,
    CollectionStore,
    ConflictError,
    EmbeddedCollection,
    ItemIn,
    NotFoundError,
    Searched,
    Store,
)
from gapfix.store.milvus import MilvusCollection, MilvusStore
from gapfix.store.rebuild import Job, Rebuilder


def _members(proto: type) -> dict[str, object]:
    """The public methods and properties a protocol declares."""
    return {n: v for n, v in vars(proto).items() if not n.startswith("_")}


@pytest.mark.parametrize(
    ("proto", "impl"),
    [
        (Collection, EmbeddedCollection),
        (CollectionStore, Store),
        (Collection, MilvusCollection),
        (CollectionStore, MilvusStore),
    ],
)
def test_each_backend_implements_the_protocols(proto: type, impl: type) -> None:
    members = _members(proto)
    assert len(members) == (24 if proto is Collection else 8)
    for name, want in members.items():
        got = getattr(impl, name)
        if isinstance(want, property):
            assert isinstance(got, property), name
            continue
        params = list(inspect.signature(want).parameters.values())
        have = inspect.signature(got).parameters
        for p in params:  # same names, kinds and defaults; an implementation may add optionals
            assert p.name in have, (name, p.name)
            q = have[p.name]
            assert (q.kind, q.default) == (p.kind, p.default), (name, p.name)
        extra = [q for n, q in have.items() if n not in {p.name for p in params}]
        assert all(q.default is not inspect.Parameter.empty for q in extra), name


def _vectors(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_one_search_for_vectors_and_stored_ids(tmp_path: Path) -> None:
    with Store(tmp_path, flush_interval=None) as s:
        c = s.create_collection("c")
        assert isinstance(c, Collection) and isinstance(s, CollectionStore) and c.name == "c"
        img, txt = _vectors(20), _vectors(20, seed=1)
        c.add([ItemIn(f"d{n}", image=img[n], text=txt[n]) for n in range(20)])
        found = c.search(img[:3], "image", k=4)
        assert isinstance(found, Searched) and found.transform is None
        assert [len(h) for h in found.hits] == [4, 4, 4]
        by_id = c.search(item_id="d3", k=4)
        assert len(by_id.hits) == 1 and [h.id for h in by_id.hits[0]][:1] != ["d3"]
        assert c.search(item_id="d3", k=1, exclude_self=False).hits[0][0].id == "d3"
        for bad in ({}, {"vectors": img[0], "query_modality": "image", "item_id": "d3"}):
            with pytest.raises(InputError, match="either query vectors or an item id"):
                c.search(**bad)
        with pytest.raises(InputError, match="modality"):
            c.search(img[0], None)
        with pytest.raises(NotFoundError):
            c.search(item_id="missing")
        assert c.fit_transform("centering", wait_seconds=60)
        t = c.active_transform
        assert c.search(item_id="d3").transform is t and c.search(img[0], "image").transform is t
        assert c.search(item_id="d3", corrected=False).transform is None


# ------------------------------------------------------------------ background jobs (rebuild)
class _Body:
    """A job body that blocks until released, then optionally fails."""

    def __init__(self, fail: bool = False) -> None:
        self.entered, self.release, self.fail = threading.Event(), threading.Event(), fail
        self.saw_cancelled: bool | None = None

    def __call__(self, job: Job) -> None:
        self.entered.set()
        self.release.wait(30)
        self.saw_cancelled = job.cancelled
        if self.fail:
            raise RuntimeError("simulated")


def test_a_superseded_job_wakes_its_waiter_and_does_not_hold_up_the_next() -> None:
    r = Rebuilder("t", threading.RLock())
    a_body, b_body = _Body(), _Body()
    a = Job("transform")
    r.start(a, a_body)
    assert a_body.entered.wait(10)
    outcome: dict[str, object] = {}

    def wait_a() -> None:
        try:
            outcome["a"] = r.wait(30, a)
        except ConflictError as exc:
            outcome["a"] = exc

    waiter = threading.Thread(target=wait_a)
    waiter.start()
    assert r.wait(0.05, a) is False and r.status["status"] == "rebuilding"
    b = Job("transform")
    t0 = time.monotonic()
    r.start(b, b_body)
    waiter.join(10)
    assert isinstance(outcome["a"], ConflictError) and "superseded" in str(outcome["a"])
    assert time.monotonic() - t0 < 1.0  # woken by the superseding, not by a poll or timeout
    assert b_body.entered.wait(10)  # B runs while A's body is still blocked
    b_body.release.set()
    assert r.wait(10, b) is True and r.status == {"status": "active", "error": None, "job": None}
    a_body.release.set()
    assert a.future is not None
    a.future.result(10)
    assert a_body.saw_cancelled is True and r.job is None
    r.close()


def test_failures_show_in_the_status_only_for_a_current_switch() -> None:
    r = Rebuilder("t", threading.RLock())
    failed: list[Job] = []
    body = _Body(fail=True)
    body.release.set()
    job = Job("transform")
    r.start(job, body, failed.append)
    assert r.wait(10, job) is False
    st = r.status
    assert st["status"] == "failed" and st["error"] == "RuntimeError: simulated"
    assert failed == [job]
    compact = Job("compact")
    r.start(compact, body, failed.append)  # a new job clears the old failure
    assert r.wait(10) is True and failed == [job] and compact.error == "RuntimeError: simulated"
    r.close()


def test_close_cancels_the_running_job_and_waits_for_it() -> None:
    r = Rebuilder("t", threading.RLock())
    body = _Body()
    job = Job("transform")
    r.start(job, body)
    assert body.entered.wait(10)
    closer = threading.Thread(target=r.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive()  # waits for the body
    body.release.set()
    closer.join(10)
    assert not closer.is_alive() and body.saw_cancelled is True and r.job is None


def test_peek_finds_open_collections_without_raising(tmp_path) -> None:
    """``peek`` (what the service's collection dependency tries on the event loop) answers
    an open collection and None for any other name; ``get`` still raises NotFoundError."""
    from gapfix.store import NotFoundError

    s = Store(tmp_path / "d")
    c = s.create_collection("c")
    assert s.peek("c") is c and s.peek("nope") is None and s.peek(3) is None  # type: ignore[arg-type]
    with pytest.raises(NotFoundError):
        s.get("nope")
    s.close()
