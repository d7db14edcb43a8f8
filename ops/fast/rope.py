"""rope_ext for the NORMAL and NEOX modes: the cos/sin cache as the reference builds it (`ops.rope.rope_cache`,
glibc cosf/sinf), the rotation in Numba with the same fused multiply-adds (and the unfused scalar epilogue of
the f32 NORMAL loop)."""

from __future__ import annotations

import numba
import numpy as np

from npggml.ops import registry
from npggml.ops.fast._common import F32, fmaf, is_f32, kernel
from npggml.ops.rope import NEOX, NORMAL, rope_cache, yarn_corr_dims


@kernel
def _rotate(x, cos, sin, n_dims, neox, nf, y):
    """x (B, T, H, D); cos/sin (T, n_pairs); pairs (2p, 2p+1) for NORMAL, (p, p + n_dims/2) for NEOX."""
    nb, nt, nh, nd = x.shape
    n_pairs = n_dims // 2
    for r in numba.prange(nb * nt * nh):
        ib = r // (nt * nh)
        it = (r // nh) % nt
        ih = r % nh
        xr = x[ib, it, ih]
        yr = y[ib, it, ih]
        for i in range(n_dims, nd):
            yr[i] = xr[i]
        for p in range(n_pairs):
            if neox:
                j0, j1 = p, p + n_pairs
            else:
                j0, j1 = 2 * p, 2 * p + 1
            x0, x1 = xr[j0], xr[j1]
            c, s = cos[it, p], sin[it, p]
            if p < nf:
                y0 = fmaf(x0, c, -(x1 * s))
                y1 = fmaf(x0, s, x1 * c)
            else:
                y0 = x0 * c - x1 * s
                y1 = x0 * s + x1 * c
            yr[j0] = y0
            yr[j1] = y1


@registry.get("rope_ext").fast_kernel
def rope_ext_fast(dst, out, a, b, c, n_dims, mode, n_ctx_orig, freq_base, freq_scale, ext_factor, attn_factor,
                  beta_fast, beta_slow):
    if mode not in (NORMAL, NEOX) or not is_f32(a, dst):
        return NotImplemented
    corr = yarn_corr_dims(n_dims, n_ctx_orig, freq_base, beta_fast, beta_slow)
    n_pairs = n_dims // 2
    ffv = None if c is None else c.reshape(-1).astype(F32)
    cos, sin = rope_cache(b.reshape(-1), n_pairs, n_dims, mode, (0, 0, 0, 0), freq_base, freq_scale, ffv,
                          ext_factor, attn_factor, corr)
    nf = n_pairs
    if mode == NORMAL:  # the scalar epilogue of GCC's vectorised f32 loop is not contracted to fma
        nf = n_pairs // 8 * 8
        nf += 4 if n_pairs - nf >= 4 else 0
    _rotate(a, np.ascontiguousarray(cos, F32), np.ascontiguousarray(sin, F32), n_dims, mode == NEOX, nf, dst)
