"""Semantic oracles for the core ops, written from the spec (ggml-semantics §2) independently of the kernels:
explicit index loops / float64 formulas on small random inputs."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from strategies import STRATEGIES, run_case, src_values

import npggml
from npggml.graph.interp import bf16_to_f32, f32_to_bf16

F32 = np.float32


def f16r(x):
    return np.asarray(x, F32).astype(np.float16).astype(F32)


def ggml_idx(shape):
    """All ggml index tuples (i0, i1, i2, i3) for a NumPy shape (n3, n2, n1, n0)."""
    n3, n2, n1, n0 = shape
    return [(i0, i1, i2, i3) for i3 in range(n3) for i2 in range(n2) for i1 in range(n1) for i0 in range(n0)]


def at(x, i0, i1, i2, i3):
    return x[i3, i2, i1, i0]


# --- broadcasting ------------------------------------------------------------------------------------------


@given(data=st.data())
def test_binary_ops_broadcast_b_by_modulo_in_every_dim(data):
    op = data.draw(st.sampled_from(["add", "sub", "mul", "div"]))
    case = data.draw(STRATEGIES[op]())
    node, out = run_case(case)
    a, b = (v.astype(F32) for v in src_values(case))
    fn = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide}[op]
    expect = np.empty(a.shape, F32)
    for i0, i1, i2, i3 in ggml_idx(a.shape):
        bs = b.shape
        expect[i3, i2, i1, i0] = fn(at(a, i0, i1, i2, i3), b[i3 % bs[0], i2 % bs[1], i1 % bs[2], i0 % bs[3]])
    if node.dtype == "f16":
        expect = f16r(expect)
    elif node.dtype == "bf16":
        expect = bf16_to_f32(f32_to_bf16(expect)).reshape(expect.shape)
    np.testing.assert_array_equal(out.astype(F32), expect)


@given(data=st.data())
def test_mul_mat_broadcasts_a_by_integer_division(data):
    case = data.draw(STRATEGIES["mul_mat"]())
    a, b = (v.astype(np.float64) for v in src_values(case))
    wtype = case.srcs[0].dtype
    out_exact = run_case(case, "exact")[1]
    out_ggml = run_case(case, "ggml")[1]
    r3, r2 = b.shape[0] // a.shape[0], b.shape[1] // a.shape[1]
    n3, n2, n, _ = b.shape
    m = a.shape[2]
    for rounded, out in ((False, out_exact), (True, out_ggml)):
        bb = b
        if rounded and wtype == "f16":
            bb = f16r(b).astype(np.float64)
        elif rounded and wtype == "bf16":
            bb = bf16_to_f32(f32_to_bf16(b.astype(F32))).reshape(b.shape).astype(np.float64)
        expect = np.zeros((n3, n2, n, m))
        for i3 in range(n3):
            for i2 in range(n2):
                for j in range(n):
                    for i in range(m):
                        expect[i3, i2, j, i] = sum(a[i3 // r3, i2 // r2, i, c] * bb[i3, i2, j, c]
                                                   for c in range(a.shape[3]))
        np.testing.assert_allclose(out, expect, rtol=1e-5, atol=1e-5)


# --- softmax -----------------------------------------------------------------------------------------------


def alibi_slope(h, n_head, max_bias):
    if max_bias <= 0:
        return 1.0
    n_log2 = 2 ** math.floor(math.log2(n_head))
    m0, m1 = 2 ** (-max_bias / n_log2), 2 ** (-(max_bias / 2) / n_log2)
    return m0 ** (h + 1) if h < n_log2 else m1 ** (2 * (h - n_log2) + 1)


@given(data=st.data())
def test_soft_max_ext_mask_broadcast_and_alibi(data):
    case = data.draw(STRATEGIES["soft_max_ext"]())
    _, out = run_case(case)
    a, mask = src_values(case)
    scale, max_bias = case.params["scale"], case.params["max_bias"]
    n3, n2, n1, _ = a.shape
    expect = np.empty(a.shape)
    for i3 in range(n3):
        for i2 in range(n2):
            for i1 in range(n1):
                w = a[i3, i2, i1].astype(np.float64) * scale
                if mask is not None:
                    mrow = mask[i3 % mask.shape[0], i2 % mask.shape[1], i1].astype(np.float64)
                    w = w + alibi_slope(i2, n2, max_bias) * mrow
                e = np.exp(w - w.max())
                expect[i3, i2, i1] = e / e.sum()
    np.testing.assert_allclose(out, expect, rtol=2e-6, atol=1e-7)


# --- unary, GELU tables, GLU -------------------------------------------------------------------------------


def _gelu_tanh64(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * x * (1 + 0.044715 * x * x)))


def _gelu_f32(x):
    """The spec formula evaluated in float32 (tanh correctly rounded to float32), as the table builder does."""
    x = np.asarray(x, F32)
    inner = F32(math.sqrt(2 / math.pi)) * x * (F32(1) + F32(0.044715) * x * x)
    return F32(0.5) * x * (F32(1) + np.tanh(inner.astype(np.float64)).astype(F32))


def test_gelu_follows_the_f16_table_semantics():
    """x <= -10 -> 0, x >= 10 -> x, else f16(gelu_f32(f16(x))): input and output rounded to f16 (spec §2.16)."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-12, 12, 4000), [-10, -10.001, 10, 10.5, -9.999, 9.999, 0]]).astype(F32)
    out = npggml.eval_op("gelu", x)
    table = _gelu_f32(f16r(x)).astype(np.float16).astype(F32)
    expect = np.where(x <= -10, F32(0), np.where(x >= 10, x, table))
    # one f16 ulp, or a few float32 ulps of 0.5*x where 1 + tanh cancels (x < -3)
    tol = np.maximum(np.abs(np.spacing(np.abs(expect).astype(np.float16))).astype(F32), 4 * np.abs(x) * 2.0**-24)
    diff = np.abs(out - expect)
    assert np.all(diff <= tol), x[diff > tol]
    assert np.mean(diff == 0) > 0.99
    np.testing.assert_array_equal(out[x >= 10], x[x >= 10])
    assert np.all(out[x <= -10] == 0)
    inside = (x > -9.99) & (x < 9.99)
    same = inside & (f16r(x) == f16r(x + F32(1e-4)))  # inputs that share an f16 value share the output
    np.testing.assert_array_equal(out[same], npggml.eval_op("gelu", x + F32(1e-4))[same])
    assert np.all(f16r(out[inside]) == out[inside])  # table outputs are f16 values
    np.testing.assert_allclose(npggml.eval_op("gelu", x, numerics="exact"), _gelu_tanh64(x.astype(np.float64)),
                               rtol=1e-5, atol=2e-6)


