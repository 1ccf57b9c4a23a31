"""The numba kernels behind `gapfix.kernels.rows_affine`, in their own module so that importing
gapfix does not import numba (about a second): `gapfix.kernels` loads this on first use.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(fastmath=True, nogil=True, cache=True)
def _rows_affine(
    x, scale, bias, norms, out, use_scale, use_bias, norm_mode, renorm
):  # pragma: no cover
    n, d = x.shape
    one = np.float32(1.0)
    tiny = np.float32(1e-12)
    for i in range(n):
        nrm = one
        if norm_mode == 1:
            s0 = np.float32(0.0)
            for j in range(d):
                s0 += x[i, j] * x[i, j]
            nrm = max(np.sqrt(s0), tiny)
        elif norm_mode == 2:
            nrm = max(norms[i], tiny)
        ss = np.float32(0.0)
        for j in range(d):
            v = x[i, j]
            if use_scale:
                v = v * scale[j]
            if use_bias:
                v = v + nrm * bias[j]
            out[i, j] = v
            ss += v * v
        if renorm:
            inv = one / max(np.sqrt(ss), tiny)
        elif norm_mode != 0:
            inv = one / nrm
        else:
            continue
        for j in range(d):
            out[i, j] *= inv


# A second copy of the same body, not the same function compiled twice: numba's on-disk
# cache is keyed by source location, so two variants of one function would share (and
# swap) their cached machine code.
@njit(fastmath=True, nogil=True, cache=True, parallel=True)
def _rows_affine_parallel(
    x, scale, bias, norms, out, use_scale, use_bias, norm_mode, renorm
):  # pragma: no cover
    n, d = x.shape
    one = np.float32(1.0)
    tiny = np.float32(1e-12)
    for i in prange(n):
        nrm = one
        if norm_mode == 1:
            s0 = np.float32(0.0)
            for j in range(d):
                s0 += x[i, j] * x[i, j]
            nrm = max(np.sqrt(s0), tiny)
        elif norm_mode == 2:
            nrm = max(norms[i], tiny)
        ss = np.float32(0.0)
        for j in range(d):
            v = x[i, j]
            if use_scale:
                v = v * scale[j]
            if use_bias:
                v = v + nrm * bias[j]
            out[i, j] = v
            ss += v * v
        if renorm:
            inv = one / max(np.sqrt(ss), tiny)
        elif norm_mode != 0:
            inv = one / nrm
        else:
            continue
        for j in range(d):
            out[i, j] *= inv
