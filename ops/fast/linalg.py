"""mul_mat through NumPy's BLAS (OpenBLAS sgemm): batched `np.matmul` with `out=` straight into the node's
buffer, a broadcast over dims 2/3 by integer division as a reshape (no copies of a). Operands whose rows are
not unit-stride are made contiguous first (BLAS needs one unit stride). Under ggml numerics the product is the
reference kernel's own `ops.linalg.ggml_matmul`, written into the node's buffer: no cutting over the pool, so the
same bits as the reference on every BLAS build."""

from __future__ import annotations

import numpy as np

from npggml.ops import registry
from npggml.ops.fast import _blas
from npggml.ops.fast._common import F32
from npggml.ops.linalg import ggml_matmul
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
