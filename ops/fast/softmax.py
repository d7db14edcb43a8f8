"""soft_max_ext: scale, mask (broadcast over dims 2/3, extra mask rows ignored), ALiBi slope, row softmax with the
sum accumulated in double. Under ggml numerics the exponentials are ggml's SIMD exp on blocks of 16 (libm expf on
the tail) and each block's sum is reduced in float32 first, as `_libm.vec_soft_max_f32`; under exact numerics
one pass per row with `exp32_neg` (the reference uses NumPy's float32 exp: within 1e-5, not bitwise)."""

from __future__ import annotations

import math

import numba
import numpy as np

from npggml.ops import registry
from npggml.ops.attention import alibi_slopes
from npggml.ops.fast._common import (
    F32,
    F64,
    exp32_neg,
    helper,
    is_f32,
    kernel,
    onto,
    reduce_add16,
    row_of,
    v_expf,
)
from npggml.ops.registry import ggml_numerics

NEG_INF = F32(-np.inf)


@helper
def row_max(w):
    mx = NEG_INF
    for i in range(w.shape[0]):
        if w[i] > mx:
            mx = w[i]
    return mx


@helper
def exp_sum_ggml(w, mx, y, tmp):
    """y = exp(w - mx) as ggml_vec_soft_max_f32; returns the double sum (16-blocks reduced in float32)."""
    n = w.shape[0]
    nb = n // 16 * 16
    s = F64(0.0)
    for b in range(0, nb, 16):
        for l in range(16):  # into tmp first: with y aliasing w (in place) the fused loop ran 2x slower
            tmp[l] = v_expf(F32(w[b + l] - mx))
        for l in range(16):
            y[b + l] = tmp[l]
        s += F64(reduce_add16(tmp))
    for i in range(nb, n):
        e = F32(math.exp(F32(w[i] - mx)))
        y[i] = e
        s += F64(e)
    return s


@helper
def scale_row(y, s):
    inv = F32(1.0 / s)
    for i in range(y.shape[0]):
        y[i] = y[i] * inv


@helper
def softmax_row_ggml(yr):
    """ggml's softmax of one row in place (already scaled and masked): max, `exp_sum_ggml`, times 1/sum."""
    scale_row(yr, exp_sum_ggml(yr, row_max(yr), yr, np.empty(16, F32)))


@helper
def scaled_row(ar, yr, mr, sl, scale, has_mask):
    """yr = ar*scale + sl*mask row (the input of soft_max_ext's softmax), formed in yr."""
    onto(ar, yr)
    if has_mask:
        for i in range(yr.shape[0]):
            yr[i] = yr[i] * scale + sl * F32(mr[i])
    else:
        for i in range(yr.shape[0]):
            yr[i] = yr[i] * scale


@helper
def sum64(v):
    """The double sum of a float32 row in four interleaved partial sums (one serial chain of double adds was
    latency-bound): another order than the reference's pairwise sum, the same value to ~1e-16."""
    s0 = s1 = s2 = s3 = F64(0.0)
    n4 = v.shape[0] // 4 * 4
    for i in range(0, n4, 4):
        s0 += F64(v[i])
        s1 += F64(v[i + 1])
        s2 += F64(v[i + 2])
        s3 += F64(v[i + 3])
    for i in range(n4, v.shape[0]):
        s0 += F64(v[i])
    return (s0 + s1) + (s2 + s3)


@kernel
def _soft_max(a, m, slopes, scale, y, ggml):
    """soft_max_ext in one pass per row: y = a*scale + slope*mask (m may be None-shaped (1,1,1,0), broadcast
    over dims 2/3 by modulo), its max, then under ggml numerics `exp_sum_ggml`, else `exp32_neg` (within 1 ulp
    of exp; NumPy's float32 exp is scalar on AVX2 machines) with `sum64`; times float32(1/double sum)."""
    n3, n2, n1, n0 = a.shape
    m3, m2 = m.shape[0], m.shape[1]
    has_mask = m.shape[3] > 0
    for r in numba.prange(n3 * n2 * n1):
        i3, i2, i1 = row_of(r, n2, n1)
        yr = y[i3, i2, i1]
        mr = m[i3 % m3, i2 % m2, i1] if has_mask else m[0, 0, 0]
        scaled_row(a[i3, i2, i1], yr, mr, slopes[i2], scale, has_mask)
        if ggml:
            softmax_row_ggml(yr)
        else:
            mx = row_max(yr)
            for i in range(n0):
                yr[i] = exp32_neg(yr[i] - mx)
            scale_row(yr, sum64(yr))


@registry.get("soft_max_ext").fast_kernel
def soft_max_ext_fast(dst, out, a, mask, scale=1.0, max_bias=0.0):
    if not is_f32(a, dst) or not dst.flags.c_contiguous:
        return NotImplemented
    if mask is None:
        m = np.zeros((1, 1, 1, 0), F32)
    else:
        m = mask[:, :, : a.shape[2], :]
        if m.dtype != F32:
            m = m.astype(F32)
    slopes = alibi_slopes(a.shape[1], max_bias).astype(F32)
    _soft_max(a, m, slopes, F32(scale), dst, ggml_numerics())
