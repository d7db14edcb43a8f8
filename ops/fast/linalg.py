"""mul_mat through NumPy's BLAS (OpenBLAS sgemm): batched `np.matmul` with `out=` straight into the node's
buffer, a broadcast over dims 2/3 by integer division as a reshape (no copies of a). Operands whose rows are
not unit-stride are made contiguous first (BLAS needs one unit stride). Under ggml numerics the product is the
reference kernel's own `ops.linalg.ggml_matmul`, written into the node's buffer: no cutting over the pool, so the
same bits as the reference on every BLAS build. `mul_mat_rows`: the same sgemm over the rows it gathers, padding
rows left out (see its kernel)."""

from __future__ import annotations

import numpy as np

from npggml.ops import registry
from npggml.ops.fast import _blas
from npggml.ops.fast._common import F32, serial
from npggml.ops.linalg import gather_rows, ggml_matmul, rows_in_range
from npggml.ops.registry import ggml_numerics


def blas_ready(x: np.ndarray) -> np.ndarray:
    """x with unit-stride rows and non-negative, element-aligned strides (what BLAS can take as is)."""
    if x.dtype != F32:
        x = x.astype(F32)
    if x.ndim and x.shape[-1] > 1 and x.strides[-1] != 4 or any(s < 0 for s in x.strides):
        x = np.ascontiguousarray(x)
    return x


def _rows_view(x: np.ndarray) -> np.ndarray | None:
    """x (..., N, K) as one (rows, K) matrix without copying, or None."""
    v = x.view()
    try:
        v.shape = (-1, x.shape[-1])
    except AttributeError:
        return None
    return v


def matmul_bt(b: np.ndarray, a: np.ndarray, dst: np.ndarray) -> None:
    """dst (b3, b2, N, M) = b (b3, b2, N, K) @ a (a3, a2, M, K)^T, a broadcast over b by integer division.
    A single weight matrix times a stack whose rows can be viewed as one matrix is one product."""
    a3, a2, m, k = a.shape
    b3, b2, n, _ = b.shape
    r3, r2 = b3 // a3, b2 // a2
    if a3 == a2 == 1:
        rows = _rows_view(b)
        if rows is not None:
            _blas.gemms([(rows, a[0, 0].T, dst.reshape(-1, m))])
            return
    bb = b.reshape(a3, r3, a2, r2, n, k)
    aa = a.reshape(a3, 1, a2, 1, m, k).swapaxes(-1, -2)
    _blas.batched(bb, aa, dst.reshape(a3, r3, a2, r2, n, m))


@registry.get("mul_mat").fast_kernel
def mul_mat_fast(dst, out, a, b):
    if dst.dtype != F32 or not dst.flags.c_contiguous:
        return NotImplemented
    if ggml_numerics():
        ggml_matmul(a, b, out.srcs[0].dtype, out=dst)
        return None
    matmul_bt(blas_ready(b.astype(F32, copy=False)), blas_ready(a), dst)


@serial
def _spread(res, keep):
    """The first len(keep) rows of res moved to rows keep (ascending), every other row zeroed: from the last row
    down, so that no row is overwritten before it has moved (keep[j] >= j). Element loops: a row slice assigned
    from another row of the same array went through a temporary (2.5x slower)."""
    j = keep.shape[0] - 1
    for i in range(res.shape[0] - 1, -1, -1):
        if j >= 0 and keep[j] == i:
            if i != j:
                for q in range(res.shape[1]):
                    res[i, q] = res[j, q]
            j -= 1
        else:
            for q in range(res.shape[1]):
                res[i, q] = 0.0


@registry.get("mul_mat_rows").fast_kernel
def mul_mat_rows_fast(dst, out, a, b, rows):
    """Only the rows that are not padding are multiplied: the result's rows in one part a thread, cut so that the
    parts hold as many kept rows; each part gathers its operand rows (the padding left out), one sgemm writes
    their products to the part's first rows, which then move to their places and the padding rows get zeros.
    Under ggml numerics the reference kernel's product of the gathered operand, padding included (`ggml_matmul`:
    the same bits)."""
    if dst.dtype != F32 or not dst.flags.c_contiguous:
        return NotImplemented
    k, m = a.shape[-1], a.shape[-2]
    src, idx, res = b.reshape(-1, k), rows.reshape(-1), dst.reshape(-1, m)
    if not rows_in_range(idx, src.shape[0]):
        return NotImplemented  # the reference kernel says what is wrong
    if ggml_numerics():
        ggml_matmul(a, gather_rows(b, rows, k), out.srcs[0].dtype, out=dst)
        return None
    wt = blas_ready(a)[0, 0].T
    _blas.use_own_threads()

    def share(lo, hi):
        keep = np.flatnonzero(idx[lo:hi] >= 0)
        np.matmul(src[idx[lo:hi][keep]], wt, out=res[lo:lo + keep.size])
        _spread(res[lo:hi], keep)

    kept = np.flatnonzero(idx >= 0)  # one part a thread with as many kept rows each
    cuts = [0, *(int(kept[i]) for i in _blas.even_cuts(kept.size, 16)[1:-1]), idx.size]
    _blas.run_parts(share, cuts)
