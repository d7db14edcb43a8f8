"""Elementwise ops: binary with broadcast, scalar ops, unary activations, GLU (ggml-semantics §2.7, §2.8,
§2.16). Kernels compute in float32, as ggml's CPU kernels do; the result is stored in the node's type.

GELU and GELU_QUICK: under "ggml" numerics they go through ggml's fp16 lookup tables (input rounded to f16,
table value = f16(f(x))), which matches the CPU bit for bit given the same input; under "exact" numerics they
are the float32 formulas.
"""

from __future__ import annotations

import functools

import numpy as np

from npggml.ops._libm import erff, expf, fma32, tanhf, v_silu_rows
from npggml.ops._special import erf
from npggml.ops.registry import Out, ggml_numerics, op, require, require_row

F32 = np.float32


def _f32(x: np.ndarray) -> np.ndarray:
    return x if x.dtype == F32 else x.astype(F32)


def tile_to(b: np.ndarray, shape: tuple) -> np.ndarray:
    """b tiled (modulo) to `shape`, ggml's broadcast for add/mul: cheap NumPy broadcasting where it applies."""
    if all(bs in (1, s) for bs, s in zip(b.shape, shape)):
        return b
    return np.tile(b, tuple(s // bs for s, bs in zip(shape, b.shape)))


# --- binary ----------------------------------------------------------------------------------------


def _binary(name: str, fn):
    def rule(a, b):
        require(all(b.ne[i] and a.ne[i] % b.ne[i] == 0 for i in range(4)),
                f"b {b.ne_str()} cannot be broadcast to a {a.ne_str()}")
        require(a.dtype in ("f32", "f16", "bf16") and b.dtype in ("f32", "f16", "bf16"),
                f"unsupported types {a.dtype}, {b.dtype}")
        return Out(a.ne, a.dtype)

    d = op(name, ggml=name.upper(), srcs=2, inplace=True, flops=lambda n: n.nelements)(rule)

    @d.kernel
    def _k(out, a, b):
        return fn(_f32(a), tile_to(_f32(b), a.shape))

    return d


add = _binary("add", np.add)
sub = _binary("sub", np.subtract)
mul = _binary("mul", np.multiply)
div = _binary("div", np.divide)


@op("add1", ggml="ADD1", srcs=2, inplace=True)
def add1(a, b):
    require(b.nelements == 1, f"b must be a scalar, got {b.ne_str()}")
    return Out(a.ne, a.dtype)


@add1.kernel
def _add1(out, a, b):
    return _f32(a) + _f32(b).reshape(())


@op("scale", ggml="SCALE", inplace=True)
def scale(a, s):
    return Out(a.ne, a.dtype)


@scale.kernel
def _scale(out, a, s):
    return _f32(a) * F32(s)


@op("sqr", ggml="SQR", inplace=True)
def sqr(a):
    return Out(a.ne, a.dtype)


@sqr.kernel
def _sqr(out, a):
    a = _f32(a)
    return a * a


@op("sqrt", ggml="SQRT", inplace=True)
def sqrt(a):
    return Out(a.ne, a.dtype)


@sqrt.kernel
def _sqrt(out, a):
    with np.errstate(invalid="ignore"):
        return np.sqrt(_f32(a))


@op("clamp", ggml="CLAMP", inplace=True)
def clamp(a, min, max):
    return Out(a.ne, a.dtype)


@clamp.kernel
def _clamp(out, a, min, max):
    return np.maximum(np.minimum(_f32(a), F32(max)), F32(min))


# --- unary -----------------------------------------------------------------------------------------

SQRT_2_OVER_PI = F32(0.79788456080286535587989211986876)
GELU_COEF_A = F32(0.044715)
GELU_QUICK_COEF = F32(-1.702)
SQRT_2_INV = F32(0.70710678118654752440084436210484)


def gelu_tanh_f32(x: np.ndarray) -> np.ndarray:
    x = _f32(x)
    # glibc tanhf; GCC fuses GELU_COEF_A*x*x + 1 into an fma (this reproduces ggml_table_gelu_f16 exactly)
    return F32(0.5) * x * (F32(1) + tanhf(SQRT_2_OVER_PI * x * fma32(GELU_COEF_A * x, x, F32(1))))


def gelu_quick_f32(x: np.ndarray) -> np.ndarray:
    x = _f32(x)
    with np.errstate(over="ignore"):
        return x * (F32(1) / (F32(1) + expf(GELU_QUICK_COEF * x)))


@functools.cache
def _f16_table(fn_name: str) -> np.ndarray:
    """ggml_table_gelu_f16 / ggml_table_gelu_quick_f16: f16(f(x)) for every f16 bit pattern x."""
    x = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(F32)
    fn = {"gelu": gelu_tanh_f32, "gelu_quick": gelu_quick_f32}[fn_name]
    with np.errstate(invalid="ignore", over="ignore"):
        return fn(x).astype(np.float16)


def _table_lookup(x: np.ndarray, fn_name: str) -> np.ndarray:
    with np.errstate(over="ignore"):
        bits = x.astype(np.float16).view(np.uint16)
    return _f16_table(fn_name)[bits].astype(F32)


def gelu_ggml(x: np.ndarray) -> np.ndarray:
    x = _f32(x)
    y = _table_lookup(x, "gelu")
    y = np.where(x <= -10, F32(0), y)
    return np.where(x >= 10, x, y)


def _gelu(x):
    return gelu_ggml(x) if ggml_numerics() else gelu_tanh_f32(x)


def _gelu_quick(x):
    return _table_lookup(_f32(x), "gelu_quick") if ggml_numerics() else gelu_quick_f32(x)


def _gelu_erf(x):
    """0.5 x (1 + erf(x / sqrt 2)) in float32 with glibc erff, as ggml_vec_gelu_erf_f32."""
    x = _f32(x)
    if not ggml_numerics():
        e = erf(x.astype(np.float64) * 0.70710678118654752440).astype(F32)
        return F32(0.5) * x * (F32(1) + e)
    return F32(0.5) * x * (F32(1) + erff(x * SQRT_2_INV))


def _silu(x):
    x = _f32(x)
    with np.errstate(over="ignore"):
        return x / (F32(1) + expf(-x))


def _silu_f32_rows(x):
    """F32 SILU under ggml numerics: the SIMD rows of ggml_vec_silu_f32."""
    return v_silu_rows(x) if ggml_numerics() else _silu(x)


def _sigmoid(x):
    x = _f32(x)
    with np.errstate(over="ignore"):
        return F32(1) / (F32(1) + expf(-x))


UNARY = {
    "gelu": _gelu,
    "gelu_erf": _gelu_erf,
    "gelu_quick": _gelu_quick,
    "silu": _silu,
    "relu": lambda x: np.maximum(_f32(x), F32(0)),
    "tanh": lambda x: tanhf(_f32(x)),
    "sigmoid": _sigmoid,
    "exp": lambda x: expf(_f32(x)),
}


def _unary(name: str, fn):
    def rule(a):
        require(a.is_contiguous_rows(), "rows must be contiguous")
        require(a.dtype in ("f32", "f16", "bf16"), f"unsupported type {a.dtype}")
        return Out(a.ne, a.dtype)

    d = op(name, ggml="UNARY", desc=name.upper(), inplace=True, flops=lambda n: 8 * n.nelements)(rule)

    @d.kernel
    def _k(out, a):
        with np.errstate(over="ignore", invalid="ignore"):
            if name == "silu" and out.dtype == "f32":
                return _silu_f32_rows(a)
            return fn(a)

    return d


for _name, _fn in UNARY.items():
    globals()[_name] = _unary(_name, _fn)


BIAS_ACTS = ("gelu_erf", "gelu_quick")


def _require_biased(a, b) -> None:
    """a fused op's `add(a, b)`: a F32 with contiguous rows, b one row."""
    require(a.dtype == "f32" and a.is_contiguous_rows(), f"a must be F32 with contiguous rows, got {a.dtype}")
    require_row(b, a.ne[0], "b")


@op("add_act", ggml="ADD_ACT", srcs=2, inplace=True, flops=lambda n: 9 * n.nelements)
def add_act(a, b, act):
    """Fused `act(add(a, b))`, b one row: a linear layer's bias and then its activation (`act` in BIAS_ACTS), as
    `npggml.graph.fuse.fuse_bias_act` finds them in the graph: one pass over the rows instead of two."""
    require(act in BIAS_ACTS, f"act must be one of {', '.join(BIAS_ACTS)}, got {act!r}")
    _require_biased(a, b)
    return Out(a.ne, a.dtype)


@add_act.kernel
def _add_act(out, a, b, act):
    """The replaced add's and activation's reference kernels in order: the unfused graph's value, bit for bit."""
    with np.errstate(over="ignore", invalid="ignore"):
        return UNARY[act](_f32(a) + _f32(b).reshape(-1))


@op("add_res", ggml="ADD_RES", srcs=3, inplace=True, flops=lambda n: 2 * n.nelements)
def add_res(a, b, c):
    """Fused `add(add(a, b), c)`, b one row, c of a's shape: a linear layer's bias and then the residual it joins,
    as `npggml.graph.fuse.fuse_bias_residual` finds them in the graph: one pass over the rows instead of two."""
    _require_biased(a, b)
    require(c.dtype == "f32" and c.ne == a.ne, f"c must be F32 of a's shape {a.ne_str()}, got {c.dtype} "
            f"{c.ne_str()}")
    return Out(a.ne, a.dtype)


@add_res.kernel
def _add_res(out, a, b, c):
    """The two adds' reference kernels in order: the unfused graph's value, bit for bit."""
    with np.errstate(over="ignore", invalid="ignore"):
        return (_f32(a) + _f32(b).reshape(-1)) + _f32(c)


# --- GLU -------------------------------------------------------------------------------------------


def _glu(name: str, act):
    def _act(out, x):
        if act is _silu and out.dtype == "f32":
            return _silu_f32_rows(x)  # ggml_vec_swiglu_f32: the SIMD SILU rows
        return act(x)

    def split_rule(a, b):
        require(a.ne == b.ne, f"a {a.ne_str()} and b {b.ne_str()} must have the same shape")
        return Out(a.ne, a.dtype)

    def fused_rule(a, swapped=False):
        require(a.ne[0] % 2 == 0, f"ne0 = {a.ne[0]} must be even")
        return Out((a.ne[0] // 2, *a.ne[1:]), a.dtype)

    split = op(f"{name}_split", ggml="GLU", srcs=2, desc=name.upper(), flops=lambda n: 9 * n.nelements)(
        split_rule)
    fused = op(name, ggml="GLU", desc=name.upper(), flops=lambda n: 9 * n.nelements)(fused_rule)

    @split.kernel
    def _ks(out, a, b):
        return _act(out, a) * _f32(b)

    @fused.kernel
    def _kf(out, a, swapped=False):
        n = a.shape[-1] // 2
        x, g = (a[..., n:], a[..., :n]) if swapped else (a[..., :n], a[..., n:])
        return _act(out, x) * _f32(g)

    return split, fused


swiglu_split, swiglu = _glu("swiglu", _silu)
geglu_split, geglu = _glu("geglu", _gelu)
