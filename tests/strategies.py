"""Hypothesis strategies: valid random inputs for every registered op, keyed by op name.

A strategy draws a `Case`: the op name, its sources as `Src` (the logical value the op reads, in NumPy order,
its ggml type and a memory layout) and its parameters. Layouts make sources non-contiguous where the op accepts
that: `("perm", axes)` stores the value transposed and feeds it through `ggml_permute(axes)`; `("window", ox, oy,
px, py)` embeds it in a larger buffer (junk around it) and feeds a `view_4d` of that. `run_case` builds and runs
the graph. Array contents come from a NumPy generator seeded by Hypothesis (fast, shrinkable seeds). Sizes stay
small (sides <= 8).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from hypothesis import strategies as st

from npggml.graph.context import Context
from npggml.graph.graph import Graph
from npggml.graph.interp import Interpreter, bf16_to_f32, f32_to_bf16
from npggml.graph.tensor import Tensor, packed_nb, type_info

F32 = np.float32
CONTIG = ("contig",)


@dataclass
class Src:
    value: np.ndarray  # logical value, NumPy order (float32 for f32/bf16, float16 for f16, int32 for i32)
    dtype: str
    layout: tuple = CONTIG

    @property
    def ne(self) -> tuple:
        return tuple(reversed(self.value.shape)) + (1,) * (4 - self.value.ndim)

    def f32(self) -> np.ndarray:
        return self.value.astype(F32)


@dataclass
class Case:
    op: str
    srcs: list
    params: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        s = ", ".join("None" if x is None else f"{x.dtype}{list(x.ne)}{'' if x.layout == CONTIG else x.layout}"
                      for x in self.srcs)
        return f"Case({self.op}({s}), {self.params})"


def perm_np_axes(axes) -> list[int]:
    """NumPy transpose order equivalent to ggml_permute(axes) (spec §2.4)."""
    q = [0] * 4
    for i, ax in enumerate(axes):
        q[ax] = i
    return [3 - q[3 - j] for j in range(4)]


def _leaf(ctx: Context, src: Src, name: str, inputs: dict, rng: np.random.Generator) -> Tensor:
    v4 = src.value.reshape(tuple(reversed(src.ne)))
    kind = src.layout[0]
    if kind == "contig":
        t = ctx.input(src.dtype, src.ne, name)
        inputs[t] = v4
        return t
    if kind == "perm":
        axes = src.layout[1]
        stored = np.transpose(v4, np.argsort(perm_np_axes(axes)))
        t = ctx.input(src.dtype, tuple(reversed(stored.shape)), name)
        inputs[t] = np.ascontiguousarray(stored)
        return ctx.permute(t, *axes)
    _, ox, oy, px, py = src.layout
    ne = src.ne
    big = (ne[3], ne[2], ne[1] + py, ne[0] + px)
    junk = rng.integers(-1000, 1000, big).astype(v4.dtype) if src.dtype == "i32" else \
        np.full(big, 7777.0, v4.dtype)
    junk[..., oy:oy + ne[1], ox:ox + ne[0]] = v4
    t = ctx.input(src.dtype, tuple(reversed(big)), name)
    inputs[t] = junk
    nb = packed_nb(src.dtype, tuple(reversed(big)))
    return ctx.view_4d(t, ne[0], ne[1], ne[2], ne[3], nb[1], nb[2], nb[3], oy * nb[1] + ox * nb[0])


def build_case(case: Case, ctx: Context | None = None):
    """(node, inputs) for a case: leaves (with permute/view nodes for non-contiguous layouts) and the op node."""
    ctx = ctx or Context()
    rng = np.random.default_rng(0)
    inputs: dict = {}
    srcs = [None if s is None else _leaf(ctx, s, f"src{i}", inputs, rng) for i, s in enumerate(case.srcs)]
    params = dict(case.params)
    for k, v in params.items():  # shape donors (reshape / repeat take a tensor for its ne)
        if isinstance(v, np.ndarray):
            params[k] = ctx.new_tensor("f32", tuple(reversed(v.shape)), k)
    node = getattr(ctx, case.op)(*srcs, **params)
    return node, inputs


def run_case(case: Case, numerics: str = "ggml"):
    """Build and run; returns (node, value as NumPy array in NumPy order, bf16 as float32)."""
    node, inputs = build_case(case)
    (out,) = Interpreter(Graph(node), numerics=numerics, fast=False).run(inputs)
    return node, out


def src_values(case: Case) -> list:
    """The source values as kernels see them (f16 as float16, bf16 as float32), 4-D, or None."""
    return [None if s is None else s.value.reshape(tuple(reversed(s.ne))) for s in case.srcs]


# --- building blocks ---------------------------------------------------------------------------------------

seeds = st.integers(0, 2**32 - 1)
side = st.integers(1, 6)


def values(seed: int, ne, dtype: str, lo: float = -3.0, hi: float = 3.0) -> np.ndarray:
    """Random values of ggml shape `ne` (NumPy order), exactly representable in `dtype`."""
    rng = np.random.default_rng(seed)
    shape = tuple(reversed(tuple(ne)))
    if dtype == "i32":
        return rng.integers(int(lo), int(hi) + 1, shape).astype(np.int32)
    x = rng.uniform(lo, hi, shape).astype(F32)
    if dtype == "f16":
        return x.astype(np.float16)
    if dtype == "bf16":
        return bf16_to_f32(f32_to_bf16(x)).reshape(shape)
    return x


@st.composite
def ne4(draw, dims: int = 4, max_side: int = 6, min_side: int = 1):
    ne = [draw(st.integers(min_side, max_side)) for _ in range(dims)]
    return tuple(ne + [1] * (4 - dims))


@st.composite
def layouts(draw, ne, kind: str = "any"):
    """A layout for a value of shape ne. Kinds: "any" (permutes of all dims too), "rows" (dim 0 stays packed),
    "planes" (dims 0 and 1 stay packed), "strided" (no permutes: rows and planes evenly spaced), "contig"."""
    if kind == "contig":
        return CONTIG
    opts = ["contig", "window"] + (["perm"] if kind != "strided" else [])
    pick = draw(st.sampled_from(opts))
    if pick == "contig":
        return CONTIG
    if pick == "window":
        px = 0 if kind == "planes" else draw(st.integers(0, 3))
        py = draw(st.integers(0, 2))
        return ("window", draw(st.integers(0, px)), draw(st.integers(0, py)), px, py)
    fixed = {"rows": 1, "planes": 2}.get(kind, 0)
    rest = list(draw(st.permutations(list(range(fixed, 4)))))
    return ("perm", tuple(list(range(fixed)) + rest))


@st.composite
def src(draw, ne, dtype="f32", layout="any", lo=-3.0, hi=3.0):
    if isinstance(dtype, (list, tuple)):
        dtype = draw(st.sampled_from(list(dtype)))
    return Src(values(draw(seeds), ne, dtype, lo, hi), dtype, draw(layouts(ne, layout)))


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def bcast_ne(draw, ne):
    """A shape whose dims divide ne's (ggml_can_repeat)."""
    return tuple(draw(st.sampled_from(_divisors(n))) for n in ne)


