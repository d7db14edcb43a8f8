"""Activations: GELU (ggml's f16 table under ggml numerics, the tanh formula otherwise), GELU_ERF, GELU_QUICK
(f16 table / formula), SILU, and the split GLUs (swiglu_split, geglu_split) and fused GLUs (swiglu, geglu)."""

from __future__ import annotations

import functools
import math

import numba
import numpy as np

from npggml.ops import registry
from npggml.ops.elementwise import GELU_COEF_A, GELU_QUICK_COEF, SQRT_2_INV, SQRT_2_OVER_PI, _f16_table
from npggml.ops.fast._common import (
    F32,
    F64,
    NO_ROW,
    as_row,
    exp32,
    f16_bits,
    fmaf,
    helper,
    is_f32,
    kernel,
    onto,
    row_of,
    v_expf,
)
from npggml.ops.fast._erf import gelu_erf_exact
from npggml.ops.registry import ggml_numerics

GELU_TABLE, GELU_TANH, GELU_ERF, GELU_QUICK_TABLE, GELU_QUICK, SILU, GELU_ERF_F, SILU_SIMD = range(8)
_HALF, _ONE, _TEN = F32(0.5), F32(1.0), F32(10.0)
_INV_SQRT2 = F64(0.70710678118654752440)


@functools.cache
def _table(name: str) -> np.ndarray:
    return _f16_table(name).astype(F32)


_EMPTY = np.zeros(1, F32)


@helper
def act(x, u, kind, table):
    """One activation of the float32 x (u: its bit pattern, used by the table lookups)."""
    if kind == GELU_TABLE:
        if x <= -_TEN:
            return F32(0.0)
        if x >= _TEN:
            return x
        return table[f16_bits(u)]
    if kind == GELU_TANH:  # glibc tanhf; GELU_COEF_A*x*x + 1 contracted to an fma, as the reference
        return _HALF * x * (_ONE + F32(math.tanh(SQRT_2_OVER_PI * x * fmaf(GELU_COEF_A * x, x, _ONE))))
    if kind == GELU_ERF:  # exact: libm erf in double, rounded
        e = F32(math.erf(F64(x) * _INV_SQRT2))
        return _HALF * x * (_ONE + e)
    if kind == GELU_ERF_F:  # ggml: glibc erff in float
        return _HALF * x * (_ONE + F32(math.erf(x * SQRT_2_INV)))
    if kind == GELU_QUICK_TABLE:
        return table[f16_bits(u)]
    if kind == GELU_QUICK:
        return x * (_ONE / (_ONE + F32(math.exp(GELU_QUICK_COEF * x))))
    if kind == SILU_SIMD:  # the 16-wide SIMD body of ggml_vec_silu_f32: ggml's exp
        return x / (_ONE + v_expf(F32(0.0) - x))
    # SILU (and the scalar tail of ggml's rows): glibc expf
    return x / (_ONE + F32(math.exp(-x)))


@kernel
def _unary(x, xu, kind, table, y):
    n3, n2, n1, n0 = x.shape
    for r in numba.prange(n3 * n2 * n1):
        i3, i2, i1 = row_of(r, n2, n1)
        nb = n0 // 16 * 16 if kind == SILU_SIMD else 0
        for i in range(n0):
            k = kind if i < nb or kind != SILU_SIMD else SILU
            y[i3, i2, i1, i] = act(x[i3, i2, i1, i], xu[i3, i2, i1, i], k, table)


@kernel
def _glu(x, xu, g, kind, table, y):
    """y = act(x) * g."""
    n3, n2, n1, n0 = x.shape
    for r in numba.prange(n3 * n2 * n1):
        i3, i2, i1 = row_of(r, n2, n1)
        nb = n0 // 16 * 16 if kind == SILU_SIMD else 0
        for i in range(n0):
            k = kind if i < nb or kind != SILU_SIMD else SILU
            y[i3, i2, i1, i] = act(x[i3, i2, i1, i], xu[i3, i2, i1, i], k, table) * g[i3, i2, i1, i]


