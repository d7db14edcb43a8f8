"""norm and rms_norm over dim 0 (rows), double accumulation as the reference kernels (`ops/reduce.py`), and the
fused `norm_affine` (the norm, then times a weight row and plus a bias row, in the same pass over each row)."""

from __future__ import annotations

import math

import numba
import numpy as np

from npggml.ops import registry
from npggml.ops.fast._common import F32, F64, NO_ROW, as_row, helper, is_f32, kernel, onto, reduce_add16, row_of
from npggml.ops.fast.softmax import sum64


@helper
def sumsq64(v):
    """The double sum of the float32 squares of a row, in four interleaved partial sums (like `sum64`)."""
    s0 = s1 = s2 = s3 = F64(0.0)
    n4 = v.shape[0] // 4 * 4
    for i in range(0, n4, 4):
        s0 += F64(v[i] * v[i])
        s1 += F64(v[i + 1] * v[i + 1])
        s2 += F64(v[i + 2] * v[i + 2])
        s3 += F64(v[i + 3] * v[i + 3])
    for i in range(n4, v.shape[0]):
        s0 += F64(v[i] * v[i])
    return (s0 + s1) + (s2 + s3)


@helper
def _scale_row(yr, sc, w, b, has_w, has_b):
    """yr = yr * sc (times w, plus b) in place, each step rounded to float as the unfused mul and add nodes round
    it. One array: LLVM vectorises this loop only when it need not check two arrays for overlap."""
    if has_b:
        for i in range(yr.shape[0]):
            yr[i] = yr[i] * sc * w[i] + b[i]
    elif has_w:
        for i in range(yr.shape[0]):
            yr[i] = yr[i] * sc * w[i]
    else:
        for i in range(yr.shape[0]):
            yr[i] = yr[i] * sc


@kernel
def _norm(x, eps, rms, w, b, y):
    """Each row: ggml_compute_forward_norm_f32 as `ops.reduce._norm_rows` (mean = float(double sum) / n in float;
    centred squares in float, 16-blocks reduced in float, then summed in double; float variance and scale), or
    with `rms` rms_norm's (float squares summed in double); then times w and plus b where they are not empty
    (no fma: the unfused graph's bits)."""
    n3, n2, n1, n0 = x.shape
    nb = n0 // 16 * 16
    has_w, has_b = w.shape[0] > 0, b.shape[0] > 0
    for r in numba.prange(n3 * n2 * n1):
        i3, i2, i1 = row_of(r, n2, n1)
        xr = x[i3, i2, i1]
        yr = y[i3, i2, i1]
        if rms:
            ms = F32(sumsq64(xr) / n0)
            onto(xr, yr)
            _scale_row(yr, F32(1.0) / F32(math.sqrt(F32(ms + eps))), w, b, has_w, has_b)
        else:
            mu = F32(sum64(xr)) / F32(n0)
            for i in range(n0):
                yr[i] = xr[i] - mu
            tmp = np.empty(16, F32)
            v = F64(0.0)
            for k in range(0, nb, 16):
                for i in range(16):
                    tmp[i] = yr[k + i] * yr[k + i]
                v += F64(reduce_add16(tmp))
            for i in range(nb, n0):
                v += F64(yr[i] * yr[i])
            var = F32(v / n0)
            _scale_row(yr, F32(1.0) / F32(math.sqrt(F32(var + eps))), w, b, has_w, has_b)


@registry.get("norm").fast_kernel
def norm_fast(dst, out, a, eps):
    if not is_f32(a, dst):
        return NotImplemented
    _norm(a, F32(eps), False, NO_ROW, NO_ROW, dst)


@registry.get("rms_norm").fast_kernel
def rms_norm_fast(dst, out, a, eps):
    if not is_f32(a, dst):
        return NotImplemented
    _norm(a, F32(eps), True, NO_ROW, NO_ROW, dst)


@registry.get("norm_affine").fast_kernel
def norm_affine_fast(dst, out, a, w, b, eps, rms=False):
    if not is_f32(a, w, dst) or b is not None and not is_f32(b):
        return NotImplemented
    _norm(a, F32(eps), rms, as_row(w), as_row(b), dst)