FLOATS = ("f32", "f16", "bf16")
STRATEGIES: dict = {}


def strategy(*names):
    def deco(fn):
        for n in names:
            STRATEGIES[n] = (lambda n=n: fn(n))
        return fn

    return deco


# --- movement ----------------------------------------------------------------------------------------------


@strategy("dup", "cont")
@st.composite
def _unary_copy(draw, op):
    return Case(op, [draw(src(draw(ne4()), ("f32", "f16", "i32")))])


@strategy("cpy")
@st.composite
def _cpy(draw, op):
    ne = draw(ne4())
    a = draw(src(ne, ("f32", "f16")))
    n = int(np.prod(ne))
    d0 = draw(st.sampled_from(_divisors(n)))
    b_ne = (d0, n // d0, 1, 1)
    return Case(op, [a, Src(values(draw(seeds), b_ne, "f32"), draw(st.sampled_from(["f32", "f16"])))])


@strategy("cast")
@st.composite
def _cast(draw, op):
    a = draw(src(draw(ne4()), ("f32", "f16", "i32")))
    return Case(op, [a], {"type": draw(st.sampled_from(["f32", "f16", "bf16"] + (["i32"] if a.dtype == "f32"
                                                                                     else [])))})


def _factor(draw, n: int, k: int) -> tuple:
    out = []
    for _ in range(k - 1):
        d = draw(st.sampled_from(_divisors(n)))
        out.append(d)
        n //= d
    return tuple(out + [n])


@strategy("cont_1d", "cont_2d", "cont_3d", "cont_4d", "reshape_1d", "reshape_2d", "reshape_3d", "reshape_4d")
@st.composite
def _reshape_nd(draw, op):
    k = int(op[-2])
    ne = draw(ne4())
    a = draw(src(ne, ("f32", "f16"), "any" if op.startswith("cont") else "contig"))
    new = _factor(draw, int(np.prod(ne)), k)
    return Case(op, [a], {f"ne{i}": v for i, v in enumerate(new)})


@strategy("reshape")
@st.composite
def _reshape(draw, op):
    ne = draw(ne4())
    new = _factor(draw, int(np.prod(ne)), 4)
    return Case(op, [draw(src(ne, "f32", "contig"))], {"b": np.zeros(tuple(reversed(new)), F32)})


@strategy("view_1d", "view_2d", "view_3d", "view_4d")
@st.composite
def _view(draw, op):
    k = int(op[-2])
    ne = draw(ne4())
    a = draw(src(ne, ("f32", "f16", "i32"), "contig"))
    esz = type_info(a.dtype)[2]
    total = int(np.prod(ne))
    vne = [draw(st.integers(1, 3)) for _ in range(k)]
    # strides (in elements) at least as large as the packed ones, then check the window fits
    strides = [1]
    for i in range(1, k):
        strides.append(strides[-1] * vne[i - 1] + draw(st.integers(0, 2)))
    span = 1 + sum((vne[i] - 1) * strides[i] for i in range(k))
    if span > total:
        vne, strides, span = [1] * k, list(range(1, k + 1)), 1
    off = draw(st.integers(0, total - span))
    p = {f"ne{i}": vne[i] for i in range(k)}
    p.update({f"nb{i}": strides[i] * esz for i in range(1, k)})
    p["offset"] = off * esz
    return Case(op, [a], p)


@strategy("permute")
@st.composite
def _permute(draw, op):
    axes = draw(st.permutations([0, 1, 2, 3]))
    return Case(op, [draw(src(draw(ne4()), ("f32", "i32")))], {f"axis{i}": axes[i] for i in range(4)})


@strategy("transpose")
@st.composite
def _transpose(draw, op):
    return Case(op, [draw(src(draw(ne4()), "f32"))])


@strategy("concat")
@st.composite
def _concat(draw, op):
    ne = draw(ne4())
    dim = draw(st.integers(0, 3))
    ne_b = list(ne)
    ne_b[dim] = draw(st.integers(1, 4))
    dt = draw(st.sampled_from(["f32", "f16"]))
    return Case(op, [draw(src(ne, dt)), draw(src(tuple(ne_b), dt))], {"dim": dim})


@strategy("get_rows")
@st.composite
def _get_rows(draw, op):
    ne = draw(ne4(max_side=5))
    dt = draw(st.sampled_from(["f32", "f16", "bf16", "i32"]))
    n_rows = draw(st.integers(1, 6))
    idx = Src(values(draw(seeds), (n_rows, ne[2], ne[3]), "i32", 0, ne[1] - 1), "i32")
    return Case(op, [draw(src(ne, dt)), idx])


@strategy("set_rows")
@st.composite
def _set_rows(draw, op):
    ne = draw(ne4(max_side=5))
    n_rows = draw(st.integers(1, ne[1]))
    c2, c3 = draw(st.sampled_from(_divisors(ne[2]))), draw(st.sampled_from(_divisors(ne[3])))
    rng = np.random.default_rng(draw(seeds))
    rows = np.stack([rng.permutation(ne[1])[:n_rows] for _ in range(c2 * c3)]).reshape(1, c3, c2, n_rows)
    b = draw(src((ne[0], n_rows, ne[2], ne[3]), ("f32", "f16"), "rows"))
    return Case(op, [draw(src(ne, ("f32", "f16"), "contig")), b, Src(rows.astype(np.int32), "i32")])


@strategy("repeat")
@st.composite
def _repeat(draw, op):
    ne = draw(ne4(max_side=4))
    reps = [draw(st.integers(1, 3)) for _ in range(4)]
    tgt = tuple(n * r for n, r in zip(ne, reps))
    return Case(op, [draw(src(ne, "f32"))], {"b": np.zeros(tuple(reversed(tgt)), F32)})


@strategy("repeat_4d")
@st.composite
def _repeat_4d(draw, op):
    ne = draw(ne4(max_side=4))
    reps = [draw(st.integers(1, 3)) for _ in range(4)]
    return Case(op, [draw(src(ne, "f32"))], {f"ne{i}": ne[i] * reps[i] for i in range(4)})


@strategy("pad")
@st.composite
def _pad(draw, op):
    return Case(op, [draw(src(draw(ne4()), "f32"))], {f"p{i}": draw(st.integers(0, 3)) for i in range(4)})


@strategy("pad_ext")
@st.composite
def _pad_ext(draw, op):
    names = ("lp0", "rp0", "lp1", "rp1", "lp2", "rp2", "lp3", "rp3")
    return Case(op, [draw(src(draw(ne4()), "f32"))], {n: draw(st.integers(0, 2)) for n in names})


# --- elementwise -------------------------------------------------------------------------------------------


@strategy("add", "sub", "mul", "div")
@st.composite
def _binary(draw, op):
    ne = draw(ne4())
    bne = draw(bcast_ne(ne))
    lo = 0.5 if op == "div" else -3.0
    return Case(op, [draw(src(ne, FLOATS)), draw(src(bne, FLOATS, lo=lo, hi=3.0))])


@strategy("add1")
@st.composite
def _add1(draw, op):
    return Case(op, [draw(src(draw(ne4()), ("f32", "f16"))), draw(src((1, 1, 1, 1), "f32"))])


@strategy("scale")
@st.composite
def _scale(draw, op):
    return Case(op, [draw(src(draw(ne4()), ("f32", "f16")))], {"s": draw(st.floats(-4, 4, width=32))})


@strategy("sqr", "sqrt")
@st.composite
def _sqr(draw, op):
    return Case(op, [draw(src(draw(ne4()), ("f32", "f16"), lo=0.0 if op == "sqrt" else -3.0))])


@strategy("clamp")
@st.composite
def _clamp(draw, op):
    lo = draw(st.floats(-2, 0, width=32))
    return Case(op, [draw(src(draw(ne4()), "f32"))], {"min": lo, "max": lo + draw(st.floats(0, 3, width=32))})


UNARY = ("gelu", "gelu_erf", "gelu_quick", "silu", "relu", "tanh", "sigmoid", "exp")


@strategy(*UNARY)
@st.composite
def _unary(draw, op):
    return Case(op, [draw(src(draw(ne4()), FLOATS, "rows", lo=-12.0, hi=12.0))])


@strategy("swiglu", "geglu")
@st.composite
def _glu(draw, op):
    ne = list(draw(ne4()))
    ne[0] *= 2
    return Case(op, [draw(src(tuple(ne), ("f32", "f16"), "rows"))], {"swapped": draw(st.booleans())})


@strategy("swiglu_split", "geglu_split")
@st.composite
def _glu_split(draw, op):
    ne = draw(ne4())
    return Case(op, [draw(src(ne, ("f32", "f16"), "rows")), draw(src(ne, ("f32", "f16"), "rows"))])


# --- reductions, norms, linear algebra, attention ---------------------------------------------------------


@strategy("sum_rows", "mean")
@st.composite
def _rows(draw, op):
    return Case(op, [draw(src(draw(ne4(max_side=8)), "f32"))])


@strategy("norm", "rms_norm")
@st.composite
def _norm(draw, op):
    eps = draw(st.sampled_from([1e-6, 1e-5, 0.1]))
    return Case(op, [draw(src(draw(ne4(max_side=8)), "f32", "any" if op == "norm" else "rows"))], {"eps": eps})


@strategy("norm_affine")
@st.composite
def _norm_affine(draw, op):
    ne = draw(ne4(max_side=8))
    rms = draw(st.booleans())
    a = draw(src(ne, "f32", "rows" if rms else "any"))
    w = draw(src((ne[0], 1, 1, 1), "f32", "contig"))
    b = draw(st.none() | src((ne[0], 1, 1, 1), "f32", "contig"))
    return Case(op, [a, w, b], {"eps": draw(st.sampled_from([1e-6, 1e-5, 0.1])), "rms": rms})


@strategy("add_act")
@st.composite
def _add_act(draw, op):
    ne = draw(ne4())
    return Case(op, [draw(src(ne, "f32", "rows")), draw(src((ne[0], 1, 1, 1), "f32", "contig"))],
                {"act": draw(st.sampled_from(["gelu_erf", "gelu_quick"]))})


@strategy("add_res")
@st.composite
def _add_res(draw, op):
    ne = draw(ne4())
    return Case(op, [draw(src(ne, "f32", "rows")), draw(src((ne[0], 1, 1, 1), "f32", "contig")),
                     draw(src(ne, "f32", "any"))])


@strategy("group_norm")
@st.composite
def _group_norm(draw, op):
    ne = draw(ne4())
    return Case(op, [draw(src(ne, "f32", "rows"))],
                {"n_groups": draw(st.integers(1, ne[2])), "eps": draw(st.sampled_from([1e-6, 1e-5, 0.1]))})


@strategy("argmax")
@st.composite
def _argmax(draw, op):
    ne = (draw(st.integers(1, 8)), draw(st.integers(1, 6)), 1, 1)
    s = draw(src(ne, "f32", "rows"))
    s.value = np.round(s.value)  # small integers: plenty of ties
    return Case(op, [s])


@strategy("mul_mat")
@st.composite
def _mul_mat(draw, op):
    k, m, n = draw(st.integers(1, 8)), draw(st.integers(1, 6)), draw(st.integers(1, 6))
    b2, b3 = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    a2, a3 = draw(st.sampled_from(_divisors(b2))), draw(st.sampled_from(_divisors(b3)))
    a = draw(src((k, m, a2, a3), FLOATS, "rows"))
    return Case(op, [a, draw(src((k, n, b2, b3), "f32", "rows"))])


@strategy("mul_mat_rows")
@st.composite
def _mul_mat_rows(draw, op):
    """a one matrix [k, m]; b packed f32 with rows of j*k floats; row numbers in [-1, b's rows of k): zero rows,
    repeats and any order."""
    k, m, j = draw(st.integers(1, 8)), draw(st.integers(1, 6)), draw(st.integers(1, 2))
    b_ne = (k * j, draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 2)))
    n_rows = int(np.prod(b_ne)) // k
    r_ne = (draw(st.integers(1, 6)), draw(st.integers(1, 3)), draw(st.integers(1, 2)), 1)
    rows = Src(values(draw(seeds), r_ne, "i32", -1, n_rows - 1), "i32")
    return Case(op, [draw(src((k, m, 1, 1), FLOATS, "rows")), draw(src(b_ne, "f32", "contig")), rows])


