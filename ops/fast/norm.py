"""norm and rms_norm over dim 0 (rows), double accumulation as the reference kernels (`ops/reduce.py`)."""

from __future__ import annotations

import math

import numba
import numpy as np

from npggml.ops import registry
from npggml.ops.fast._common import F32, F64, is_f32, kernel, reduce_add16, row_of


@kernel
def _norm(x, eps, y):
    """ggml_compute_forward_norm_f32 as `ops.reduce._norm_rows`: mean = float(double sum) / n in float; centred
    squares in float, 16-blocks reduced in float, then summed in double; float variance and scale."""
    n3, n2, n1, n0 = x.shape
    nb = n0 // 16 * 16
    for r in numba.prange(n3 * n2 * n1):
        i3, i2, i1 = row_of(r, n2, n1)
        xr = x[i3, i2, i1]
        yr = y[i3, i2, i1]
        s = F64(0.0)
        for i in range(n0):
            s += F64(xr[i])
        mu = F32(s) / F32(n0)
        for i in range(n0):
            yr[i] = xr[i] - mu
        tmp = np.empty(16, F32)
        v = F64(0.0)
        for b in range(0, nb, 16):
            for l in range(16):
                tmp[l] = yr[b + l] * yr[b + l]
            v += F64(reduce_add16(tmp))
        for i in range(nb, n0):
            v += F64(yr[i] * yr[i])
        var = F32(v / n0)
        sc = F32(1.0) / F32(math.sqrt(F32(var + eps)))
        for i in range(n0):
            yr[i] = yr[i] * sc


@kernel
def _rms_norm(x, eps, y):
    n3, n2, n1, n0 = x.shape
    for r in numba.prange(n3 * n2 * n1):
        i3, i2, i1 = row_of(r, n2, n1)
        xr = x[i3, i2, i1]
        yr = y[i3, i2, i1]
        s = F64(0.0)
        for i in range(n0):
            s += F64(xr[i] * xr[i])  # products rounded to float, summed in double
        ms = F32(s / n0)
        sc = F32(1.0) / F32(math.sqrt(F32(ms + eps)))
        for i in range(n0):
            yr[i] = xr[i] * sc


@registry.get("norm").fast_kernel
def norm_fast(dst, out, a, eps):
    if not is_f32(a, dst):
        return NotImplemented
    _norm(a, F32(eps), dst)


@registry.get("rms_norm").fast_kernel
def rms_norm_fast(dst, out, a, eps):
    if not is_f32(a, dst):
        return NotImplemented
    _rms_norm(a, F32(eps), dst)
