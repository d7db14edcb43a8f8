"""Views, permutes, reshapes, transposes and concat against direct NumPy (spec §2.2–§2.5)."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from numpy.lib.stride_tricks import as_strided
from strategies import ne4, perm_np_axes, seeds, values

import npggml
from npggml.graph.context import Context
from npggml.graph.graph import Graph
from npggml.graph.interp import Interpreter


def _run(node, inputs):
    (out,) = Interpreter(Graph(node), fast=False).run(inputs)
    return out


def _ggml_permute_oracle(x: np.ndarray, axes) -> np.ndarray:
    """Element definition: dst[j] = src[i] with j[axes[i]] = i_i, written in ggml index order."""
    g = x.transpose(3, 2, 1, 0)  # g[i0, i1, i2, i3]
    return np.transpose(g, np.argsort(axes)).transpose(3, 2, 1, 0)


@given(ne=ne4(), seed=seeds, axes=st.permutations([0, 1, 2, 3]))
def test_permute_then_cont_is_the_spec_transpose(ne, seed, axes):
    x = values(seed, ne, "f32")
    ctx = Context()
    a = ctx.input("f32", ne, "a")
    p = ctx.permute(a, *axes)
    assert p.ne == tuple(ne[axes.index(k)] for k in range(4))
    out = _run(ctx.cont(p), {a: x})
    np.testing.assert_array_equal(out, x.transpose(perm_np_axes(axes)))
    np.testing.assert_array_equal(out, _ggml_permute_oracle(x, axes))


def test_permute_example_from_the_spec():
    x = np.arange(120, dtype=np.float32).reshape(5, 4, 3, 2)  # ne [2, 3, 4, 5]
    out = npggml.eval_op("cont", npggml.eval_op("permute", x, 1, 2, 0, 3))
    assert out.shape == (5, 3, 2, 4)  # ne [4, 2, 3, 5]
    np.testing.assert_array_equal(out, x.transpose(0, 2, 3, 1))


@given(ne=ne4(), seed=seeds)
def test_transpose_swaps_dims_0_and_1(ne, seed):
    x = values(seed, ne, "f32")
    np.testing.assert_array_equal(npggml.eval_op("cont", npggml.eval_op("transpose", x)), x.swapaxes(-1, -2))
    ctx = Context()
    a = ctx.input("f32", ne, "a")
    t = ctx.transpose(a)
    assert t.nb == (a.nb[1], a.nb[0], a.nb[2], a.nb[3]) and t.is_view


@given(data=st.data(), ne=ne4(), seed=seeds)
def test_view_nd_equals_as_strided(data, ne, seed):
    x = values(seed, ne, "f32")
    total = x.size
    k = data.draw(st.integers(1, 4))
    vne = [data.draw(st.integers(1, 3)) for _ in range(k)]
    strides = [1]
    for i in range(1, k):
        strides.append(strides[-1] * vne[i - 1] + data.draw(st.integers(0, 2)))
    span = 1 + sum((vne[i] - 1) * strides[i] for i in range(k))
    if span > total:
        vne, strides, span = [1] * k, [1] * k, 1
    off = data.draw(st.integers(0, total - span))
    args = vne + [4 * s for s in strides[1:]] + [4 * off]
    ctx = Context()
    a = ctx.input("f32", ne, "a")
    v = getattr(ctx, f"view_{k}d")(a, *args)
    out = _run(ctx.cont(v), {a: x})
    flat = np.ascontiguousarray(x).reshape(-1)
    expect = as_strided(flat[off:], shape=tuple(reversed(vne)), strides=tuple(4 * s for s in reversed(strides)))
    np.testing.assert_array_equal(out.reshape(expect.shape), expect)


@given(data=st.data(), ne=ne4(), seed=seeds)
def test_reshape_nd_equals_numpy_reshape(data, ne, seed):
    x = values(seed, ne, "f32")
    n = x.size
    d0 = data.draw(st.sampled_from([d for d in range(1, n + 1) if n % d == 0]))
    d1 = data.draw(st.sampled_from([d for d in range(1, n // d0 + 1) if (n // d0) % d == 0]))
    out = npggml.eval_op("reshape_3d", x, d0, d1, n // d0 // d1)
    np.testing.assert_array_equal(out, x.reshape(n // d0 // d1, d1, d0))
    np.testing.assert_array_equal(npggml.eval_op("reshape_1d", x, n), x.reshape(-1))


@given(ne=ne4(), seed=seeds, dim=st.integers(0, 3), extra=st.integers(1, 4))
def test_concat_equals_numpy(ne, seed, dim, extra):
    x = values(seed, ne, "f32")
    ne_b = list(ne)
    ne_b[dim] = extra
    y = values(seed + 1, ne_b, "f32")
    np.testing.assert_array_equal(npggml.eval_op("concat", x, y, dim), np.concatenate([x, y], axis=3 - dim))


@st.composite
def chains(draw):
    return draw(ne4()), draw(seeds), [draw(st.tuples(st.sampled_from(["permute", "transpose", "cont", "reshape",
                                                                         "view", "concat"]), seeds))
                                       for _ in range(draw(st.integers(1, 5)))]


@given(chains())
def test_random_view_chains_match_numpy(chain):
    """Chains of permute/transpose/cont/reshape/view/concat against a NumPy mirror of the same steps."""
    ne, seed, steps = chain
    x = values(seed, ne, "f32")
    ctx = Context()
    leaf = ctx.input("f32", ne, "x")
    t, mirror = leaf, x
    for kind, s in steps:
        rng = np.random.default_rng(s)
        if kind == "permute":
            axes = tuple(int(i) for i in rng.permutation(4))
            t, mirror = ctx.permute(t, *axes), mirror.transpose(perm_np_axes(axes))
        elif kind == "transpose":
            t, mirror = ctx.transpose(t), mirror.swapaxes(-1, -2)
        elif kind == "cont":
            t = ctx.cont(t)
        elif kind == "reshape" and t.is_contiguous():
            n = mirror.size
            d0 = int(rng.choice([d for d in range(1, n + 1) if n % d == 0]))
            t, mirror = ctx.reshape_2d(t, d0, n // d0), mirror.reshape(1, 1, n // d0, d0)
        elif kind == "view" and t.nb[0] == 4:
            o = [int(rng.integers(0, n)) for n in t.ne]
            m = [int(rng.integers(1, n - oo + 1)) for n, oo in zip(t.ne, o)]
            offset = sum(o[i] * t.nb[i] for i in range(4))
            t = ctx.view_4d(t, *m, t.nb[1], t.nb[2], t.nb[3], offset)
            mirror = mirror[o[3]:o[3] + m[3], o[2]:o[2] + m[2], o[1]:o[1] + m[1], o[0]:o[0] + m[0]]
        elif kind == "concat":
            dim = int(rng.integers(0, 4))
            t = ctx.concat(t, t, dim)
            mirror = np.concatenate([mirror, mirror], axis=3 - dim)
        assert t.shape == mirror.shape
    out = _run(ctx.cont(t), {leaf: x})
    np.testing.assert_array_equal(out, mirror)
