"""mul_mat (ggml-semantics §2.12).

`mul_mat(a [K, M, a2, a3], b [K, N, b2, b3]) -> [M, N, b2, b3]`, `out[m, n] = sum_k a[k, m] b[k, n]`, with a
broadcast over dims 2/3 by integer division (GQA style). Under "ggml" numerics b is first converted to a's
vec_dot type as the CPU does (F16 for F16 weights, BF16 for BF16, Q8_0 blocks for Q4_0/Q8_0, Q8_K blocks for
K-quants), so results track llama.cpp's at that precision, and every product goes through `ggml_matmul`: one
float32 BLAS product per matrix of the stack, on contiguous operands, at a fixed BLAS thread count. Only that
makes the result independent of how a fast kernel would cut the work (some BLAS builds give other last bits for
another cut, and ggml numerics amplify one ulp through f16 tables), so the fast kernel and the fused attention
call the same function and reproduce these bits on any CPU. Summation order is the BLAS's, not ggml's.

`mul_mat_rows` (not a ggml op: the fused form `npggml.graph.fuse.gather_linear_rows` makes) is `mul_mat` of an
operand gathered from another tensor's rows, zero rows included; its reference kernel gathers, then runs
`mul_mat`'s own kernel.
"""

from __future__ import annotations

import numba
import numpy as np

from npggml.graph.tensor import is_quantized
from npggml.ops import openblas
from npggml.ops.registry import Out, ggml_numerics, op, require

F32 = np.float32


def _mul_mat_flops(n) -> float:
    return 2.0 * n.srcs[0].ne[0] * n.nelements


@op("mul_mat", ggml="MUL_MAT", srcs=2, flops=_mul_mat_flops)
def mul_mat(a, b):
    require(a.ne[0] == b.ne[0], f"inner dims differ: a.ne0 = {a.ne[0]}, b.ne0 = {b.ne[0]}")
    require(b.ne[2] % a.ne[2] == 0 and b.ne[3] % a.ne[3] == 0, "a must broadcast over b's dims 2 and 3")
    require(not a.nb[0] > a.nb[1], "a must not be transposed")
    return Out((a.ne[1], b.ne[1], b.ne[2], b.ne[3]), "f32")


