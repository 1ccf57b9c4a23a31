"""Streaming accumulators for fitting: float64 moments and a reservoir sample of rows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

FIT_BLOCK_ROWS = 16_384


class Moments:
    """Running count, sum, per-dim sum of squares and (optionally) X^T X in float64.

    Block products are computed in float32 BLAS and accumulated in float64, so fitting on
    10M+ rows stays accurate and never holds more than one block in memory.
    """

    def __init__(self, dim: int, outer: bool = False) -> None:
        self.dim = dim
        self.n = 0
        self.sum = np.zeros(dim, dtype=np.float64)
        self.sumsq = np.zeros(dim, dtype=np.float64)
        self.outer = np.zeros((dim, dim), dtype=np.float64) if outer else None
        self._eigh: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._memo: tuple[Any, Any] | None = None

    def update(self, x: np.ndarray) -> None:
        """Add the rows of ``x`` (float32, 2-D)."""
        self._eigh = None
        self._memo = None
        for start in range(0, x.shape[0], FIT_BLOCK_ROWS):
            block = np.ascontiguousarray(x[start : start + FIT_BLOCK_ROWS], dtype=np.float32)
            self.n += block.shape[0]
            self.sum += block.sum(axis=0, dtype=np.float64)
            self.sumsq += np.einsum("ij,ij->j", block, block, dtype=np.float64)
            if self.outer is not None:
                self.outer += block.T @ block

    @property
    def mean(self) -> np.ndarray:
        return self.sum / max(self.n, 1)

    @property
    def var(self) -> np.ndarray:
        return np.maximum(self.sumsq / max(self.n, 1) - self.mean**2, 0.0)

    def memo(self, key: Any, compute: Callable[[], Any]) -> Any:
        """``compute()``, kept for the next call with the same ``key`` (one entry: a d x d
        value per fold's moments is all ``auto`` can afford to keep)."""
        if self._memo is None or self._memo[0] != key:
            self._memo = (key, compute())
        return self._memo[1]

    @property
    def cov(self) -> np.ndarray:
        if self.outer is None:
            raise RuntimeError("Moments was created without outer products")
        mu = self.mean
        return self.outer / max(self.n, 1) - np.outer(mu, mu)

    def cov_eigh(self) -> tuple[np.ndarray, np.ndarray]:
        """Eigenvalues and eigenvectors of ``cov``, computed once per state of the moments.

        Every shrinkage of the covariance towards a scaled identity keeps its eigenvectors, so
        whitening candidates that share these moments (``auto``'s folds) share one ``eigh``.
        BLAS runs on one thread here: a threaded 512-d ``eigh`` measured 4-20x slower.
        """
        if self._eigh is None:
            from threadpoolctl import threadpool_limits

            cov = self.cov
            with threadpool_limits(limits=1, user_api="blas"):
                vals, vecs = np.linalg.eigh((cov + cov.T) / 2)
            self._eigh = (vals, vecs, vecs.astype(np.float32))
        return self._eigh[0], self._eigh[1]

    def cov_eigh32(self) -> tuple[np.ndarray, np.ndarray]:
        """``cov_eigh`` with float32 eigenvectors (kept with them: products reuse one copy)."""
        self.cov_eigh()
        assert self._eigh is not None
        return self._eigh[0], self._eigh[2]


class CrossMoments:
    """Running sum of x_i y_i^T over paired rows (for Procrustes), float64."""

    def __init__(self, dim: int) -> None:
        self.n = 0
        self.cross = np.zeros((dim, dim), dtype=np.float64)

    def update(self, x: np.ndarray, y: np.ndarray) -> None:
        for start in range(0, x.shape[0], FIT_BLOCK_ROWS):
            xb = np.ascontiguousarray(x[start : start + FIT_BLOCK_ROWS], dtype=np.float32)
            yb = np.ascontiguousarray(y[start : start + FIT_BLOCK_ROWS], dtype=np.float32)
            self.n += xb.shape[0]
            self.cross += xb.T @ yb


class Reservoir:
    """Uniform sample of at most ``capacity`` rows from a stream (Algorithm R, vectorised)."""

    def __init__(self, capacity: int, dim: int, seed: int = 0) -> None:
        self.capacity = capacity
        self.rows = np.empty((0, dim), dtype=np.float32)
        self.seen = 0
        self._rng = np.random.default_rng(seed)

    def slots(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Decide which of the next ``count`` rows enter and where: (row_idx, slot_idx)."""
        idx = np.arange(self.seen, self.seen + count)
        fill = idx < self.capacity
        slots = np.where(fill, idx, self._rng.integers(0, idx + 1))
        keep = slots < self.capacity
        self.seen += count
        return np.nonzero(keep)[0], slots[keep]

    def put(self, x: np.ndarray, rows: np.ndarray, slots: np.ndarray) -> None:
        """Store ``x[rows]`` at ``slots`` (growing the buffer while it is not yet full)."""
        if rows.size == 0:
            return
        need = int(slots.max()) + 1
        if need > self.rows.shape[0]:
            grown = np.empty(
                (min(max(need, 2 * self.rows.shape[0]), self.capacity), x.shape[1]), np.float32
            )
            grown[: self.rows.shape[0]] = self.rows
            self.rows = grown
        self.rows[slots] = np.asarray(x[rows], dtype=np.float32)

    def sample(self) -> np.ndarray:
        return self.rows[: min(self.seen, self.capacity)]


@dataclass
class SharedFit:
    """Moments (and the unit rows they came from) that several transforms fit from."""

    image: Moments
    text: Moments
    image_rows: np.ndarray
    text_rows: np.ndarray
    cross: CrossMoments | None = None

    @classmethod
    def of(cls, image: np.ndarray, text: np.ndarray, outer: bool, cross: bool) -> SharedFit:
        """Accumulate the moments of unit rows ``image`` and ``text`` once."""
        mi, mt = Moments(image.shape[1], outer=outer), Moments(text.shape[1], outer=outer)
        mi.update(image)
        mt.update(text)
        cm = None
        if cross:
            cm = CrossMoments(image.shape[1])
            cm.update(image, text)
        return cls(mi, mt, image, text, cm)


class FixedRows:
    """A fixed set of calibration rows in the place of a reservoir (at most ``limit``)."""

    def __init__(self, rows: np.ndarray, limit: int) -> None:
        self.rows = rows[:limit]

    def sample(self) -> np.ndarray:
        return self.rows
