"""Every fast kernel against its op's NumPy reference kernel, on the random cases of `tests/strategies.py`
(non-contiguous layouts included: permuted and windowed sources), under both numerics.

The list of ops comes from the registry, so a new `.fast` is tested as soon as it is attached (and must have a
strategy). Equality is bitwise where the fast kernel performs the reference's float operations in the same order
(copies, broadcast arithmetic, table lookups, ggml's SIMD softmax, RoPE, im2col, erf GELU, and every product under
ggml numerics, which both kernels compute through one routine: `ops.linalg.ggml_matmul`); elsewhere (BLAS
blocking, libm vs NumPy SIMD transcendentals, double sums in another order) the difference must stay within 1e-5
of the result's largest magnitude.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import STRATEGIES, build_case

from npggml.graph.graph import Graph
from npggml.graph.interp import Interpreter
from npggml.ops import registry

FAST_OPS = sorted(n for n, d in registry.all_ops().items() if d.fast is not None)

BITWISE = {"add", "sub", "mul", "div", "cont", "cont_1d", "cont_2d", "cont_3d", "cont_4d", "dup", "cpy", "concat",
           "repeat", "repeat_4d", "pad", "pad_ext", "im2col", "gelu_erf", "rope_ext", "add_res"}
BITWISE_GGML = {"gelu", "gelu_quick", "soft_max_ext", "geglu", "geglu_split", "mul_mat", "mul_mat_rows",
                "sam_rel_attn", "sam_rel_attn_rows", "sam_rel_pos", "attn"}
RTOL = 1e-5

_ran_fast: dict[tuple[str, str], int] = {}


def test_fast_ops_found():
    expected = {"mul_mat", "soft_max_ext", "norm", "rms_norm", "gelu", "gelu_erf", "gelu_quick", "silu",
                "swiglu_split", "add", "mul", "cont", "concat", "rope_ext", "im2col", "sam_rel_attn",
                "norm_affine", "add_act", "add_res", "mul_mat_rows", "sam_rel_pos", "attn", "sam_rel_attn_rows"}
    assert expected <= set(FAST_OPS)


@pytest.mark.parametrize("op", FAST_OPS)
def test_every_fast_kernel_has_a_strategy(op):
    assert op in STRATEGIES, f"{op} has a fast kernel but no strategy in tests/strategies.py"


def _compare(op: str, numerics: str, fast: np.ndarray, ref: np.ndarray, case) -> None:
    assert fast.shape == ref.shape and fast.dtype == ref.dtype
    if op in BITWISE or (numerics == "ggml" and op in BITWISE_GGML):
        np.testing.assert_array_equal(fast, ref, err_msg=repr(case))
        return
    f, r = fast.astype(np.float64), ref.astype(np.float64)
    assert np.array_equal(np.isnan(f), np.isnan(r)), repr(case)
    ok = ~np.isnan(r)
    scale = np.abs(r[ok]).max(initial=0.0)
    err = np.abs(f[ok] - r[ok]).max(initial=0.0)
    assert err <= RTOL * scale, f"{case}: max |fast - ref| = {err:.3g} > {RTOL} * {scale:.3g}"


def _run_both(case, numerics: str):
    """A case's node and its values with the reference and the fast kernels, and whether the fast one ran."""
    node, inputs = build_case(case)
    graph = Graph(node)
    (ref,) = Interpreter(graph, numerics=numerics, fast=False).run(inputs)
    it = Interpreter(graph, numerics=numerics, fast=True)
    (fast,) = it.run(inputs)
    return node, ref, fast, it.kernel_used[graph.index[id(node)]] == "fast"


def _check_case(op: str, numerics: str, case):
    """Run a case with the reference and the fast kernels, compare; returns (node, whether the fast one ran)."""
    node, ref, fast, used_fast = _run_both(case, numerics)
    _compare(op, numerics, fast, ref, case)
    return node, used_fast


