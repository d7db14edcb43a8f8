"""add / sub / mul / div with ggml's broadcast (b tiled over a by modulo in every dim), float32; the fused
add_res (a + bias row + residual)."""

from __future__ import annotations

import numba
import numpy as np

from npggml.ops import registry
from npggml.ops.fast._common import F32, as_row, is_f32, kernel, row_of

ADD, SUB, MUL, DIV = range(4)


@kernel
def _binary(a, b, op, y):
    n3, n2, n1, n0 = a.shape
    b3, b2, b1, b0 = b.shape
    for r in numba.prange(n3 * n2 * n1):
        i3, i2, i1 = row_of(r, n2, n1)
        ar = a[i3, i2, i1]
        br = b[i3 % b3, i2 % b2, i1 % b1]
        yr = y[i3, i2, i1]
        if b0 == n0:
            if op == ADD:
                for i in range(n0):
                    yr[i] = ar[i] + br[i]
            elif op == MUL:
                for i in range(n0):
                    yr[i] = ar[i] * br[i]
            elif op == SUB:
                for i in range(n0):
                    yr[i] = ar[i] - br[i]
            else:
                for i in range(n0):
                    yr[i] = ar[i] / br[i]
        elif b0 == 1:
            s = br[0]
            if op == ADD:
                for i in range(n0):
                    yr[i] = ar[i] + s
            elif op == MUL:
                for i in range(n0):
                    yr[i] = ar[i] * s
            elif op == SUB:
                for i in range(n0):
                    yr[i] = ar[i] - s
            else:
                for i in range(n0):
                    yr[i] = ar[i] / s
        else:
            for i in range(n0):
                x, z = ar[i], br[i % b0]
                if op == ADD:
                    yr[i] = x + z
                elif op == MUL:
                    yr[i] = x * z
                elif op == SUB:
                    yr[i] = x - z
                else:
                    yr[i] = x / z


def _make(name: str, code: int):
    @registry.get(name).fast_kernel
    def fast(dst, out, a, b):
        if dst.dtype != F32 or a.dtype != F32 or b.dtype not in (F32, np.float16):
            return NotImplemented
        if b.dtype != F32:
            b = b.astype(F32)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            _binary(a, b, code, dst)

    fast.__name__ = f"{name}_fast"
    return fast


for _name, _code in (("add", ADD), ("sub", SUB), ("mul", MUL), ("div", DIV)):
    _make(_name, _code)


@kernel
def _add_res_rows(a, bias, c, y, same):
    """y = (a + bias) + c row by row; `same`: y is a's memory, so the loop reads y alone (LLVM vectorises a loop
    over two arrays only after checking that they do not overlap, and sends the same array twice to the scalar
    loop)."""
    n3, n2, n1, n0 = a.shape
    for r in numba.prange(n3 * n2 * n1):
        i3, i2, i1 = row_of(r, n2, n1)
        yr, cr = y[i3, i2, i1], c[i3, i2, i1]
        if same:
            for i in range(n0):
                yr[i] = (yr[i] + bias[i]) + cr[i]
        else:
            ar = a[i3, i2, i1]
            for i in range(n0):
                yr[i] = (ar[i] + bias[i]) + cr[i]


@registry.get("add_res").fast_kernel
def add_res_fast(dst, out, a, b, c):
    if not is_f32(a, b, c, dst):
        return NotImplemented
    with np.errstate(invalid="ignore", over="ignore"):
        _add_res_rows(a, as_row(b), c, dst, a.ctypes.data == dst.ctypes.data and a.strides == dst.strides)
