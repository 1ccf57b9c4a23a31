"""Small query batches search on one OpenMP thread (``SERIAL_BELOW_NQ``); the setting is
per thread and restored, and the answers are the same as with the default thread team."""

from __future__ import annotations

import threading

import faiss
import numpy as np
import pytest

from gapfix.store.index import SERIAL_BELOW_NQ, VectorIndex, omp_threads
from gapfix.store.index_kinds import IndexParams


def test_omp_threads_is_per_thread_and_restored() -> None:
    before = faiss.omp_get_max_threads()
    seen: list[int] = []
    inside = threading.Event()
    release = threading.Event()

    def other() -> None:
        with omp_threads(3):  # this thread's own setting
            inside.wait(5)
            seen.append(faiss.omp_get_max_threads())  # while the main thread is at 1
        release.set()

    t = threading.Thread(target=other)
    t.start()
    with omp_threads(1):
        assert faiss.omp_get_max_threads() == 1
        inside.set()
        release.wait(5)
    t.join(5)
    assert faiss.omp_get_max_threads() == before
    assert seen == [3]
    with omp_threads(None):
        assert faiss.omp_get_max_threads() == before


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_small_batches_answer_as_the_default_thread_team_does(kind: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    idx = VectorIndex(kind, 32, IndexParams.from_dict(kind, {}))
    idx.add(x, np.arange(3000, dtype=np.int64))
    for nq in (1, SERIAL_BELOW_NQ - 1, SERIAL_BELOW_NQ, 100):
        q = x[:nq] + 0.05
        got_d, got_i = idx.search(q, 10)
        want_d, want_i = idx.index.search(q, 10)
        np.testing.assert_array_equal(got_i, want_i)
        np.testing.assert_allclose(got_d, want_d, rtol=1e-6)