@pytest.mark.parametrize("numerics", ["ggml", "exact"])
@pytest.mark.parametrize("op", [o for o in FAST_OPS if o in STRATEGIES])
def test_fast_equals_reference(op, numerics):
    @settings(max_examples=25)
    @given(STRATEGIES[op]())
    def check(case):
        if _check_case(op, numerics, case)[1]:
            _ran_fast[(op, numerics)] = _ran_fast.get((op, numerics), 0) + 1

    check()
    # the fast kernel may decline some types (f16/bf16 results, ...), but not every case
    assert _ran_fast.get((op, numerics), 0) > 0, f"{op}: the fast kernel declined every case"


def test_gelu_erf_exact_bitwise_on_many_values():
    """The vectorised erf (Chebyshev + libm near rounding boundaries) gives the reference's bits everywhere."""
    from npggml.ops import elementwise
    from npggml.ops.registry import numerics

    rng = np.random.default_rng(7)
    parts = [rng.standard_normal(600_000) * s for s in (0.3, 1.0, 3.0, 8.0)]
    parts.append(rng.uniform(-6, 6, 400_000))
    parts.append(np.ldexp(rng.uniform(0.5, 1, 100_000), rng.integers(-149, 0, 100_000)) * rng.choice([-1, 1],
                                                                                                     100_000))
    edges = [0.0, -0.0, 1e-45, -1e-45, 1.1754942e-38, 5.656854, -5.656854, 5.6568546, 5.66, -5.66, 1e30, -1e30,
             np.inf, -np.inf, np.nan]
    x = np.concatenate([np.array(edges)] + parts).astype(np.float32)  # edges first: the tail is cut to rows
    d = registry.get("gelu_erf")
    for width in (64, 61):  # rows of whole 8-flag words, and rows with a tail of 5
        xw = x[: x.size // width * width].reshape(1, 1, -1, width)
        with numerics("exact"):
            with np.errstate(invalid="ignore"):
                ref = elementwise._gelu_erf(xw)
            out = np.empty_like(xw)
            assert d.fast(out, None, xw) is None
        np.testing.assert_array_equal(out, ref)


def _on_each(fn):
    """A compiled loop of the Numba helper fn over a float32 array."""
    import numba

    @numba.njit
    def run(x):
        out = np.empty_like(x)
        for i in range(x.shape[0]):
            out[i] = fn(x[i])
        return out

    return run


def _exp_grid(hi: float) -> np.ndarray:
    """A million float32 from just above -86.5 up to hi, and 10,000 negative ones from -10 to -1e-30."""
    return np.concatenate([np.linspace(np.nextafter(np.float32(-86.5), 0), hi, 1_000_003, dtype=np.float32),
                           np.float32(-1) * np.logspace(-30, 1, 10_000, dtype=np.float32)])


def _assert_ulps(x: np.ndarray, got: np.ndarray, most: float) -> None:
    exact = np.exp(x.astype(np.float64))
    ulps = np.abs(got - exact) / np.spacing(exact.astype(np.float32)).astype(np.float64)
    assert ulps.max() <= most, f"{ulps.max():.3f} ulp at x = {x[ulps.argmax()]!r}"


def test_exp32_accuracy_and_special_values():
    """The reference-mode attention's float32 exp: within 1 ulp of the exact value on its whole finite range
    (NumPy's own float32 exp is 2.4 ulp off here), zero from -86.5 down, inf from overflow, NaN kept."""
    from npggml.ops.fast._common import exp32

    run = _on_each(exp32)
    x = _exp_grid(88.72)
    _assert_ulps(x, run(x), 1.0)
    special = np.array([0.0, -0.0, -86.5, -200.0, -np.inf, 88.73, 1e30, np.inf, np.nan], np.float32)
    np.testing.assert_array_equal(run(special), [1, 1, 0, 0, 0, np.inf, np.inf, np.inf, np.nan])


def test_exp32_neg_softmax_domain():
    """The softmax passes' exp of x - max <= 0: within 1 ulp of exp on [-86.5, 0], the bits of `exp32` wherever
    its 2**(n-1) is normal, zero from -86.5 down (-inf included), NaN kept."""
    from npggml.ops.fast._common import exp32, exp32_neg

    run = _on_each(exp32_neg)
    x = _exp_grid(0)
    out = run(x)
    _assert_ulps(x, out, 1.0)
    normal = x > -86.3
    np.testing.assert_array_equal(out[normal], _on_each(exp32)(x)[normal])
    special = np.array([0.0, -0.0, -86.5, -200.0, -np.inf, np.nan], np.float32)
    np.testing.assert_array_equal(run(special), [1, 1, 0, 0, 0, np.nan])


def test_exp32_lean_softmax_domain():
    """The SAM attention's exp of x - shift: within 1.2 ulp of exp on [-86.5, 88], exp(-86.5) from there down
    (-inf included: 2.7e-38 of a probability whose largest is 1), exp(88) from there up (+inf included; never a
    wrapped-around power of two), NaN kept."""
    from npggml.ops.fast._common import exp32_lean

    run = _on_each(exp32_lean)
    x = _exp_grid(88)
    _assert_ulps(x, run(x), 1.2)
    got = run(np.array([0.0, -0.0, -86.5, -200.0, -np.inf, np.nan], np.float32))
    assert got[0] == got[1] == 1 and np.isnan(got[5])
    np.testing.assert_allclose(got[2:5], np.exp(-86.5), rtol=1e-6)
    above = np.array([np.nextafter(np.float32(88), np.float32(99)), 88.7, 89.0, 95.0, 200.0, 1e30, np.inf],
                     np.float32)
    np.testing.assert_allclose(run(above), np.exp(88.0), rtol=1e-6)


def test_v_expf_bitwise_with_reference():
    """ggml's SIMD exp as the fast kernels inline it (no table, saturation by selects) gives the reference
    emulation's bits on its whole range, at the saturation edges and for the special values."""
    import numba

    from npggml.ops._libm import v_expf as ref_v_expf
    from npggml.ops.fast._common import v_expf

    @numba.njit
    def run(x, out):
        for i in range(x.shape[0]):
            out[i] = v_expf(x[i])

    rng = np.random.default_rng(3)
    bits = rng.integers(0, 2**32, 400_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    edges = np.float32(np.log(2)) * np.array([-192, 192], np.float32)
    x = np.concatenate([np.linspace(-140, 140, 1_000_001, dtype=np.float32), bits,
                        np.concatenate([np.nextafter(edges, -np.inf), edges, np.nextafter(edges, np.inf)]),
                        np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 3e38, -3e38], np.float32)])
    out = np.empty_like(x)
    run(x, out)
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(out, ref_v_expf(x))


