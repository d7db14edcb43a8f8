"""Single-precision libm functions as ggml's scalar C code calls them (cosf, sinf, expf, logf, tanhf, powf).

NumPy's float32 ufuncs use their own SIMD approximations, which differ from glibc's correctly-rounded-in-practice
float functions in the last bit for a sizeable fraction of inputs (about 15% for cos/sin, 40% for exp). Numba
lowers `math.cos` etc. on float32 to calls into the platform libm, so these ufuncs give the very values ggml's
scalar kernel code gets from glibc.

`fmaf(a, b, c)` (in Numba code) and `fma32` (on arrays) are C's fmaf: a*b + c rounded once to float32, as the
fused multiply-adds of ggml's SIMD kernels and GCC's contractions compute it. They lower to LLVM's `llvm.fma`, an
FMA instruction on a CPU that has one (libm's fmaf elsewhere), so they are exact where an emulation in double is
not (a sum rounded to double first can land on a float32 tie that the exact sum misses) and vectorise in float32.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

F32 = np.float32


@numba.vectorize(["float32(float32)"], cache=True)
def cosf(x):
    return math.cos(x)


@numba.vectorize(["float32(float32)"], cache=True)
def sinf(x):
    return math.sin(x)


@numba.vectorize(["float32(float32)"], cache=True)
def expf(x):
    return math.exp(x)


@numba.vectorize(["float32(float32)"], cache=True)
def logf(x):
    return math.log(x)


@numba.vectorize(["float32(float32)"], cache=True)
def tanhf(x):
    return math.tanh(x)


@numba.vectorize(["float32(float32, float32)"], cache=True)
def powf(x, y):
    return x**y


def f32(x) -> np.ndarray:
    return np.asarray(x, dtype=F32)


@intrinsic
def fmaf(typingctx, a, b, c):
    """C's fmaf on three float32 values in Numba code (anything else is a typing error, not a silent cast)."""
    if not all(t == types.float32 for t in (a, b, c)):
        return None

    def codegen(context, builder, signature, args):
        f = ir.FloatType()
        return builder.call(builder.module.declare_intrinsic("llvm.fma", [f, f, f]), args)

    return types.float32(types.float32, types.float32, types.float32), codegen


@numba.vectorize(["float32(float32, float32, float32)"], cache=True)
def fma32(a, b, c):
    """fmaf elementwise on float32 arrays (broadcast); other dtypes are refused rather than rounded."""
    return fmaf(a, b, c)


def cmax(a, b):
    """C's `MAX(a, b)` macro, `a > b ? a : b` (NaN handling included)."""
    return np.where(a > b, a, b)


def cmin(a, b):
    """C's `MIN(a, b)` macro, `a < b ? a : b`."""
    return np.where(a < b, a, b)


# --- ggml's SIMD exp and soft_max (x86 AVX-512 build: ggml-cpu/vec.h ggml_v_expf, vec.cpp soft_max) -----------

_X = float.fromhex
_SHIFT = F32(_X("0x1.8p23"))
_LOG2E = F32(_X("0x1.715476p+0"))
_LN2_HI, _LN2_LO = F32(_X("0x1.62e4p-1")), F32(_X("0x1.7f7d1cp-20"))
_C5, _C4, _C3, _C2, _C1 = (F32(_X(h)) for h in ("0x1.0e4020p-7", "0x1.573e2ep-5", "0x1.555e66p-3",
                                                   "0x1.fffdb6p-2", "0x1.ffffecp-1"))


@numba.vectorize(["float32(float32)"], cache=True)
def _v_expf1(x):
    z = fmaf(x, _LOG2E, _SHIFT)
    n = np.float32(z - _SHIFT)
    b = fmaf(-n, _LN2_LO, fmaf(-n, _LN2_HI, x))
    u = np.float32(b * b)
    j = fmaf(fmaf(fmaf(_C5, b, _C4), u, fmaf(_C3, b, _C2)), u, fmaf(_C1, b, np.float32(1.0)))
    if math.isnan(n):
        return np.float32(math.nan)
    if abs(n) > 192:
        return np.float32(0.0) if n <= 0 else np.float32(math.inf)
    return np.float32(math.ldexp(np.float64(j), int(n)))


def v_expf(x: np.ndarray) -> np.ndarray:
    """ggml_v_expf (AVX-512 flavour): a range reduction by ln2 and a degree-5 polynomial, all fused multiply-adds
    (`fmaf`), scaled by 2**n; |n| > 192 saturates to 0 or inf. Differs from expf by ~1 ulp."""
    with np.errstate(invalid="ignore", over="ignore"):
        return _v_expf1(np.asarray(x, F32))


def reduce_add16(v: np.ndarray) -> np.ndarray:
    """_mm512_reduce_add_ps over the last axis (16 lanes), GCC's halving tree, in float32."""
    t = v[..., 8:] + v[..., :8]
    t = t[..., 4:] + t[..., :4]
    t = t + t[..., [2, 3, 0, 1]]
    return t[..., 0] + t[..., 1]