@kernel
def _gelu_quick_exp32(x, y, bias):
    """GELU_QUICK under exact numerics with `exp32` (within 1 ulp of exp) instead of libm's expf: the same
    formula, vectorised along each row (libm's scalar expf kept the loop scalar: 4.5 ns per element, now ~1).
    With a non-empty bias row, of x + bias (rounded to float, as an add node would)."""
    n3, n2, n1, n0 = x.shape
    for r in numba.prange(n3 * n2 * n1):
        i3, i2, i1 = row_of(r, n2, n1)
        yr = y[i3, i2, i1]
        onto(x[i3, i2, i1], yr)
        if bias.shape[0] > 0:
            for i in range(n0):
                yr[i] = yr[i] + bias[i]
        for i in range(n0):
            v = yr[i]
            yr[i] = v * (_ONE / (_ONE + exp32(GELU_QUICK_COEF * v)))


@kernel
def _swiglu_exp32(x, g, y):
    """SWIGLU under exact numerics: x / (1 + exp32(-x)) * g (libm's scalar expf kept the loop scalar), on two
    distinct arrays in every case (see `onto`): y and x, or y (holding the gate, in place over it) and x."""
    n3, n2, n1, n0 = x.shape
    for r in numba.prange(n3 * n2 * n1):
        i3, i2, i1 = row_of(r, n2, n1)
        xr, gr, yr = x[i3, i2, i1], g[i3, i2, i1], y[i3, i2, i1]
        if gr.ctypes.data == yr.ctypes.data:
            for i in range(n0):
                v = xr[i]
                yr[i] = v / (_ONE + exp32(-v)) * yr[i]
        else:
            onto(xr, yr)
            for i in range(n0):
                v = yr[i]
                yr[i] = v / (_ONE + exp32(-v)) * gr[i]


def _kind(name: str) -> tuple[int, np.ndarray]:
    ggml = ggml_numerics()
    if name == "gelu":
        return (GELU_TABLE, _table("gelu")) if ggml else (GELU_TANH, _EMPTY)
    if name == "gelu_quick":
        return (GELU_QUICK_TABLE, _table("gelu_quick")) if ggml else (GELU_QUICK, _EMPTY)
    if name == "gelu_erf":
        return (GELU_ERF_F if ggml else GELU_ERF), _EMPTY
    return (SILU_SIMD if ggml else SILU), _EMPTY


def _make_unary(name: str):
    @registry.get(name).fast_kernel
    def fast(dst, out, a):
        if not is_f32(a, dst):
            return NotImplemented
        kind, table = _kind(name)
        if kind == GELU_ERF:  # exact numerics: the vectorised erf with a libm fix-up (same bits)
            gelu_erf_exact(a, dst, NO_ROW)
            return None
        if kind == GELU_QUICK:
            _gelu_quick_exp32(a, dst, NO_ROW)
            return None
        _unary(a, a.view(np.uint32), kind, table, dst)

    fast.__name__ = f"{name}_fast"
    return fast


for _name in ("gelu", "gelu_erf", "gelu_quick", "silu"):
    _make_unary(_name)


@registry.get("add_act").fast_kernel
def add_act_fast(dst, out, a, b, act):
    """The bias added row by row inside the activation's own pass (exact numerics); under ggml numerics the add
    into dst, then the activation's kernel in place."""
    if not is_f32(a, b, dst):
        return NotImplemented
    kind, table = _kind(act)
    bias = as_row(b)
    if kind == GELU_ERF:
        gelu_erf_exact(a, dst, bias)
    elif kind == GELU_QUICK:
        _gelu_quick_exp32(a, dst, bias)
    else:
        np.add(a, bias, out=dst)
        _unary(dst, dst.view(np.uint32), kind, table, dst)
    return None


def _glu_into(dst, x, g, act_name: str) -> None:
    kind, table = _kind(act_name)
    if kind == SILU:
        _swiglu_exp32(x, g, dst)
    else:
        _glu(x, x.view(np.uint32), g, kind, table, dst)


def _make_glu(name: str, act_name: str):
    @registry.get(f"{name}_split").fast_kernel
    def split_fast(dst, out, a, b):
        if not is_f32(a, b, dst):
            return NotImplemented
        _glu_into(dst, a, b, act_name)

    @registry.get(name).fast_kernel
    def fused_fast(dst, out, a, swapped=False):
        if not is_f32(a, dst):
            return NotImplemented
        n = a.shape[-1] // 2
        x, g = (a[..., n:], a[..., :n]) if swapped else (a[..., :n], a[..., n:])
        _glu_into(dst, x, g, act_name)

    return split_fast, fused_fast


_make_glu("swiglu", "silu")
_make_glu("geglu", "gelu")