@strategy("soft_max_ext")
@st.composite
def _soft_max(draw, op):
    ne = draw(ne4(max_side=6))
    mask = None
    max_bias = 0.0
    if draw(st.booleans()):
        mne = (ne[0], ne[1] + draw(st.integers(0, 2)), draw(st.sampled_from(_divisors(ne[2]))),
               draw(st.sampled_from(_divisors(ne[3]))))
        mask = draw(src(mne, ("f16", "f32"), "contig"))
        max_bias = draw(st.sampled_from([0.0, 0.0, 8.0]))
    return Case(op, [draw(src(ne, "f32", "contig")), mask],
                {"scale": draw(st.sampled_from([0.125, 0.5, 1.0, 1.75])), "max_bias": max_bias})


@strategy("flash_attn_ext")
@st.composite
def _flash_attn(draw, op):
    dk, dv = draw(st.sampled_from([4, 8, 16])), draw(st.sampled_from([4, 8]))
    nq, nkv = draw(st.integers(1, 6)), draw(st.integers(1, 8))
    hkv, g, b = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 2))
    h = hkv * g
    kt = draw(st.sampled_from(["f16", "f32"]))
    q = draw(src((dk, nq, h, b), "f32", "rows"))
    k = draw(src((dk, nkv, hkv, b), kt, "rows"))
    v = draw(src((dv, nkv, hkv, b), kt, "rows"))
    mask, max_bias = None, 0.0
    if draw(st.booleans()):
        m = values(draw(seeds), (nkv, nq + draw(st.integers(0, 2)), draw(st.sampled_from(_divisors(h))),
                                 draw(st.sampled_from(_divisors(b)))), "f16")
        rng = np.random.default_rng(draw(seeds))
        m[rng.random(m.shape) < draw(st.sampled_from([0.0, 0.3, 1.0]))] = -np.inf
        mask = Src(m, "f16")
        max_bias = draw(st.sampled_from([0.0, 4.0]))
    return Case(op, [q, k, v, mask], {"scale": draw(st.sampled_from([0.125, 0.5, 1.0])), "max_bias": max_bias,
                                      "logit_softcap": draw(st.sampled_from([0.0, 0.0, 20.0]))})


