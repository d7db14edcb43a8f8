"""norm and rms_norm over dim 0 (rows), double accumulation as the reference kernels (`ops/reduce.py`)."""

from __future__ import annotations

import math

import numba

from npggml.ops import registry
from npggml.ops.fast._common import F32, F64, is_f32, kernel


@kernel
def _norm(x, eps, y):
    n3, n2, n1, n0 = x.shape
    for r in numba.prange(n3 * n2 * n1):
        i3 = r // (n2 * n1)
        i2 = (r // n1) % n2
        i1 = r % n1
        xr = x[i3, i2, i1]
        yr = y[i3, i2, i1]
        s = F64(0.0)
        for i in range(n0):
            s += F64(xr[i])
        mu = F32(s / n0)
        v = F64(0.0)
        for i in range(n0):
            d = F32(xr[i] - mu)
            yr[i] = d
            v += F64(d) * F64(d)
        var = F32(v / n0)
        sc = F32(1.0) / F32(math.sqrt(F32(var + eps)))
        for i in range(n0):
            yr[i] = yr[i] * sc


@kernel
def _rms_norm(x, eps, y):
    n3, n2, n1, n0 = x.shape
    for r in numba.prange(n3 * n2 * n1):
        i3 = r // (n2 * n1)
        i2 = (r // n1) % n2
        i1 = r % n1
        xr = x[i3, i2, i1]
        yr = y[i3, i2, i1]
        s = F64(0.0)
        for i in range(n0):
            s += F64(xr[i]) * F64(xr[i])
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