def _round_q8(x: np.ndarray, block: int, f16_scale: bool) -> np.ndarray:
    """Quantise rows in blocks (Q8_0: d = amax/127 stored as f16; Q8_K: d = -max/127 in f32) and back."""
    shape = x.shape
    xb = x.reshape(*shape[:-1], shape[-1] // block, block).astype(F32)
    if f16_scale:
        d = np.abs(xb).max(axis=-1, keepdims=True) / F32(127)
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.where(d > 0, np.rint(xb * (F32(1) / d)), F32(0))
        d = d.astype(np.float16).astype(F32)
    else:
        amax_idx = np.abs(xb).argmax(axis=-1)[..., None]
        mx = np.take_along_axis(xb, amax_idx, axis=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            iscale = np.where(mx != 0, F32(-127) / mx, F32(0))
            q = np.minimum(np.rint(iscale * xb), F32(127))
            d = np.where(iscale != 0, F32(1) / iscale, F32(0))
    return (q * d).reshape(shape)


def vec_dot_round(b: np.ndarray, a_type: str) -> np.ndarray:
    """b as the CPU sees it after conversion to a's vec_dot type."""
    if a_type == "f16":
        return b.astype(np.float16).astype(F32)
    if a_type == "bf16":
        from npggml.graph.interp import bf16_to_f32, f32_to_bf16

        return bf16_to_f32(f32_to_bf16(b))
    if a_type in ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0"):
        return _round_q8(b, 32, f16_scale=True)
    if is_quantized(a_type):
        return _round_q8(b, 256, f16_scale=False)
    return b


def broadcast_a(a: np.ndarray, b_shape: tuple) -> np.ndarray:
    r2, r3 = b_shape[1] // a.shape[1], b_shape[0] // a.shape[0]
    if r2 > 1:
        a = np.repeat(a, r2, axis=1)
    if r3 > 1:
        a = np.repeat(a, r3, axis=0)
    return a


def ggml_matmul(a: np.ndarray, b: np.ndarray, a_type: str, out: np.ndarray | None = None) -> np.ndarray:
    """mul_mat under ggml numerics, in NumPy order: b (b3, b2, N, K) rounded to a's vec_dot type, times a
    (a3, a2, M, K) transposed and broadcast, on C-contiguous operands with as many BLAS threads as Numba has
    workers: one sgemm over all of b's rows when a is one matrix (a weight), else one per matrix of the stack.
    The same calls whatever the caller, so the same bits."""
    b = np.ascontiguousarray(vec_dot_round(b.astype(F32, copy=False), a_type))
    a = np.ascontiguousarray(a.astype(F32, copy=False))
    with openblas.threads(numba.get_num_threads()):
        if a.shape[0] == a.shape[1] == 1:
            m = a.shape[2]
            rows = b.reshape(-1, b.shape[-1])
            res = np.matmul(rows, a[0, 0].T, out=None if out is None else out.reshape(-1, m))
            return res.reshape(*b.shape[:-1], m) if out is None else out
        return np.matmul(b, broadcast_a(a, b.shape).swapaxes(-1, -2), out=out)


@mul_mat.kernel
def _mul_mat(out, a, b):
    if ggml_numerics():
        return ggml_matmul(a, b, out.srcs[0].dtype)
    a = a.astype(F32, copy=False)
    b = b.astype(F32, copy=False)
    return np.matmul(b, broadcast_a(a, b.shape).swapaxes(-1, -2))


def _mul_mat_rows_flops(n) -> float:
    """The rows that are not padding (all of them when the row index is not a constant)."""
    rows = n.srcs[2].data
    kept = n.nelements // n.ne[0] if rows is None else int(np.count_nonzero(np.asarray(rows) >= 0))
    return 2.0 * n.srcs[0].ne[0] * n.ne[0] * kept


@op("mul_mat_rows", ggml="MUL_MAT_ROWS", srcs=3, flops=_mul_mat_rows_flops)
def mul_mat_rows(a, b, rows):
    """`mul_mat(a, x)` where x, [K, R0, R1, R2], is gathered from b's rows of K: x[:, i, j, l] is b's row number
    rows[i, j, l] (b's rows counted in memory order), a zero row where that is -1. The fused form of a product
    whose operand is b padded with zeros and moved about row by row (`npggml.graph.fuse.gather_linear_rows`)."""
    K = a.ne[0]
    require(a.ne[2] == a.ne[3] == 1, f"a must be one matrix, got {a.ne_str()}")
    require(not a.nb[0] > a.nb[1], "a must not be transposed")
    require(b.dtype == "f32" and b.is_contiguous(), f"b must be packed f32, got {b.dtype} {b.ne_str()}")
    require(b.ne[0] % K == 0, f"b's rows ({b.ne[0]}) must be whole rows of a.ne0 = {K}")
    require(rows.dtype == "i32" and rows.is_contiguous() and rows.ne[3] == 1,
            f"rows must be packed i32 [R0, R1, R2, 1], got {rows.dtype} {rows.ne_str()}")
    return Out((a.ne[1], *rows.ne[:3]), "f32")


def rows_in_range(idx: np.ndarray, n: int) -> bool:
    return not idx.size or (idx.min() >= -1 and idx.max() < n)


def gather_rows(b: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """x (R2, R1, R0, k): b's rows of k picked by `rows` (R2, R1, R0) in NumPy order, zeros where -1."""
    src = b.reshape(-1, k)
    idx = rows.reshape(-1)
    if not rows_in_range(idx, src.shape[0]):
        raise ValueError(f"row numbers must be -1 or in [0, {src.shape[0]}), got {idx.min()}..{idx.max()}")
    x = np.zeros((idx.size, k), b.dtype)
    keep = idx >= 0
    x[keep] = src[idx[keep]]
    return x.reshape(*rows.shape[1:], k)


@mul_mat_rows.kernel
def _mul_mat_rows(out, a, b, rows):
    """The gathered operand, then `mul_mat`'s own kernel: the unfused product's value, bit for bit."""
    return _mul_mat(out, a, gather_rows(b, rows, a.shape[-1]))