# --- rope ----------------------------------------------------------------------------------------------------

ROPE_MODES = {"rope_ext": (0, 2), "rope_multi": (8, 24, 40)}


@strategy("rope_ext", "rope_multi")
@st.composite
def _rope(draw, op):
    mode = draw(st.sampled_from(ROPE_MODES[op]))
    half = draw(st.integers(1, 4))
    d = 2 * half * draw(st.integers(1, 2)) if mode != 24 else 4 * half
    n_dims = d // 2 if mode == 24 else 2 * draw(st.integers(1, d // 2))
    ne = (d, draw(side), draw(side), draw(st.integers(1, 2)))
    a = draw(src(ne, ("f32", "f16"), "rows"))
    n_pos = ne[2] * (4 if mode & 8 else 1)
    pos = Src(values(draw(seeds), (n_pos,), "i32", 0, 200), "i32")
    n_pairs = n_dims if mode == 24 else n_dims // 2
    c = draw(st.one_of(st.none(), src((n_pairs + draw(st.integers(0, 2)),), "f32", "contig", 0.5, 4.0)))
    yarn = draw(st.booleans())
    p = {"n_dims": n_dims, "mode": mode, "n_ctx_orig": draw(st.sampled_from([0, 512, 4096])),
         "freq_base": draw(st.sampled_from([100.0, 10000.0, 1e6])),
         "freq_scale": draw(st.sampled_from([1.0, 0.5, 0.25])) if yarn else 1.0,
         "ext_factor": draw(st.sampled_from([0.0, 1.0, 0.5])) if yarn else 0.0,
         "attn_factor": draw(st.sampled_from([1.0, 0.9])),
         "beta_fast": 32.0 if yarn else 0.0, "beta_slow": 1.0 if yarn else 0.0}
    if op == "rope_multi":
        secs = [0, 0, 0, 0]
        for _ in range(n_pairs):
            secs[draw(st.integers(0, 3))] += 1
        if not any(secs[:3]):
            secs[0] += 1
        p = {"n_dims": n_dims, "sections": tuple(secs), **{k: v for k, v in p.items() if k != "n_dims"}}
    return Case(op, [a, pos, c], p)


