"""Helpers of the opt-in scale benchmark (``benchmarks.scale``): synthetic CLIP-like vectors
generated chunk by chunk (deterministic per chunk, so ground truth regenerates them instead of
keeping them), exact top-k over those chunks, an RSS sampler, and the memory estimate.
"""

from __future__ import annotations

import os
import resource
import threading
from collections.abc import Iterator

import faiss
import numpy as np

CHUNK = 50_000


class ClipLike:
    """Unit rows in two modality cones with a gap, around many clusters.

    Row ``i`` is an image when ``i`` is even, a text when odd: ``normalise(cone + cluster +
    noise)``, where the two modality means sit ~0.6 apart in cosine (CLIP's gap) and each
    cluster is a shared concept both modalities point at. Chunk ``c`` always comes out the
    same (its own seeded generator), so nothing needs to keep the whole set.
    """

    def __init__(self, n: int, dim: int = 512, seed: int = 0, clusters: int | None = None):
        self.n, self.dim, self.seed = n, dim, seed
        rng = np.random.default_rng([seed, 1 << 30])
        base = _unit(rng.standard_normal((2, dim)))
        self.cones = (0.55 * base).astype(np.float32)  # image cone, text cone
        k = clusters or int(min(10_000, max(16, n // 500)))
        self.centers = (0.75 * _unit(rng.standard_normal((k, dim)))).astype(np.float32)

    def rows(self, start: int, stop: int, rng: np.random.Generator) -> np.ndarray:
        """Rows ``start:stop`` drawn with ``rng`` (modality by parity of the row number)."""
        m = stop - start
        mod = (np.arange(start, stop) & 1).astype(np.int64)
        cl = rng.integers(0, len(self.centers), m)
        noise = rng.standard_normal((m, self.dim), dtype=np.float32) * np.float32(
            0.45 / np.sqrt(self.dim)
        )
        x = self.cones[mod] + self.centers[cl] + noise
        return _unit(x)

    def chunk(self, c: int) -> tuple[int, np.ndarray]:
        """``(first row number, rows)`` of chunk ``c``."""
        start = c * CHUNK
        stop = min(self.n, start + CHUNK)
        return start, self.rows(start, stop, np.random.default_rng([self.seed, c]))

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        for c in range((self.n + CHUNK - 1) // CHUNK):
            yield self.chunk(c)

    def queries(self, nq: int) -> np.ndarray:
        """Held-out text queries (odd row numbers), from a generator no chunk uses."""
        rng = np.random.default_rng([self.seed, 1 << 31])
        return self.rows(1, 1 + 2 * nq, rng)[0::2] if nq else np.zeros((0, self.dim), np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact_topk(data: ClipLike, q: np.ndarray, k: int = 10) -> np.ndarray:
    """Exact inner-product top-``k`` row numbers of ``q`` over every row, chunk by chunk."""
    best_d = np.full((len(q), k), -np.inf, np.float32)
    best_i = np.full((len(q), k), -1, np.int64)
    for start, x in data.chunks():
        d, i = faiss.knn(q, x, min(k, len(x)), metric=faiss.METRIC_INNER_PRODUCT)
        cd = np.concatenate([best_d, d], axis=1)
        ci = np.concatenate([best_i, i + start], axis=1)
        top = np.argsort(-cd, axis=1, kind="stable")[:, :k]
        best_d = np.take_along_axis(cd, top, axis=1)
        best_i = np.take_along_axis(ci, top, axis=1)
    return best_i


def recall_at_k(found: list[list[int]], truth: np.ndarray) -> float:
    """Mean fraction of each query's true top-k that the search returned."""
    k = truth.shape[1]
    pairs = zip(found, truth, strict=True)
    return float(np.mean([len(set(f[:k]) & set(t.tolist())) / k for f, t in pairs]))


def rss_bytes() -> int:
    """This process's resident set size now (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def max_rss_bytes() -> int:
    """Peak RSS of this process so far (getrusage; kilobytes on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class RssPeak:
    """Samples RSS every ``interval`` s in a thread; ``peak()`` since the last ``reset()``."""

    def __init__(self, interval: float = 0.05) -> None:
        self._peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(interval,), daemon=True)
        self._thread.start()

    def _loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self._peak = max(self._peak, rss_bytes())

    def reset(self) -> None:
        self._peak = rss_bytes()

    def peak(self) -> int:
        self._peak = max(self._peak, rss_bytes())
        return self._peak

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def machine_memory() -> int:
    """Physical memory of this machine in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# bytes per vector of one FAISS index of the store's default settings, at dim d (id maps
# included): HNSW keeps the float vector and 2*M level-0 links of 4 bytes (+ upper levels);
# IVF-PQ keeps d/8 code bytes and an 8-byte id per vector.
def index_bytes_per_vector(kind: str, dim: int, hnsw_m: int = 32) -> float:
    if kind == "hnsw":
        return 4 * dim + 2 * hnsw_m * 4 * 1.07 + 8 + 16
    if kind == "ivfpq":
        return dim // 8 + 8 + 8
    return 4 * dim + 8  # flat


def estimate_peak_bytes(n: int, kind: str, dim: int = 512) -> tuple[int, str]:
    """Estimated peak memory of this benchmark on ``n`` vectors of ``kind``, and its phase.

    The transform switch is the peak: the live raw index stays while the fit loads every raw
    vector (``raw_vectors``: the per-modality parts, their concatenation and the fit's own
    copy), then the rebuild holds all corrected vectors next to the index it builds. Calibrated
    on the measured growth of the switch peak from 100k to 300k vectors (this machine, 512-d):
    10.4 KB per vector for hnsw, 6.5 KB for ivfpq; the model gives 11.2 KB and 6.7 KB.
    """
    idx = index_bytes_per_vector(kind, dim) * n
    vec = 4 * dim * n
    phases = {"ingest": idx, "transform switch": 2 * idx + 3.2 * vec}
    phase = max(phases, key=phases.__getitem__)
    return int(phases[phase] + 600 * 2**20), phase  # + the interpreter, faiss, numpy, SQLite
