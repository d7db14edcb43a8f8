"""Shared Numba helpers: ggml's SIMD exp, float32 <-> float16 bit conversion, kernel decorator, layout checks."""

from __future__ import annotations

import math
import os

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from npggml.ops._libm import _C1, _C2, _C3, _C4, _C5, _LN2_HI, _LN2_LO, _LOG2E, _SHIFT, fmaf

# Numba's workqueue threads sleep between kernels; OpenMP's spin, which starves the BLAS pool threads (and
# everything else) whenever the machine is shared: a tiny-model encode went from 1.7 s to 7-9 s under load.
# Only a default: NUMBA_THREADING_LAYER still decides, and a layer already started stays.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

F32 = np.float32
F64 = np.float64

# every kernel: multithreaded, cached on disk, IEEE semantics (no reassociation, no contraction into fma), and
# NumPy's division semantics (x/0 is inf or nan, as in the reference): Numba's default Python model checks every
# divisor for zero to raise ZeroDivisionError, and that branch kept loops with a division from vectorising
# (x / (1 + exp32(-x)) ran at 9.4 ns per element instead of 1.3)
kernel = numba.njit(parallel=True, cache=True, fastmath=False, nogil=True, error_model="numpy")
helper = numba.njit(cache=True, fastmath=False, inline="always", error_model="numpy")
# single-threaded kernels (called from the BLAS pool's threads, or cheaper than a parallel launch)
serial = numba.njit(cache=True, nogil=True, fastmath=False, error_model="numpy")


@intrinsic
def _i32_as_f32(typingctx, x):
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@intrinsic
def _i64_as_f64(typingctx, x):
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@intrinsic
def _f32_as_i32(typingctx, x):
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


_EXP_LO = F32(-86.5)  # from here down: flushed to zero (keeps 2**(n-1) a normal float)
_LEAN_HI = F32(88.0)  # exp32_lean clamps x to [_EXP_LO, _LEAN_HI]
_EXP_HI = F32(88.75)  # above: inf (float32 exp overflows from 88.7228)
_E2, _E3, _E4, _E5, _E6, _E7 = (F32(1.0 / math.factorial(i)) for i in range(2, 8))
_ONE32 = F32(1.0)


@helper
def exp32(x):
    """float32 exp in 8-lane-vectorisable float32 steps (no table, no branch, no float->int conversion): n =
    round(x/ln2) by the 1.5*2**23 shift, r = x - n*ln2 in two fused steps, a degree-7 Taylor polynomial on
    |r| <= ln2/2 in fused multiply-adds, times 2**(n-1) from the exponent bits, times 2. At most 1 ulp from exp
    (NumPy's float32 exp: 2.4); results for x <= -86.5 (below 2**-124) are flushed to zero, NaN stays NaN."""
    xc = x if x > _EXP_LO else _EXP_LO
    xc = xc if xc < _EXP_HI else _EXP_HI
    z = fmaf(xc, _LOG2E, _SHIFT)
    n = z - _SHIFT
    r = fmaf(n, -_LN2_LO, fmaf(n, -_LN2_HI, xc))
    p = fmaf(fmaf(fmaf(fmaf(fmaf(fmaf(fmaf(_E7, r, _E6), r, _E5), r, _E4), r, _E3), r, _E2), r, _ONE32), r, _ONE32)
    e = (p * _i32_as_f32((_f32_as_i32(z) + 126) << 23)) * F32(2.0)
    e = e if x > _EXP_LO else F32(0.0)
    e = e if x < _EXP_HI else F32(np.inf)
    return e if x == x else x