# --- convolution, pooling, resampling, SAM -------------------------------------------------------------------


@st.composite
def _conv_geometry(draw):
    kw, kh = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    s0, s1, d0, d1 = (draw(st.integers(1, 2)) for _ in range(4))
    p0, p1 = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    w = draw(st.integers(max(1, d0 * (kw - 1) + 1 - 2 * p0), 7))
    h = draw(st.integers(max(1, d1 * (kh - 1) + 1 - 2 * p1), 7))
    return kw, kh, w, h, dict(s0=s0, s1=s1, p0=p0, p1=p1, d0=d0, d1=d1)


@strategy("im2col")
@st.composite
def _im2col(draw, op):
    kw, kh, w, h, g = draw(_conv_geometry())
    ic, n = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    dst = draw(st.sampled_from(["f16", "f32"]))
    if draw(st.booleans()):
        kern = draw(src((kw, kh, ic, draw(st.integers(1, 3))), "f32", "contig"))
        data = draw(src((w, h, ic, n), "f32" if dst == "f32" else ("f32", "f16"), "planes"))
        return Case(op, [kern, data], {**g, "is_2D": True, "dst_type": dst})
    g.update(s1=0, p1=0, d1=0)
    kern = draw(src((kw, ic, draw(st.integers(1, 3))), "f32", "contig"))
    data = draw(src((w, ic, n), "f32" if dst == "f32" else ("f32", "f16"), "rows"))
    return Case(op, [kern, data], {**g, "is_2D": False, "dst_type": dst})