def test_fma_rounds_once_where_a_double_emulation_does_not():
    """ggml's SIMD kernels round a*b + c once. a*b = 1 + 2**-24 exactly and c = 2**-70: the exact sum lies just
    above the float32 midpoint between 1 and 1 + 2**-23, so it rounds up; the same sum rounded to double first
    loses c and lands on the midpoint, which rounds to even (1). The NumPy ufunc and the kernels' helper give the
    single rounding, and refuse float64 operands rather than round them silently."""
    import numba
    from numba.core.errors import TypingError

    from npggml.ops._libm import fma32 as ref_fma
    from npggml.ops._libm import fmaf

    a, b, c = (np.float32(v) for v in (12763648 * 2.0**-23, 11026432 * 2.0**-24, 2.0**-70))
    assert float(a) * float(b) == 1 + 2.0**-24
    assert np.float32(float(a) * float(b) + float(c)) == 1  # the double emulation's answer
    up = np.float32(1 + 2.0**-23)
    assert ref_fma(a, b, c) == up
    np.testing.assert_array_equal(ref_fma(np.full(3, a), b, np.array([c, 0, -c], np.float32)), [up, 1, 1])
    assert numba.njit(lambda x, y, z: fmaf(x, y, z))(a, b, c) == up
    with pytest.raises(TypingError):
        numba.njit(lambda x, y, z: fmaf(x, y, z))(1.5, a, c)
    with pytest.raises(TypeError):
        ref_fma(np.ones(2), a, c)