@helper
def exp32_neg(x):
    """`exp32` for x <= 0 or NaN (a softmax's x - max): without the overflow clamp and select, and with 2**n
    built directly (n <= 0) instead of 2**(n-1) times 2, the SAM attention's exponential pass runs ~20 % faster.
    The same bits as `exp32` wherever 2**(n-1) is a normal float (x > -86.3), closer to exp below that."""
    xc = x if x > _EXP_LO else _EXP_LO
    z = fmaf(xc, _LOG2E, _SHIFT)
    n = z - _SHIFT
    r = fmaf(n, -_LN2_LO, fmaf(n, -_LN2_HI, xc))
    p = fmaf(fmaf(fmaf(fmaf(fmaf(fmaf(fmaf(_E7, r, _E6), r, _E5), r, _E4), r, _E3), r, _E2), r, _ONE32), r, _ONE32)
    e = p * _i32_as_f32((_f32_as_i32(z) + 127) << 23)
    e = e if x > _EXP_LO else F32(0.0)
    return e if x == x else x


# 2**f on |f| <= 1/2: `numpy.polynomial.chebyshev.chebfit` of exp2 at 200 Chebyshev points, degree 6, in powers of
# f (`cheb2poly`), rounded to float32: relative error 1.8e-8 (2.6e-9 before the rounding; degree 5: 1.0e-7)
_Q0, _Q1, _Q2, _Q3, _Q4, _Q5, _Q6 = (F32(float.fromhex(h)) for h in ("0x1p0", "0x1.62e430p-1", "0x1.ebfbe0p-3",
                                                                       "0x1.c6aeccp-5", "0x1.3b29d8p-7",
                                                                       "0x1.5f48c8p-10", "0x1.446c7ep-13"))
_LOG2E_LO = F32(float.fromhex("0x1.4ae0c0p-26"))  # log2(e) - _LOG2E


@helper
def exp32_lean(x):
    """exp(x) in fewer steps than `exp32_neg`, for the SAM attention's exponential pass: 2**n times a degree-6
    polynomial in f = x log2(e) - n (log2 e in two parts, so that f keeps float32 accuracy at large |x|), x first
    clamped to [-86.5, 88] so that 2**n fits a float32's exponent bits. Within 1.2 ulp of exp on [-86.5, 88];
    below (-inf too) exp(-86.5) = 2.7e-38 instead of 0, above (+inf too) exp(88) = 1.65e38 instead of more or
    +inf; NaN stays NaN (the clamps keep it, so a NaN score still makes its query's sum NaN). Without
    `exp32_neg`'s flush to zero and NaN select and with one degree less it is ~1/5 faster in that pass."""
    xc = _EXP_LO if x < _EXP_LO else x
    xc = _LEAN_HI if xc > _LEAN_HI else xc
    z = fmaf(xc, _LOG2E, _SHIFT)
    f = fmaf(xc, _LOG2E_LO, fmaf(xc, _LOG2E, -(z - _SHIFT)))
    p = fmaf(fmaf(fmaf(fmaf(fmaf(fmaf(_Q6, f, _Q5), f, _Q4), f, _Q3), f, _Q2), f, _Q1), f, _Q0)
    return p * _i32_as_f32((_f32_as_i32(z) + 127) << 23)


@helper
def onto(src, dst):
    """dst = src unless they are the same memory, so that a kernel can go on reading and writing dst alone: LLVM
    vectorises a two-array loop only after checking that the arrays do not overlap, and for the same array twice
    (a node computed in place) that check sends it to the scalar loop (GELU_QUICK: 5.5 instead of ~1 ns per
    element)."""
    if src.ctypes.data != dst.ctypes.data:
        dst[:] = src


@helper
def row_of(r, n2, n1):
    """Row r of a 4-D array's n3*n2*n1 rows (the prange index of the row kernels) -> (i3, i2, i1)."""
    return r // (n2 * n1), (r // n1) % n2, r % n1