def test_gelu_quick_is_a_table_for_all_inputs():
    rng = np.random.default_rng(1)
    x = rng.uniform(-14, 14, 3000).astype(F32)
    xr = f16r(x).astype(np.float64)
    expect = (xr / (1 + np.exp(-1.702 * xr))).astype(np.float16).astype(F32)
    out = npggml.eval_op("gelu_quick", x)
    assert np.all(np.abs(out - expect) <= np.abs(np.spacing(np.abs(expect).astype(np.float16))).astype(F32))
    assert np.mean(out == expect) > 0.99


UNARY64 = {
    "gelu_erf": lambda x: 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2))),
    "silu": lambda x: x / (1 + np.exp(-x)),
    "relu": lambda x: np.maximum(x, 0),
    "tanh": np.tanh,
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "exp": np.exp,
}


@given(data=st.data())
def test_unary_ops_match_float64_formulas(data):
    op = data.draw(st.sampled_from(sorted(UNARY64)))
    case = data.draw(STRATEGIES[op]())
    node, out = run_case(case)
    (x,) = src_values(case)
    with np.errstate(over="ignore"):
        expect = UNARY64[op](x.astype(np.float64))
    if node.dtype == "f16":
        with np.errstate(over="ignore"):
            expect = expect.astype(np.float16).astype(np.float64)  # overflows to inf like the f16 result
        np.testing.assert_allclose(out.astype(np.float64), expect, rtol=2e-3, atol=1e-4)
    else:
        tol = 1e-2 if node.dtype == "bf16" else 2e-6
        # float32 evaluation: where 1 + erf(x/sqrt 2) cancels (x << 0) the error is ~ulp(1) * |x| / 2
        atol = tol * 1e-2 + (np.abs(x.astype(np.float64)) * 2.0**-23 if op == "gelu_erf" else 0)
        assert np.all(np.abs(out.astype(np.float64) - expect) <= tol * np.abs(expect) + atol)


@given(data=st.data())
def test_glu_ops(data):
    op = data.draw(st.sampled_from(["swiglu", "geglu", "swiglu_split", "geglu_split"]))
    case = data.draw(STRATEGIES[op]())
    _, out = run_case(case, "exact")
    vals = [v.astype(np.float64) for v in src_values(case)]
    if op.endswith("split"):
        x, g = vals
    else:
        n = vals[0].shape[-1] // 2
        x, g = vals[0][..., :n], vals[0][..., n:]
        if case.params["swapped"]:
            x, g = g, x
    act = UNARY64["silu"](x) if op.startswith("swiglu") else _gelu_tanh64(x)
    np.testing.assert_allclose(out.astype(np.float64), act * g, rtol=3e-3, atol=3e-3)


# --- reductions and norms ----------------------------------------------------------------------------------


