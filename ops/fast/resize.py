"""`interpolate` with npggml's `BICUBIC | ANTIALIAS` (the PyTorch / PIL filter that reference-mode graphs resize
their position embeddings with): each plane resampled over the filter's taps only, planes in parallel, sums in
float64 rounded once into the float32 result. The reference kernel multiplies by the dense filter matrices in
float64 (with temporaries of the whole tensor, ~0.12 s for SAM's 768 x 64 x 64 table resized to a 640 or 768
tile's grid in a page's graph); this one sums the same products in tap order, so a result can differ from it
only where two float64 sums round to neighbouring float32 values."""

from __future__ import annotations

import numba
import numpy as np

from npggml.ops import registry
from npggml.ops.fast._common import F32, F64, kernel
from npggml.ops.interpolate import ANTIALIAS, BICUBIC, _nearest_index, _scale, bicubic_aa_weights


def _taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The filter matrix (n_out, n_in) and each output's first and last + 1 input with a non-zero weight."""
    w = bicubic_aa_weights(n_in, n_out)
    nz = w != 0
    lo = np.where(nz.any(1), nz.argmax(1), 0)
    hi = np.where(nz.any(1), n_in - nz[:, ::-1].argmax(1), 0)
    return w, lo.astype(np.int64), hi.astype(np.int64)


@kernel
def _resize_planes(x, i3, i2, wh, h_lo, h_hi, ww, w_lo, w_hi, y):
    """y[a, b] = wh @ x[i3[a], i2[b]] @ ww.T over the taps, for x (n3, n2, n1, n0) and y (ne3, ne2, ne1, ne0)."""
    ne3, ne2, ne1, ne0 = y.shape
    n0 = x.shape[3]
    for p in numba.prange(ne3 * ne2):
        src = x[i3[p // ne2], i2[p % ne2]]
        dst = y[p // ne2, p % ne2]
        rows = np.zeros((ne1, n0), F64)  # the columns' pass first, as the reference
        for i in range(ne1):
            r = rows[i]
            for j in range(h_lo[i], h_hi[i]):
                wj = wh[i, j]
                s = src[j]
                for k in range(n0):
                    r[k] += wj * F64(s[k])
        for i in range(ne1):
            r = rows[i]
            for o in range(ne0):
                acc = F64(0.0)
                for k in range(w_lo[o], w_hi[o]):
                    acc += r[k] * ww[o, k]
                dst[i, o] = F32(acc)


@registry.get("interpolate").fast_kernel
def interpolate_fast(dst, out, a, ne0, ne1, ne2, ne3, mode):
    if mode != BICUBIC | ANTIALIAS or a.dtype != F32 or dst.dtype != F32:
        return NotImplemented
    n3, n2, n1, n0 = a.shape
    wh, h_lo, h_hi = _taps(n1, ne1)
    ww, w_lo, w_hi = _taps(n0, ne0)
    i3 = _nearest_index(ne3, _scale(ne3, n3))  # dims 3 and 2: nearest, as the reference
    i2 = _nearest_index(ne2, _scale(ne2, n2))
    _resize_planes(a, i3, i2, wh, h_lo, h_hi, ww, w_lo, w_hi, dst)
    return None