@helper
def v_expf(x):
    """ggml_v_expf (AVX-512 flavour) on one float32, exactly as `npggml.ops._libm.v_expf` computes it: its fused
    multiply-adds, then 2**n from the exponent bits of a double and the saturations as selects instead of the
    reference's ldexp and branches, so that loops of it vectorise."""
    z = fmaf(x, _LOG2E, _SHIFT)
    n = F32(z - _SHIFT)
    b = fmaf(-n, _LN2_LO, fmaf(-n, _LN2_HI, x))
    u = F32(b * b)
    j = fmaf(fmaf(fmaf(_C5, b, _C4), u, fmaf(_C3, b, _C2)), u, fmaf(_C1, b, F32(1.0)))
    nc = n if n > F32(-192.0) else F32(-192.0)  # NaN -> -192: any in-range value, replaced below
    nc = nc if nc < F32(192.0) else F32(192.0)
    e = F32(F64(j) * _i64_as_f64((np.int64(np.int32(nc)) + 1023) << 52))  # via int32: AVX2 has no f64->i64
    e = e if n >= F32(-192.0) else F32(0.0)
    e = e if n <= F32(192.0) else F32(np.inf)
    return e if n == n else F32(np.nan)


@helper
def reduce_add16(t):
    """_mm512_reduce_add_ps: GCC's halving tree over 16 float32 lanes."""
    a0 = F32(t[8] + t[0])
    a1 = F32(t[9] + t[1])
    a2 = F32(t[10] + t[2])
    a3 = F32(t[11] + t[3])
    a4 = F32(t[12] + t[4])
    a5 = F32(t[13] + t[5])
    a6 = F32(t[14] + t[6])
    a7 = F32(t[15] + t[7])
    b0 = F32(a4 + a0)
    b1 = F32(a5 + a1)
    b2 = F32(a6 + a2)
    b3 = F32(a7 + a3)
    return F32(F32(b0 + b2) + F32(b1 + b3))


@helper
def f16_bits(u):
    """float32 (given as its uint32 bit pattern) -> float16 bits, IEEE round to nearest even (NumPy's astype)."""
    sign = (u >> np.uint32(16)) & np.uint32(0x8000)
    a = u & np.uint32(0x7FFFFFFF)
    if a >= np.uint32(0x7F800000):  # inf or nan
        if a > np.uint32(0x7F800000):
            return sign | np.uint32(0x7E00) | ((a >> np.uint32(13)) & np.uint32(0x3FF))
        return sign | np.uint32(0x7C00)
    if a >= np.uint32(0x477FF000):  # rounds to >= 65520: inf
        return sign | np.uint32(0x7C00)
    if a < np.uint32(0x38800000):  # below the smallest normal half: subnormal or zero
        if a < np.uint32(0x33000000):  # below 2**-25: rounds to zero
            return sign
        e = a >> np.uint32(23)
        m = (a & np.uint32(0x7FFFFF)) | np.uint32(0x800000)
        shift = np.uint32(126) - e  # value = m * 2**(e - 150); half subnormal unit = 2**-24
        r = m >> shift
        rem = m & ((np.uint32(1) << shift) - np.uint32(1))
        half = np.uint32(1) << (shift - np.uint32(1))
        if rem > half or (rem == half and (r & np.uint32(1)) != 0):
            r += np.uint32(1)
        return sign | r
    r = a - np.uint32(0x38000000)  # rebias the exponent from 127 to 15
    lo = r & np.uint32(0x1FFF)
    r = r >> np.uint32(13)
    if lo > np.uint32(0x1000) or (lo == np.uint32(0x1000) and (r & np.uint32(1)) != 0):
        r += np.uint32(1)
    return sign | r


NO_ROW = np.zeros(0, F32)  # a kernel's optional weight / bias row, absent


def as_row(t: np.ndarray | None) -> np.ndarray:
    """A `[1, 1, 1, n]` operand (a weight or bias row) as the 1-D contiguous array the row kernels take, or
    `NO_ROW` for None."""
    return NO_ROW if t is None else np.ascontiguousarray(t).reshape(-1)


def is_f32(*arrays) -> bool:
    return all(a is not None and a.dtype == F32 for a in arrays)


def as4d(a: np.ndarray) -> np.ndarray:
    return a.reshape((1,) * (4 - a.ndim) + a.shape) if a.ndim < 4 else a
