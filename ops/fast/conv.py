"""im2col (2-D and 1-D): patches gathered in Numba, zero outside the image, the reference's layout
`[IC*KH*KW, OW, OH, N]` (NumPy `(N, OH, OW, IC*KH*KW)`)."""

from __future__ import annotations

import numba
import numpy as np

from npggml.ops import registry
from npggml.ops.fast._common import F32, kernel


@kernel
def _im2col(x, kh, kw, s0, s1, p0, p1, d0, d1, y):
    """x (N, C, H, W) -> y (N, OH, OW, C*KH*KW)."""
    n, c, h, w = x.shape
    oh, ow = y.shape[1], y.shape[2]
    for r in numba.prange(n * oh):
        i_n = r // oh
        oy = r % oh
        for ox in range(ow):
            yr = y[i_n, oy, ox]
            for ic in range(c):
                for ky in range(kh):
                    iy = oy * s1 + ky * d1 - p1
                    base = (ic * kh + ky) * kw
                    if iy < 0 or iy >= h:
                        for kx in range(kw):
                            yr[base + kx] = F32(0.0)
                        continue
                    for kx in range(kw):
                        ix = ox * s0 + kx * d0 - p0
                        yr[base + kx] = x[i_n, ic, iy, ix] if 0 <= ix < w else F32(0.0)


@registry.get("im2col").fast_kernel
def im2col_fast(dst, out, a, b, s0, s1, p0, p1, d0, d1, is_2D, dst_type):
    if b.dtype != F32 or dst.dtype not in (F32, np.float16):
        return NotImplemented
    ka = out.srcs[0]
    y = dst if dst.dtype == F32 else np.empty(dst.shape, F32)
    if is_2D:
        _im2col(b, ka.ne[1], ka.ne[0], s0, s1, p0, p1, d0, d1, y)
    else:  # as the reference: a (N, IC, 1, L) image, one output row
        x = b.reshape(b.shape[-3], b.shape[-2], 1, b.shape[-1])
        _im2col(x, 1, ka.ne[0], s0, 0, p0, p1, d0, 0, y.reshape(x.shape[0], 1, out.ne[1], out.ne[0]))
    if y is not dst:
        np.copyto(dst, y, casting="unsafe")
