"""Blocked array kernels: bounded-memory passes over large (possibly memory-mapped) arrays."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

DEFAULT_BLOCK_ROWS = 4096


def iter_blocks(n: int, block_rows: int = DEFAULT_BLOCK_ROWS) -> Iterator[slice]:
    """Yield row slices of at most ``block_rows`` covering ``range(n)``."""
    for start in range(0, n, block_rows):
        yield slice(start, min(start + block_rows, n))


def normalize_rows(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """L2-normalise rows of ``x`` into ``out`` (may be ``x``); zero rows stay zero."""
    if out is None:
        out = np.empty_like(x, dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float32))
    np.maximum(norms, np.float32(1e-12), out=norms)
    np.divide(x, norms[:, None], out=out)
    return out


def normalized(x: np.ndarray, block_rows: int = DEFAULT_BLOCK_ROWS) -> np.ndarray:
    """Return a new float32 array with L2-normalised rows (blocked, works on memmaps)."""
    out = np.empty(x.shape, dtype=np.float32)
    for sl in iter_blocks(x.shape[0], block_rows):
        normalize_rows(np.asarray(x[sl], dtype=np.float32), out=out[sl])
    return out
