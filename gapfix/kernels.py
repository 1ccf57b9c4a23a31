"""Fused per-row kernels for applying transforms: one pass over memory (numba when present).

``x -> (x * scale + bias) / ||.||`` is computed row by row while the row sits in L1 cache, so
applying a shift-type transform reads the input once and writes the output once, like a copy.
Large inputs use all cores (numba ``prange``): one core cannot saturate memory bandwidth
(measured: 0.49 of ``np.copyto`` on one core, 0.76 on two, `make bench`). Without numba the
same maths runs as blocked numpy (a few passes over cache-sized blocks).
"""

from __future__ import annotations

import threading

import numpy as np

from gapfix.blocks import iter_blocks, normalize_rows

try:  # numba is a dependency, but keep a working fallback for exotic platforms
    from numba import njit, prange

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only where numba is absent
    HAVE_NUMBA = False

NUMPY_BLOCK_ROWS = 1024
PARALLEL_MIN_ROWS = 65_536  # below this, thread start-up costs more than it saves
_PARALLEL_LOCK = threading.Lock()  # numba's default threading layer is not re-entrant

if HAVE_NUMBA:

    @njit(fastmath=True, nogil=True, cache=True)
    def _rows_affine(x, scale, bias, out, use_scale, use_bias, renorm):  # pragma: no cover
        n, d = x.shape
        one = np.float32(1.0)
        tiny = np.float32(1e-12)
        for i in range(n):
            ss = np.float32(0.0)
            for j in range(d):
                v = x[i, j]
                if use_scale:
                    v = v * scale[j]
                if use_bias:
                    v = v + bias[j]
                out[i, j] = v
                ss += v * v
            if renorm:
                inv = one / max(np.sqrt(ss), tiny)
                for j in range(d):
                    out[i, j] *= inv

    # A second copy of the same body, not the same function compiled twice: numba's on-disk
    # cache is keyed by source location, so two variants of one function would share (and
    # swap) their cached machine code.
    @njit(fastmath=True, nogil=True, cache=True, parallel=True)
    def _rows_affine_parallel(x, scale, bias, out, use_scale, use_bias, renorm):  # pragma: no cover
        n, d = x.shape
        one = np.float32(1.0)
        tiny = np.float32(1e-12)
        for i in prange(n):
            ss = np.float32(0.0)
            for j in range(d):
                v = x[i, j]
                if use_scale:
                    v = v * scale[j]
                if use_bias:
                    v = v + bias[j]
                out[i, j] = v
                ss += v * v
            if renorm:
                inv = one / max(np.sqrt(ss), tiny)
                for j in range(d):
                    out[i, j] *= inv


def rows_affine(
    x: np.ndarray,
    out: np.ndarray,
    scale: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    renormalize: bool = True,
) -> None:
    """``out = normalise(x * scale + bias)`` row-wise (scale, bias optional; out may be x)."""
    if HAVE_NUMBA and x.dtype == np.float32 and x.flags.c_contiguous and out.flags.c_contiguous:
        dummy = np.empty(x.shape[1], dtype=np.float32)
        args = (
            x,
            dummy if scale is None else scale,
            dummy if bias is None else bias,
            out,
            scale is not None,
            bias is not None,
            renormalize,
        )
        if x.shape[0] >= PARALLEL_MIN_ROWS:
            with _PARALLEL_LOCK:
                _rows_affine_parallel(*args)
        else:
            _rows_affine(*args)
        return
    for sl in iter_blocks(x.shape[0], NUMPY_BLOCK_ROWS):
        block, dest = np.asarray(x[sl], dtype=np.float32), out[sl]
        if scale is not None:
            np.multiply(block, scale, out=dest)
            block = dest
        if bias is not None:
            np.add(block, bias, out=dest)
        elif block is not dest:
            dest[...] = block
        if renormalize:
            normalize_rows(dest, out=dest)