def _sam_case(nq: int, w: int, hh: int, heads: int, batch: int, strided: bool):
    """A sam_rel_attn case with head dim 5: q and k windows of larger buffers and v transposed (as the SAM graph
    reads them after `elide_copies`) when `strided`, else packed."""
    from strategies import CONTIG, Case, Src, values

    d, nk = 5, w * hh
    win, cols = ("window", 1, 1, 3, 2), ("perm", (1, 0, 2, 3))
    lay = (win, win, cols) if strided else (CONTIG, CONTIG, CONTIG)
    shapes = [(d, nq, heads, batch), (d, nk, heads, batch), (nk, d, heads, batch)]
    srcs = [Src(values(i, ne, "f32"), "f32", lo) for i, (ne, lo) in enumerate(zip(shapes, lay))]
    srcs += [Src(values(3, (w, 1, nq, heads * batch), "f32"), "f32", CONTIG),
             Src(values(4, (1, hh, nq, heads * batch), "f32"), "f32", CONTIG)]
    return Case("sam_rel_attn", srcs, {"scale": 0.125})


@pytest.mark.parametrize("strided", [True, False])
@pytest.mark.parametrize("path,nq,w,hh,heads,batch", [
    ("head groups", 2, 2, 2, 3, 2),  # 8 scores a head: 3 heads a task, 2 tasks
    ("query blocks", 6, 2, 4, 2, 1),  # 48 scores a head: 2 blocks of 3 query rows, k and v read as views
    ("dense heads", 6, 4, 4, 2, 2),  # 96 scores a head: 6 blocks of 1 row, k and v copied dense per head
])
def test_sam_rel_attn_task_paths(monkeypatch, path, nq, w, hh, heads, batch, strided):
    """With tasks cut to 24 scores (and dense copies from 3 tasks a head on) each of the fast kernel's task shapes
    agrees with the reference, on packed operands and on the strided ones the SAM graph gives it."""
    from npggml.ops.fast import sam_attn

    monkeypatch.setattr(sam_attn, "BLOCK_ELEMENTS", 24)
    monkeypatch.setattr(sam_attn, "DENSE_MIN_TASKS", 3)
    g, qb = sam_attn.plan(heads, nq, w * hh)
    blocks = -(-nq // qb)
    assert path == ("head groups" if 1 < g < heads * batch else "dense heads" if blocks >= 3
                    else "query blocks" if blocks > 1 else "other")
    _, used_fast = _check_case("sam_rel_attn", "exact", _sam_case(nq, w, hh, heads, batch, strided))
    assert used_fast


@pytest.mark.parametrize("path,nq,nk,heads,kv_heads,batch", [
    ("query blocks", 6, 5, 6, 2, 2),  # 30 scores a head: blocks of 3 query rows, 3 query heads a k and v
    ("head runs", 4, 3, 8, 2, 2),  # 12 scores a head: runs of 2 of the 4 query heads that share a k and v
    ("head runs", 3, 4, 6, 6, 2),  # no grouped-query attention: runs of 2 heads, each with its own k and v
])
def test_attn_task_paths(monkeypatch, path, nq, nk, heads, kv_heads, batch):
    """With tasks cut to 24 scores, each of the fast kernel's task shapes agrees with the reference, on strided
    q and k (windows of larger buffers), v transposed and a masked key or two a query."""
    from strategies import CONTIG, Case, Src, values

    from npggml.ops.fast import attn, sam_attn

    monkeypatch.setattr(sam_attn, "BLOCK_ELEMENTS", 24)  # attn's tasks are cut by sam_attn's plan
    g, qb = attn.plan(heads // kv_heads if kv_heads < heads else heads, heads * batch, nq, nk)
    assert path == ("query blocks" if qb < nq else "head runs" if g > 1 else "other")
    d, win, cols = 5, ("window", 1, 1, 3, 2), ("perm", (1, 0, 2, 3))
    mask = values(9, (nk, nq + 1, 1, 1), "f32")
    mask[np.random.default_rng(9).random(mask.shape) < 0.25] = -np.inf
    srcs = [Src(values(0, (d, nq, heads, batch), "f32"), "f32", win),
            Src(values(1, (d, nk, kv_heads, batch), "f32"), "f32", win),
            Src(values(2, (nk, 4, kv_heads, batch), "f32"), "f32", cols), Src(mask, "f32", CONTIG)]
    _, used_fast = _check_case("attn", "exact", Case("attn", srcs, {"scale": 0.5}))
    assert used_fast


def test_attn_skips_the_keys_a_mask_hides(monkeypatch):
    """v2's hybrid mask (-1e9 where a query may not look): image queries need the image keys only, query i the
    keys up to i. The fast kernel's blocks of query rows compute only the keys they need and agree with the
    reference."""
    from strategies import CONTIG, Case, Src, values

    from npggml.models.deepseekocr2 import hybrid_mask
    from npggml.ops.fast import attn

    monkeypatch.setattr(attn, "REACH_ROWS", 2)
    n_img, s, d, heads, kv_heads, batch = 5, 10, 5, 4, 2, 2
    mask = hybrid_mask(n_img, s - n_img)[None, None]
    q, k, v = (values(i, ne, "f32") for i, ne in enumerate([(d, s, heads, batch), (d, s, kv_heads, batch),
                                                               (s, 4, kv_heads, batch)]))
    reach = attn.key_reach(mask, attn._masks(mask, s), q, k, v, 0.5)
    np.testing.assert_array_equal(reach, [[5, 5, 5, 5, 5, 6, 7, 8, 9, 10]])
    assert attn.query_blocks(reach, np.array([0, 0]), s, s, 4) == [(0, 4, 5), (4, 6, 6), (6, 8, 8), (8, 10, 10)]
    srcs = [Src(q, "f32", ("window", 1, 1, 3, 2)), Src(k, "f32", CONTIG), Src(v, "f32", ("perm", (1, 0, 2, 3))),
            Src(mask, "f32", CONTIG)]
    _, used_fast = _check_case("attn", "exact", Case("attn", srcs, {"scale": 0.5}))
    assert used_fast


@pytest.mark.parametrize("case", ["no mask", "scores too large", "value not finite", "mask NaN", "all masked"])
def test_attn_needs_every_key_when_a_skip_is_not_exact(case):
    """Keys are skipped only when their reference weights are provably 0: not without a mask, not when a score may
    be large enough to reach past the mask, not with a value that 0 * v would make NaN, a NaN mask value or a
    query whose keys are all masked."""
    from npggml.models.deepseekocr2 import hybrid_mask
    from npggml.ops.fast import attn

    rng = np.random.default_rng(0)
    q, k = (rng.standard_normal((1, 2, 8, 4)).astype(np.float32) for _ in range(2))
    v = rng.standard_normal((1, 2, 4, 8)).astype(np.float32)
    mask = hybrid_mask(4, 4)[None, None]
    assert attn.key_reach(mask, attn._masks(mask, 8), q, k, v, 0.5) is not None
    if case == "no mask":
        mask = None
    elif case == "scores too large":
        q = q * np.float32(1e5)
        k = k * np.float32(1e5)
    elif case == "value not finite":
        v[0, 0, 1, 7] = np.inf
    elif case == "mask NaN":
        mask[0, 0, 2, 3] = np.nan
    else:
        mask[0, 0, 6] = -np.inf
    assert attn.key_reach(mask, attn._masks(mask, 8), q, k, v, 0.5) is None


def test_sam_rel_attn_dense_keeps_values_and_unit_axis():
    """`dense` returns a dense view as is and copies a strided one into the order of its unit-stride axis: k's rows
    (a window of the qkv product) C-contiguous, v's columns (v read transposed) F-contiguous."""
    from npggml.ops.fast.sam_attn import dense

    qkv = np.arange(7 * 12, dtype=np.float32).reshape(7, 12)
    for x, order in ((qkv[:, 2:6], "C"), (qkv[:, 2:6].T, "F"), (qkv, "C"), (qkv.T, "F")):
        d = dense(x)
        np.testing.assert_array_equal(d, x)
        assert d.flags.c_contiguous if order == "C" else d.flags.f_contiguous
        assert np.shares_memory(d, qkv) == x.flags.forc  # copied exactly when strided


@pytest.mark.parametrize("op", ["sam_rel_attn", "sam_rel_attn_rows"])
def test_sam_rel_attn_small_tasks_random(monkeypatch, op):
    """The same cut on the strategy's random shapes and layouts (and row numbers): every task shape agrees with
    the reference."""
    from npggml.ops.fast import sam_attn

    monkeypatch.setattr(sam_attn, "BLOCK_ELEMENTS", 24)
    monkeypatch.setattr(sam_attn, "DENSE_MIN_TASKS", 3)

    @settings(max_examples=40)
    @given(STRATEGIES[op]())
    def check(case):
        _check_case(op, "exact", case)

    check()


@pytest.mark.parametrize("strided", [True, False])
def test_sam_rel_attn_non_finite_scores(strided):
    """NaN and infinite scores give NaN exactly where the reference's softmax does (a NaN in a query, a key of
    +inf scores, a query whose biased scores are all -inf); -inf scores among finite ones weigh nothing (to float
    rounding: the fast exponential gives them 2.7e-38)."""
    case = _sam_case(6, 4, 4, 2, 2, strided)
    q, k, _, rel_w, rel_h = (s.value for s in case.srcs)  # NumPy order: q (B, H, Nq, D), rel_w (H*B, Nq, 1, W)
    q[0, 0, 1, 2] = np.nan  # query 1 of head 0: all its scores NaN
    k[1, 1, 5, 0] = np.inf  # key 5 of batch 1, head 1: +-inf scores (by the sign of each query's q[0])
    rel_w[1, 2] = -np.inf  # query 2 of batch 0, head 1: every biased score -inf
    rel_h[2, 4, 1] = -np.inf  # query 4 of batch 1, head 0: the keys of row kh = 1 -inf, the others finite
    _, used_fast = _check_case("sam_rel_attn", "exact", case)
    assert used_fast


@pytest.mark.parametrize("lift", [0.0, 20.0, 100.0])
def test_sam_rel_attn_softmax_shift_from_a_sample(lift):
    """The softmax's shift is the max over every 8th key row (here row kh = 0 of 4). Keys outside the sample that
    rise `lift` above it: 20 gives one query a sum of ~e^20 > SUM_LIMIT, whose exponentials are divided by it;
    100 takes them past exp(88), where `exp32_lean` clamps, so the pass says so and the same scores with step 1
    give the exact softmax. Each way the probabilities are the reference's, and the op's value too."""
    from npggml.ops.fast import sam_attn

    assert sam_attn.MAX_SAMPLE_STEP == 8
    rng = np.random.default_rng(5)
    w, hh, qb = 4, 4, 16
    sT = rng.standard_normal((1, w * hh, qb), dtype=np.float32)  # key-major scores of 16 queries
    rwT = rng.standard_normal((1, w, qb), dtype=np.float32)
    rhT = rng.standard_normal((1, hh, qb), dtype=np.float32)
    rhT[0, 2, 3] += lift  # query 3: the 4 keys of grid row 2, outside the sample
    biased = sT[0] * np.float32(0.125) + (rwT[0][None, :, :] + rhT[0][:, None, :]).reshape(w * hh, qb)
    expected = np.exp(biased - biased.max(0)) / np.exp(biased - biased.max(0)).sum(0)
    colmax, part, acc = np.empty(qb, np.float32), np.empty(qb, np.float32), np.empty((1, qb))
    got = sT.copy()
    done = sam_attn._softmax_cols(got, rwT, rhT, np.float32(0.125), colmax, acc, part, 8)
    assert done == (lift < 88)
    if not done:
        assert acc[0, 3] >= sam_attn.SUM_OVERFLOW
        got = sT.copy()
        assert sam_attn._softmax_cols(got, rwT, rhT, np.float32(0.125), colmax, acc, part, 1)
    assert (acc[0, 3] == 1.0) == (lift == 20.0)  # divided out
    np.testing.assert_allclose(got[0] / acc[0].astype(np.float32), expected, rtol=2e-6, atol=1e-30)

    case = _sam_case(6, 4, 4, 2, 2, strided=True)
    case.srcs[4].value[1, 3, 2] += lift  # rel_h (H*B, Nq, Hh, 1): query 3 of batch 0, head 1, key row 2
    _, used_fast = _check_case("sam_rel_attn", "exact", case)
    assert used_fast


@pytest.mark.parametrize("bad", [-1, 7])
@pytest.mark.parametrize("fast", [True, False])
def test_sam_rel_pos_row_number_out_of_range(fast, bad):
    """A table row number outside the table (7 rows): the fast kernel declines and the reference kernel's error
    names the range, with the fast kernels on or off."""
    from strategies import Case, Src, values

    from npggml.errors import KernelError

    idx = values(2, (4, 4), "i32", 0, 6)
    idx[1, 2] = bad
    srcs = [Src(values(0, (5, 12, 2, 1), "f32"), "f32"), Src(values(1, (5, 7), "f32"), "f32"), Src(idx, "i32")]
    node, inputs = build_case(Case("sam_rel_pos", srcs, {"width": 4, "axis": 0}))
    with pytest.raises(KernelError, match=r"row index out of range \[0, 7\)"):
        Interpreter(Graph(node), numerics="exact", fast=fast).run(inputs)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 3000), min_chunk=st.integers(1, 700))