def vec_soft_max_f32(x: np.ndarray, mx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml_vec_soft_max_f32 over the last axis: y = exp(x - max) (SIMD exp on blocks of 16, libm expf on the
    tail) and the sum of y in double (each 16-block reduced in float32 first). Returns (y, sum)."""
    x = np.asarray(x, F32)
    with np.errstate(invalid="ignore"):
        d = x - np.asarray(mx, F32)
    n = x.shape[-1]
    nb = n // 16 * 16
    y = np.empty_like(d)
    y[..., :nb] = v_expf(d[..., :nb])
    y[..., nb:] = expf(d[..., nb:])
    parts = [reduce_add16(y[..., :nb].reshape(*y.shape[:-1], nb // 16, 16)).astype(np.float64)]
    parts.append(y[..., nb:].astype(np.float64))
    terms = np.concatenate(parts, axis=-1)
    s = np.cumsum(terms, axis=-1)[..., -1] if n else np.zeros(x.shape[:-1])
    return y, s


def vec_dot(x: np.ndarray, y: np.ndarray, kind: str) -> np.ndarray:
    """ggml_vec_dot_f32 / ggml_vec_dot_f16 (AVX-512 build) over the last axis, broadcasting the others.

    Blocks of 64 go to 4 x 16 float32 lanes with fused multiply-adds, the lanes are folded (0+2, 1+3, then
    0+1) and reduced by `reduce_add16`; the tail is added one product at a time: in double for f16 inputs
    (their products are exact in float32), in float32 for f32 (see below). `kind` is "f32" or "f16"; the inputs
    hold the (already rounded) values as float32."""
    x, y = np.asarray(x, F32), np.asarray(y, F32)
    n = x.shape[-1]
    nb = n // 64 * 64
    shape = np.broadcast_shapes(x.shape[:-1], y.shape[:-1])
    s = np.zeros(shape, F32)
    if nb:
        acc = np.zeros((*shape, 4, 16), F32)
        for i in range(0, nb, 64):
            xs = x[..., i:i + 64].reshape(*x.shape[:-1], 4, 16)
            ys = y[..., i:i + 64].reshape(*y.shape[:-1], 4, 16)
            acc = fma32(xs, ys, acc)
        a = (acc[..., 0, :] + acc[..., 2, :]) + (acc[..., 1, :] + acc[..., 3, :])
        s = reduce_add16(a)
    if kind == "f16":
        s64 = s.astype(np.float64)
        for i in range(nb, n):
            s64 = s64 + (x[..., i] * y[..., i]).astype(np.float64)
        return s64.astype(F32)
    # GCC turns the f32 tail loop into an in-order reduction over vectors of 16 and then one of 8 (products
    # rounded, sums in order); what is left runs as scalar code with the product fused into the add.
    tail = n - nb
    nv = nb + tail // 16 * 16 + (8 if tail % 16 >= 8 else 0)
    for i in range(nb, nv):
        s = s + x[..., i] * y[..., i]
    for i in range(nv, n):
        s = fma32(x[..., i], y[..., i], s)
    return s


@numba.njit(cache=True, parallel=True)
def _gemm_fma(c, a, b):
    g_n, m_n, k_n = a.shape
    n_n = b.shape[2]
    for g in numba.prange(g_n):
        for i in range(m_n):
            for k in range(k_n):
                av = a[g, i, k]
                for j in range(n_n):
                    c[g, i, j] = fmaf(av, b[g, k, j], c[g, i, j])


def gemm_fma(c: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """simd_gemm: `c += a @ b` per batch (leading axes), each element a float32 fma chain over k in order.
    Arrays `(..., M, K)`, `(..., K, N)`, `(..., M, N)`; returns the new c (float32)."""
    lead = np.broadcast_shapes(a.shape[:-2], b.shape[:-2], c.shape[:-2])
    a3 = np.ascontiguousarray(np.broadcast_to(a, (*lead, *a.shape[-2:])), F32).reshape(-1, *a.shape[-2:])
    b3 = np.ascontiguousarray(np.broadcast_to(b, (*lead, *b.shape[-2:])), F32).reshape(-1, *b.shape[-2:])
    c3 = np.array(np.broadcast_to(c, (*lead, *c.shape[-2:])), F32).reshape(-1, *c.shape[-2:])
    _gemm_fma(c3, a3, b3)
    return c3.reshape(*lead, *c.shape[-2:])


@numba.vectorize(["float32(float32)"], cache=True)
def erff(x):
    return math.erf(x)


def v_silu_rows(x: np.ndarray) -> np.ndarray:
    """ggml_vec_silu_f32 on each row (last axis): x / (1 + exp(-x)) with ggml's SIMD exp on blocks of 16 and
    libm expf on the tail of each row."""
    x = np.asarray(x, F32)
    n = x.shape[-1]
    nb = n // 16 * 16
    y = np.empty_like(x)
    with np.errstate(over="ignore", invalid="ignore"):
        y[..., :nb] = x[..., :nb] / (F32(1) + v_expf(F32(0) - x[..., :nb]))
        y[..., nb:] = x[..., nb:] / (F32(1) + expf(-x[..., nb:]))
    return y