@strategy("conv_2d")
@st.composite
def _conv_2d(draw, op):
    kw, kh, w, h, g = draw(_conv_geometry())
    ic = draw(st.integers(1, 3))
    kern = draw(src((kw, kh, ic, draw(st.integers(1, 3))), FLOATS, "contig"))
    data = draw(src((w, h, ic, draw(st.integers(1, 2))), "f32" if kern.dtype == "bf16" else ("f32", "f16"),
                    "planes"))
    return Case(op, [kern, data], g)


@strategy("conv_2d_dw")
@st.composite
def _conv_2d_dw(draw, op):
    kw, kh, w, h, g = draw(_conv_geometry())
    c = draw(st.integers(1, 4))
    ca = draw(st.sampled_from(_divisors(c)))
    kern = draw(src((kw, kh, 1, ca), FLOATS, "contig"))
    data = draw(src((w, h, c, draw(st.integers(1, 2))), "f32" if kern.dtype == "bf16" else ("f32", "f16"),
                    "contig"))
    return Case(op, [kern, data], g)


@strategy("pool_2d")
@st.composite
def _pool_2d(draw, op):
    k0, k1, s0, s1 = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(
        st.integers(1, 3))
    p0, p1 = draw(st.sampled_from([0.0, 1.0, 1.5])), draw(st.sampled_from([0.0, 1.0]))
    ne = (draw(st.integers(k0, 8)), draw(st.integers(k1, 8)), draw(side), draw(st.integers(1, 2)))
    a = draw(src(ne, ("f32", "f16"), "strided"))
    return Case(op, [a], dict(op=draw(st.sampled_from([0, 1])), k0=k0, k1=k1, s0=s0, s1=s1, p0=p0, p1=p1))