def test_run_split_covers_every_index_once(n, min_chunk):
    """The pool's shared-cursor scheduler: disjoint chunks that cover [0, n) exactly once, none below
    `min_chunk` except the last."""
    import threading

    from npggml.ops.fast import _blas

    seen = np.zeros(n, np.int64)
    spans = []
    lock = threading.Lock()

    def fn(lo, hi):
        assert 0 <= lo < hi <= n
        with lock:
            seen[lo:hi] += 1
            spans.append((lo, hi))

    _blas.run_split(fn, n, min_chunk)
    assert (seen == 1).all()
    assert all(hi - lo >= min_chunk for lo, hi in spans if hi != n)
    if n == 0:
        assert not spans


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 3000), least=st.integers(1, 700))
def test_run_parts_one_part_a_thread(n, least):
    """`even_cuts` cuts [0, n) into one part a thread, sizes within one of each other, fewer parts only when a part
    would have under `least` items; `run_parts` calls fn once on each part."""
    import threading

    from npggml.ops.fast import _blas

    cuts = _blas.even_cuts(n, least)
    sizes = np.diff(cuts)
    assert cuts[0] == 0 and cuts[-1] == n and (sizes >= 0).all() and sizes.max() - sizes.min() <= 1
    assert len(sizes) == max(1, min(_blas.workers(), n // least))
    spans, lock = [], threading.Lock()

    def fn(lo, hi):
        with lock:
            spans.append((lo, hi))

    _blas.run_parts(fn, cuts)
    assert sorted(spans) == list(zip(cuts[:-1], cuts[1:]))


def test_mul_mat_rows_in_parts_of_equal_kept_rows():
    """`mul_mat_rows` with rows enough for one part a thread, cut where the parts hold as many kept rows: padding
    rows scattered and a run of them at the end (the bottom windows), repeats, any order: the reference's value."""
    from strategies import Case, Src, values

    idx = (np.arange(150) * 37 % 100).astype(np.int32)
    idx[::7], idx[110:] = -1, -1
    a, b = (Src(values(seed, ne, "f32"), "f32") for seed, ne in ((0, (8, 5, 1, 1)), (1, (8, 100, 1, 1))))
    case = Case("mul_mat_rows", [a, b, Src(idx, "i32")])
    _, used_fast = _check_case("mul_mat_rows", "exact", case)
    assert used_fast


@pytest.mark.parametrize("side,grid", [(64, 40), (64, 48), (16, 10), (16, 24)])
def test_antialiased_resize_of_a_position_table(side, grid):
    """The position-table resize of the reference-mode graphs (SAM's 64 x 64 table to a tile's grid, CLIP's 16 x 16
    one): the fast kernel sums the filter's taps only, and gives the dense float64 filter's float32 values."""
    from strategies import Case, Src, values

    from npggml.ops.interpolate import ANTIALIAS, BICUBIC

    a = Src(values(side, (side, side, 24, 1), "f32"), "f32")
    mode = BICUBIC | ANTIALIAS
    case = Case("interpolate", [a], dict(ne0=grid, ne1=grid, ne2=24, ne3=1, mode=mode))
    _, ref, fast, used_fast = _run_both(case, "exact")
    assert used_fast
    np.testing.assert_array_max_ulp(fast, ref, maxulp=1)


@pytest.mark.parametrize("m,k,n", [(37, 5, 301), (301, 5, 37), (1023, 64, 96), (96, 64, 1023)])
def test_split_product_equals_one_product(m, k, n):
    """`_blas.split`: a product cut over the pool (by rows of x when x is the larger operand, else by columns of
    y; chunk counts that do not divide the sizes) writes every element once, with the product's value."""
    from npggml.ops.fast import _blas

    rng = np.random.default_rng(m * n)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(np.float32)
    out = np.full((m, n), np.nan, np.float32)
    _blas.use_own_threads()
    _blas.split(x, w.T, out)
    np.testing.assert_allclose(out, x @ w.T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("numerics_name", ["exact", "ggml"])
@pytest.mark.parametrize("op", ["gelu_quick", "gelu_erf", "gelu", "silu", "soft_max_ext", "soft_max_ext+mask",
                                "swiglu_split", "swiglu_split+gate", "add_act+gelu_erf", "add_act+gelu_quick",
                                "rms_norm", "add_res"])
def test_in_place_equals_out_of_place(op, numerics_name):
    """The graph allocator runs these ops in place (dst is the source's buffer); the kernels take another loop
    there (one array, so that it vectorises) which must give the same bits."""
    from npggml.ops.registry import numerics

    rng = np.random.default_rng(3)
    x = (rng.standard_normal((2, 3, 37, 131)) * 3).astype(np.float32)
    name, _, extra = op.partition("+")
    args = ()
    if name == "soft_max_ext":
        mask = (rng.standard_normal((1, 1, 40, 131)) * 2).astype(np.float32) if extra else None
        args = (mask, 0.125, 0.0)
    row = rng.standard_normal((1, 1, 1, 131)).astype(np.float32)
    if name == "add_act":
        args = (row, extra)
    if name == "add_res":
        args = (row, (rng.standard_normal(x.shape) * 3).astype(np.float32))
    if name == "rms_norm":
        args = (1e-6,)
    d = registry.get(name)
    gate = (rng.standard_normal(x.shape) * 2).astype(np.float32)
    with numerics(numerics_name), np.errstate(all="ignore"):
        out = np.empty_like(x)
        if name == "swiglu_split":  # in place over x, or over the gate with "+gate"
            assert d.fast(out, None, x, gate) is None
            same = (gate if extra else x).copy()
            srcs = (x, same) if extra else (same, gate)
            assert d.fast(same, None, *srcs) is None
        else:
            assert d.fast(out, None, x, *args) is None
            same = x.copy()
            assert d.fast(same, None, same, *args) is None
    np.testing.assert_array_equal(same, out)