@given(data=st.data())
def test_norm_and_rms_norm_match_float64(data):
    op = data.draw(st.sampled_from(["norm", "rms_norm"]))
    case = data.draw(STRATEGIES[op]())
    _, out = run_case(case)
    (x,) = src_values(case)
    x = x.astype(np.float64)
    eps = case.params["eps"]
    if op == "norm":
        y = x - x.mean(-1, keepdims=True)
        den = np.sqrt((y * y).mean(-1, keepdims=True) + eps)
        expect = y / den
        # the float32 mean carries ~ulp(max|x|); x - mean amplifies it by 1/den
        atol = 1e-5 + 4 * np.abs(x).max(-1, keepdims=True) * 2.0**-24 / den
    else:
        expect = x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
        atol = 1e-5
    assert np.all(np.abs(out - expect) <= 1e-5 * np.abs(expect) + atol)


@given(data=st.data())
def test_sum_rows_and_mean(data):
    op = data.draw(st.sampled_from(["sum_rows", "mean"]))
    case = data.draw(STRATEGIES[op]())
    _, out = run_case(case)
    (x,) = src_values(case)
    expect = x.astype(np.float64).sum(-1, keepdims=True)
    if op == "mean":
        expect /= x.shape[-1]
    np.testing.assert_allclose(out, expect, rtol=1e-6, atol=1e-6)


# --- rows, repeat, pad, scalar ops -------------------------------------------------------------------------


@given(data=st.data())
def test_get_rows(data):
    case = data.draw(STRATEGIES["get_rows"]())
    node, out = run_case(case)
    a, b = src_values(case)
    expect = np.empty(out.shape, out.dtype)
    for i3 in range(out.shape[0]):
        for i2 in range(out.shape[1]):
            for r in range(out.shape[2]):
                expect[i3, i2, r] = a[i3, i2, b[0, i3, i2, r]]
    assert node.dtype == ("i32" if case.srcs[0].dtype == "i32" else "f32")
    np.testing.assert_array_equal(out, expect)


@given(data=st.data())
def test_set_rows_writes_into_a(data):
    case = data.draw(STRATEGIES["set_rows"]())
    node, out = run_case(case)
    a, b, c = src_values(case)
    expect = a.astype(np.float64).copy()
    n3, n2, nr, _ = b.shape
    for i3 in range(n3):
        for i2 in range(n2):
            for r in range(nr):
                expect[i3, i2, c[0, i3 % c.shape[1], i2 % c.shape[2], r]] = b[i3, i2, r]
    if node.dtype == "f16":
        expect = expect.astype(np.float16)
    assert node.is_view
    np.testing.assert_array_equal(out, expect.astype(out.dtype))


@given(data=st.data())
def test_repeat_and_pad(data):
    op = data.draw(st.sampled_from(["repeat", "repeat_4d", "pad", "pad_ext"]))
    case = data.draw(STRATEGIES[op]())
    _, out = run_case(case)
    (a,) = src_values(case)
    p = case.params
    expect = np.zeros(out.shape, F32)
    if op.startswith("pad"):
        lp = [0] * 4 if op == "pad" else [p["lp0"], p["lp1"], p["lp2"], p["lp3"]]
        for i0, i1, i2, i3 in ggml_idx(a.shape):
            expect[i3 + lp[3], i2 + lp[2], i1 + lp[1], i0 + lp[0]] = at(a, i0, i1, i2, i3)
    else:
        for i0, i1, i2, i3 in ggml_idx(out.shape):
            expect[i3, i2, i1, i0] = a[i3 % a.shape[0], i2 % a.shape[1], i1 % a.shape[2], i0 % a.shape[3]]
    np.testing.assert_array_equal(out, expect)


@given(data=st.data())
def test_scalar_ops(data):
    op = data.draw(st.sampled_from(["add1", "scale", "sqr", "sqrt", "clamp"]))
    case = data.draw(STRATEGIES[op]())
    node, out = run_case(case)
    vals = src_values(case)
    x = vals[0].astype(F32)
    p = case.params
    expect = {"add1": lambda: x + vals[1].reshape(()).astype(F32), "scale": lambda: x * F32(p.get("s", 0)),
              "sqr": lambda: x * x, "sqrt": lambda: np.sqrt(x),
              "clamp": lambda: np.minimum(np.maximum(x, F32(p.get("min", 0))), F32(p.get("max", 0)))}[op]()
    if node.dtype == "f16":
        expect = f16r(expect)
    np.testing.assert_array_equal(out.astype(F32), expect)


@given(data=st.data())
def test_copies_convert_in_logical_order(data):
    op = data.draw(st.sampled_from(["dup", "cont", "cpy", "cast", "cont_2d", "cont_4d"]))
    case = data.draw(STRATEGIES[op]())
    node, out = run_case(case)
    a = src_values(case)[0]
    flat = np.ascontiguousarray(a).reshape(-1)
    got = out.reshape(-1)
    if node.dtype == "i32":
        np.testing.assert_array_equal(got, np.trunc(flat.astype(np.float64)).astype(np.int32))
    elif node.dtype == "bf16":
        np.testing.assert_array_equal(got, bf16_to_f32(f32_to_bf16(flat.astype(F32))))
    else:
        np.testing.assert_array_equal(got, flat.astype(out.dtype))