@strategy("interpolate")
@st.composite
def _interpolate(draw, op):
    ne = draw(ne4(max_side=6))
    mode = draw(st.sampled_from([0, 1, 2, 1 | 256, 2 | 256, 0 | 256, 1 | 512, 2 | 512, 1 | 512 | 256]))
    tgt = (draw(st.integers(1, 9)), draw(st.integers(1, 9)), draw(st.integers(1, 6)), draw(st.integers(1, 3)))
    return Case(op, [draw(src(ne, "f32"))], dict(ne0=tgt[0], ne1=tgt[1], ne2=tgt[2], ne3=tgt[3], mode=mode))


@strategy("win_part")
@st.composite
def _win_part(draw, op):
    ne = (draw(side), draw(st.integers(1, 8)), draw(st.integers(1, 8)), 1)
    return Case(op, [draw(src(ne, "f32", "contig"))], {"w": draw(st.integers(1, 4))})


@strategy("win_unpart")
@st.composite
def _win_unpart(draw, op):
    w, w0, h0 = draw(st.integers(1, 4)), draw(st.integers(1, 8)), draw(st.integers(1, 8))
    n = -(-w0 // w) * -(-h0 // w)
    return Case(op, [draw(src((draw(side), w, w, n), "f32", "contig"))], {"w0": w0, "h0": h0, "w": w})


@strategy("get_rel_pos")
@st.composite
def _get_rel_pos(draw, op):
    k = draw(st.integers(1, 6))
    return Case(op, [draw(src((draw(side), 2 * k - 1), ("f16", "bf16"), "contig"))], {"qh": k, "kh": k})


@strategy("add_rel_pos")
@st.composite
def _add_rel_pos(draw, op):
    k, qw, qh, bh = draw(st.integers(1, 4)), draw(side), draw(side), draw(st.integers(1, 3))
    return Case(op, [draw(src((k * k, qw * qh, bh), "f32", "contig")), draw(src((k, qw, qh, bh), "f32", "contig")),
                     draw(src((k, qw, qh, bh), "f32", "contig"))])


@strategy("arange")
@st.composite
def _arange(draw, op):
    start = draw(st.floats(-50, 50, width=32))
    step = draw(st.sampled_from([0.1, 0.5, 1.0, 3.3, 7.0]))
    return Case(op, [], {"start": start, "stop": float(np.float32(start + draw(st.floats(0.5, 40)))),
                         "step": step})


# --- fused ops (npggml.ops.fast) -------------------------------------------------------------------------------


@strategy("sam_rel_attn")
@st.composite
def _sam_rel_attn(draw, op):
    """q, k [D, N, H, B], v [Nk, D, H, B] (transposed; unit-stride rows, or columns as the SAM graph's v after
    `elide_copies`), rel_w [W, 1, Nq, H*B], rel_h [1, Hh, Nq, H*B]."""
    d, nq, h, b = draw(st.integers(1, 8)), draw(side), draw(st.integers(1, 3)), draw(st.integers(1, 2))
    w, hh = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    nk = w * hh
    cols = ("perm", (1, 0, 2, 3))
    v = draw(st.one_of(src((nk, d, h, b), "f32", "rows"),
                       seeds.map(lambda seed: Src(values(seed, (nk, d, h, b), "f32"), "f32", cols))))
    return Case(op, [draw(src((d, nq, h, b), "f32", "rows")), draw(src((d, nk, h, b), "f32", "rows")),
                     v, draw(src((w, 1, nq, h * b), "f32", "contig")),
                     draw(src((1, hh, nq, h * b), "f32", "contig"))],
                {"scale": draw(st.sampled_from([0.125, 0.5, 1.0]))})


@strategy("sam_rel_attn_rows")
@st.composite
def _sam_rel_attn_rows(draw, op):
    """`sam_rel_attn`'s sources and token row numbers in [-1, B*Nq) (rows of the attention's heads side by side):
    zero rows, repeats, any order, queries that no row picks."""
    case = draw(_sam_rel_attn(op))
    B, _, Nq, _ = case.srcs[0].value.shape  # NumPy order (B, H, Nq, D)
    r_ne = (draw(st.integers(1, 6)), draw(st.integers(1, 3)), draw(st.integers(1, 2)), 1)
    rows = Src(values(draw(seeds), r_ne, "i32", -1, B * Nq - 1), "i32")
    return Case(op, [*case.srcs, rows], case.params)


@strategy("attn")
@st.composite
def _attn(draw, op):
    """q [D, Nq, H, B], k [D, Nk, Hk, Bk] and v [Nk, Dv, Hk, Bk] (transposed; unit-stride rows, or columns as
    after `elide_copies`) with H/Hk query heads a k and v head and B/Bk batch entries a k and v entry, a mask
    [Nk, >= Nq, a divisor of H, a divisor of B] of f16 or f32 with some -inf, or none."""
    d, dv, nq, nk = draw(st.integers(1, 8)), draw(st.integers(1, 6)), draw(side), draw(side)
    hk, bk = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    h, b = hk * draw(st.integers(1, 3)), bk * draw(st.integers(1, 2))
    cols = ("perm", (1, 0, 2, 3))
    v = draw(st.one_of(src((nk, dv, hk, bk), "f32", "rows"),
                       seeds.map(lambda seed: Src(values(seed, (nk, dv, hk, bk), "f32"), "f32", cols))))
    mask = None
    if draw(st.booleans()):
        m = values(draw(seeds), (nk, nq + draw(st.integers(0, 2)), draw(st.sampled_from(_divisors(h))),
                                 draw(st.sampled_from(_divisors(b)))), "f32")
        rng = np.random.default_rng(draw(seeds))
        m[rng.random(m.shape) < draw(st.sampled_from([0.0, 0.3, 1.0]))] = -np.inf
        dtype = draw(st.sampled_from(["f16", "f32"]))
        mask = Src(m.astype(np.float16 if dtype == "f16" else np.float32), dtype)
    return Case(op, [draw(src((d, nq, h, b), "f32", "rows")), draw(src((d, nk, hk, bk), "f32", "rows")), v, mask],
                {"scale": draw(st.sampled_from([0.125, 0.5, 1.0]))})


@strategy("sam_rel_pos")
@st.composite
def _sam_rel_pos(draw, op):
    """q [D, W*R, H, B] (unit-stride rows; a window or a permute of a larger buffer, as SAM's queries are read
    from the qkv product), a table [D, L] of f32, f16 or bf16 rows, row numbers idx [S, S] in [0, L), the grid's
    columns (axis 0, S = W) or rows (axis 1, S = R)."""
    d, w, r, h, b = (draw(st.integers(1, n)) for n in (8, 5, 5, 3, 2))
    axis = draw(st.sampled_from([0, 1]))
    s, n_rows = (w, r)[axis], draw(st.integers(1, 9))
    idx = Src(values(draw(seeds), (s, s), "i32", 0, n_rows - 1), "i32")
    return Case(op, [draw(src((d, w * r, h, b), "f32", "rows")), draw(src((d, n_rows), ("f32", "f16", "bf16"),
                                                                          "contig")), idx],
                {"width": w, "axis": axis})
