"""The fusion passes (SAM attention, projection past the window crop, products of gathered rows, layer-norm affine,
bias + activation, bias + residual, copy elision): fused graph == unfused graph (bit for bit, or to float rounding
where a pass says so), and they find exactly the expected patterns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from npggml.graph import fuse as passes
from npggml.graph.context import Context
from npggml.graph.fuse import fuse, fuse_bias_act, fuse_norm_affine, fuse_sam_attention
from npggml.graph.graph import Graph
from npggml.graph.interp import Interpreter
from npggml.graph.printer import summary
from npggml.models.clip import ClipGraph
from npggml.models.encode import Encoder
from npggml.models.gguf_io import load_mmproj
from npggml.ops import registry

MODELS = Path(__file__).parent / "fixtures" / "models"
F32 = np.float32


def sam_builder(ctx: Context):
    """A `SamBuilder` whose graph-building helpers (window partition, rel-pos tables) build into ctx, without a
    model."""
    from npggml.models.sam import SamBuilder

    builder = SamBuilder.__new__(SamBuilder)
    builder.ctx = ctx
    return builder


def sam_like_attention(W: int, Hh: int, D: int, n_heads: int, B: int, seed: int = 0, rel_from: str = "q",
                       extra_rows: int = 0):
    """The rel-pos attention sub-graph exactly as `SamBuilder.build_sam` + `ClipGraph.build_attn` build it,
    on random Q/K/V and rel-pos tables (`[D, 2S-1]` gathered with the builder's index inputs; with `extra_rows`,
    tables that many rows longer, which the builder resizes first); with `rel_from="k"` the rel-pos factors are
    built from the keys instead of the queries."""
    from npggml.models.sam import rel_pos_indices

    rng = np.random.default_rng(seed)
    ctx = Context()
    n_embd = D * n_heads
    N = W * Hh
    inputs = {}

    def inp(ne, name, value=None):
        t = ctx.input("f32" if value is None else "i32", ne, name)
        inputs[t] = rng.standard_normal(tuple(reversed(ne))).astype(F32) if value is None else value
        return t

    qkv = inp((n_embd, 3, N, B), "qkv")
    Q, K, V = (ctx.reshape_4d(ctx.cont(ctx.view_3d(qkv, n_embd, N, B, qkv.nb[2], qkv.nb[3], i * qkv.nb[1])),
                              D, n_heads, N, B) for i in range(3))
    pos_w = inp((D, 2 * W - 1 + extra_rows), "pos_w")
    pos_h = inp((D, 2 * Hh - 1 + extra_rows), "pos_h")
    idx_w = inp((W, W), "idx_w", rel_pos_indices(W))
    idx_h = inp((Hh, Hh), "idx_h", rel_pos_indices(Hh))
    b = sam_builder(ctx)
    rw = b.get_rel_pos(pos_w, idx_w, W, W)
    rh = b.get_rel_pos(pos_h, idx_h, Hh, Hh)
    qr = ctx.reshape_4d(ctx.cont(ctx.permute(Q if rel_from == "q" else K, 0, 2, 1, 3)), D, W, Hh, B * n_heads)
    rw = ctx.mul_mat(rw, ctx.cont(ctx.permute(qr, 0, 2, 1, 3)))
    rw = ctx.cont(ctx.permute(rw, 0, 2, 1, 3))
    rw = ctx.reshape_4d(rw, W, 1, W * Hh, n_heads * B)
    rw = ctx.repeat_4d(rw, W, Hh, W * Hh, n_heads * B)
    rh = ctx.mul_mat(rh, qr)
    rh = ctx.reshape_4d(rh, 1, Hh, W * Hh, n_heads * B)
    mask = ctx.reshape_4d(ctx.add(rw, rh), W * Hh, W * Hh, n_heads, B)
    out = ClipGraph.build_attn(b, None, None, Q, K, V, mask, D ** -0.5, 0)
    return out, inputs


def _run(out, inputs, numerics, fast, fused):
    graph = Graph(out)
    n = 0
    if fused:
        report = {}
        graph = fuse(graph, report=report)
        n = report["sam_attention"]
    (res,) = Interpreter(graph, numerics=numerics, fast=fast).run(inputs)
    return res, graph, n


@pytest.mark.parametrize("numerics", ["exact", "ggml"])
@pytest.mark.parametrize("W,Hh,D,n_heads,B,extra", [(3, 4, 8, 2, 1, 0), (5, 5, 16, 3, 2, 0), (7, 2, 4, 1, 3, 0),
                                                    (4, 3, 8, 2, 2, 5)])
def test_fused_equals_unfused(numerics, W, Hh, D, n_heads, B, extra):
    out, inputs = sam_like_attention(W, Hh, D, n_heads, B, extra_rows=extra)
    ref, g0, _ = _run(out, inputs, numerics, fast=False, fused=False)
    assert "sam_rel_attn" not in {n.op for n in g0.nodes}
    assert ("interpolate" in {n.op for n in g0.nodes}) == (extra > 0)
    out, inputs = sam_like_attention(W, Hh, D, n_heads, B, extra_rows=extra)
    fused_ref, g1, n = _run(out, inputs, numerics, fast=False, fused=True)
    assert n == 1
    ops = [x.op for x in g1.nodes]
    assert ops.count("sam_rel_attn") == 1 and "soft_max_ext" not in ops and "repeat_4d" not in ops
    # the rel-pos factors come from the queries and the tables: no products or row picks besides, and no copies
    # but the two around each table's resize
    assert ops.count("sam_rel_pos") == 2 and {"mul_mat", "get_rows"}.isdisjoint(ops)
    assert ops.count("cont") == (4 if extra else 0)
    # the fused op's reference kernel does the unfused sub-graph's float operations: same bits
    np.testing.assert_array_equal(fused_ref, ref)
    out, inputs = sam_like_attention(W, Hh, D, n_heads, B, extra_rows=extra)
    fused_fast, _, _ = _run(out, inputs, numerics, fast=True, fused=True)
    assert np.abs(fused_fast - ref).max() <= 1e-5 * np.abs(ref).max()


def test_fused_node_is_named_and_keeps_consumers():
    out, inputs = sam_like_attention(4, 4, 8, 2, 1)
    graph = fuse(Graph(out))
    (node,) = [n for n in graph.nodes if n.op == "sam_rel_attn"]
    assert node.name == "sam_rel_attn-0"  # from the kqv_out-0 node downstream
    users = graph.consumers()[id(node)]
    assert [u.op for u in users] == ["permute"]


def test_pass_skips_a_shared_mask():
    """A score or mask that another node also reads must stay: nothing is fused."""
    out, inputs = sam_like_attention(3, 3, 4, 1, 1)
    graph = Graph(out)
    sm = next(n for n in graph.nodes if n.op == "soft_max_ext")
    ctx = Context()
    extra = ctx.add(out, ctx.sum_rows(ctx.cont(sm.srcs[1])))  # the mask gets a second consumer
    graph = Graph(extra)
    assert fuse_sam_attention(graph) == 0


def test_rel_pos_pass_needs_the_attentions_own_queries():
    """Rel-pos factors built from other values than the attention's queries are left as they are (the attention
    itself is still fused); built from its queries, both become `sam_rel_pos` nodes."""
    for rel_from, expected in (("k", 0), ("q", 1)):
        out, _ = sam_like_attention(3, 4, 8, 2, 2, rel_from=rel_from)
        graph = Graph(out)
        assert fuse_sam_attention(graph) == 1
        assert passes.fuse_rel_pos(graph) == expected
        ops = [n.op for n in Graph(graph.outputs).nodes]
        assert ops.count("sam_rel_pos") == 2 * expected and ops.count("get_rows") == 2 * (1 - expected)


@pytest.mark.parametrize("gguf,grid,expected,projector_rows", [
    ("mmproj-tiny-dsocr-f32.gguf", None, 12, 0),
    ("mmproj-tiny-dsocr-f32.gguf", (3, 2), 24, 0),
    ("mmproj-tiny-dsocr2-f32.gguf", (2, 2), 24, 2),
])
def test_pass_count_on_page_graphs(gguf, grid, expected, projector_rows):
    """One fused attention per SAM layer and view group (tiles, global); per windowed layer (every view here pads
    its windows) one projection moved past the crop, and two products of gathered rows: the qkv product (of the
    padded windows) and that projection (of the unpartitioned, cropped attention output), whose rows the attention
    then gives itself (`sam_rel_attn_rows`); in v2 also the projector's product of the query tokens' rows (a
    cropped copy before) per view group. Every CLIP/Qwen attention (no rel-pos mask) becomes one `attn` node."""
    model = load_mmproj(MODELS / gguf)
    enc = Encoder(model, "reference", fuse=False)
    page = enc.build(grid)
    n_layers = model.hparams.sam_n_layer
    assert expected == n_layers * (1 if grid is None else 2)
    before = [n.op for n in page.graph.nodes].count("soft_max_ext")
    n_norms = sum(n.op in ("norm", "rms_norm") for n in page.graph.nodes)
    n_acts = sum(n.op in ("gelu_erf", "gelu_quick") for n in page.graph.nodes)
    n_conts = [n.op for n in page.graph.nodes].count("cont")
    report = {}
    graph = fuse(page.graph, report=report)
    # every layer norm has a scale, every GELU of an MLP follows its first layer's bias
    windowed = (n_layers - len(model.hparams.sam_global_layers)) * expected // n_layers
    assert {k: v for k, v in report.items() if k not in ("copies", "bias_residual")} == {
        "sam_attention": expected, "attention": before - expected, "rel_pos": expected, "linear_crop": windowed,
        "linear_rows": 2 * windowed + projector_rows, "attention_rows": windowed, "picked_rows": projector_rows,
        "norm_affine": n_norms, "bias_act": n_acts}
    # every MLP's second bias joins the residual in one node (SAM and CLIP layers; Qwen2's MLP has no bias)
    assert report["bias_residual"] >= n_acts
    ops = [n.op for n in graph.nodes]
    assert "norm" not in ops and "rms_norm" not in ops and ops.count("norm_affine") == n_norms
    assert ops.count("sam_rel_attn") == expected - windowed and ops.count("sam_rel_attn_rows") == windowed
    assert ops.count("attn") == before - expected > 0 and "soft_max_ext" not in ops
    # the qkv products read their layer's normed input through row numbers, the moved projections the rows the
    # windowed attentions give them: no pad, no partition / unpartition / crop copy
    assert ops.count("mul_mat_rows") == windowed + projector_rows and "pad" not in ops
    # q, k and v of every SAM attention read the qkv product itself: its q, k, v and v-transposed copies are gone,
    # and so are the copies of q the rel-pos products read: the rel-pos factors read the product too
    for node in graph.nodes:
        if node.op in ("sam_rel_attn", "sam_rel_attn_rows"):
            assert [t.root.op for t in node.srcs[:3]] == ["add"] * 3
            assert [t.op for t in node.srcs[3:5]] == ["sam_rel_pos"] * 2
            assert [t.srcs[0].root.op for t in node.srcs[3:5]] == ["add"] * 2
        if node.op == "attn":  # v read from the value projection itself, transposed: build_attn's copy is gone
            assert node.srcs[2].op != "cont" and node.srcs[2].root.op != "cont"
    n_attn = ops.count("attn")
    assert report["copies"] >= 4 * expected + n_attn and n_conts - ops.count("cont") >= 4 * expected + n_attn
    assert fuse_sam_attention(graph) == passes.fuse_attention(graph) == 0  # nothing left
    assert fuse_norm_affine(graph) == fuse_bias_act(graph) == 0
    assert passes.fuse_bias_residual(graph) == passes.elide_copies(graph) == passes.fuse_rel_pos(graph) == 0
    assert passes.move_linear_past_crop(graph) == passes.gather_linear_rows(graph) == 0
    assert passes.fuse_attention_rows(graph) == passes.compute_picked_rows(graph) == 0


@pytest.mark.parametrize("mode,fast", [("reference", True), ("reference", False)])
def test_encoder_fuse_switch(mode, fast):
    """Encoder(fuse=...) switches the pass. With the reference kernels the fused graph gives the same bits; with
    the fast kernels the same embeddings within 1e-5. (ggml numerics: `test_fused_equals_unfused` checks the
    fused op there on small graphs, and `test_fast_drift.py` a whole page; a full llama.cpp-mode encode with the
    reference kernels takes minutes.)"""
    model = load_mmproj(MODELS / "mmproj-tiny-dsocr-f32.gguf")
    image = Path(__file__).parent / "fixtures" / "images" / "doc_620x560.png"
    a = Encoder(model, mode, fast=fast, fuse=True, reserve=False).encode(image, no_tiles=True)
    b = Encoder(model, mode, fast=fast, fuse=False, reserve=False).encode(image, no_tiles=True)
    assert "sam_rel_attn" in {n.op for n in a.page.graph.nodes}
    assert "sam_rel_attn" not in {n.op for n in b.page.graph.nodes}
    if fast:
        assert np.abs(a.embeddings - b.embeddings).max() <= 1e-5 * np.abs(b.embeddings).max()
    else:
        np.testing.assert_array_equal(a.embeddings, b.embeddings)


def test_whole_keeps_every_named_value():
    """`Encoder.whole` (what `npggml trace` sets) leaves out the passes that compute a named value for the rows
    read later only: v2's last layer (`layer_out-11`) and the windowed layers' token rows (`kqv_out-0`) are then in
    the graph, with all their rows; by default they are computed as fewer rows, under new names."""
    enc = Encoder(load_mmproj(MODELS / "mmproj-tiny-dsocr2-f32.gguf"), "reference", reserve=False)
    for whole in (False, True):  # tiles, then the global view: each has its SAM and its Qwen2 layer 0
        enc.whole = whole
        nodes = enc.build((2, 1)).graph.nodes
        last = [n for n in nodes if n.name.startswith("layer_out-11")]
        assert [n.name for n in last] == ["layer_out-11" if whole else "layer_out-11 (rows)"] * 2
        assert [n.ne[1] for n in last] == ([2 * 288, 512] if whole else [2 * 144, 256])  # all tokens, or queries
        assert [n.name for n in nodes].count("kqv_out-0") == (4 if whole else 2)  # SAM's, Qwen2's
        assert any(n.op == "sam_rel_attn_rows" for n in nodes) != whole


def norm_affine_graph(rms: bool, bias: bool, ne=(24, 5, 3, 2), seed: int = 0, row_w: bool = True):
    """`add(mul(norm(a), w), b)` as `ClipGraph.build_norm` builds it (a permuted, non-contiguous a)."""
    rng = np.random.default_rng(seed)
    ctx = Context()
    a = ctx.input("f32", (ne[1], ne[0], ne[2], ne[3]), "a")
    w = ctx.input("f32", (ne[0], 1, 1, 1) if row_w else ne, "w")
    b = ctx.input("f32", (ne[0], 1, 1, 1), "b") if bias else None
    values = {t: (rng.standard_normal(tuple(reversed(t.ne))) * 3 + 1).astype(F32)
              for t in (a, w, b) if t is not None}
    x = ctx.permute(a, 1, 0, 2, 3)
    cur = ctx.rms_norm(ctx.cont(x), 1e-6) if rms else ctx.norm(x, 1e-5)  # rms_norm wants unit-stride rows
    cur = ClipGraph.cb(ctx.mul(cur, w), "norm_w", 3)
    if bias:
        cur = ClipGraph.cb(ctx.add(cur, b), "norm_b", 3)
    return cur, values


@pytest.mark.parametrize("rms,bias", [(False, True), (True, False), (False, False), (True, True)])
def test_norm_affine_fused_equals_unfused(rms, bias):
    """Reference kernels: the fused op gives the unfused graph's bits. Fast kernels: the fused kernel gives the
    unfused fast kernels' bits too (no fma, the same sums), and both are within 1e-5 of the reference."""
    out, values = norm_affine_graph(rms, bias)
    g0 = Graph(out)
    results = {}
    for fast in (False, True):
        (results[fast, False],) = Interpreter(g0, numerics="exact", fast=fast).run(values)
    out, values = norm_affine_graph(rms, bias)
    report = {}
    g1 = fuse(Graph(out), report=report)
    assert report["norm_affine"] == 1
    node = g1.nodes[-1]
    assert node.op == "norm_affine" and node.name == ("norm_b-3" if bias else "norm_w-3")
    assert [n.op for n in g1.nodes] == ["permute"] + ["cont"] * rms + ["norm_affine"]
    for fast in (False, True):
        it = Interpreter(g1, numerics="exact", fast=fast)
        (results[fast, True],) = it.run(values)
        assert it.kernel_used[-1] == ("fast" if fast else "ref")
    np.testing.assert_array_equal(results[False, True], results[False, False])
    np.testing.assert_array_equal(results[True, True], results[True, False])
    ref = results[False, False]
    assert np.abs(results[True, True] - ref).max() <= 1e-5 * np.abs(ref).max()


def test_norm_affine_pass_skips():
    """Not fused: a weight that is not one row (a full tensor), a norm another node also reads. A mul whose value
    another node also reads fuses without its add."""
    out, _ = norm_affine_graph(False, True, row_w=False)
    assert fuse_norm_affine(Graph(out)) == 0
    out, _ = norm_affine_graph(False, True)
    norm = out.srcs[0].srcs[0]
    ctx = Context()
    assert fuse_norm_affine(Graph(ctx.add(out, ctx.sum_rows(norm)))) == 0
    out, _ = norm_affine_graph(False, True)
    mul = out.srcs[0]
    graph = Graph(ctx.add(out, ctx.sum_rows(mul)))
    assert fuse_norm_affine(graph) == 1 and mul.op == "norm_affine" and out.op == "add"


def check_fused_bits(make, numerics: str, pass_name: str, ops: list[str], name: str) -> None:
    """The graph `make()` builds, fused: `pass_name` rewrote one pattern, the nodes (views aside) are `ops`, the
    last one is named `name`, and it gives the unfused graph's bits with the reference and the fast kernels."""
    out, values = make()
    g0 = Graph(out)
    out, values1 = make()
    report = {}
    g1 = fuse(Graph(out), report=report)
    assert report[pass_name] == 1
    assert [n.op for n in g1.nodes if not n.is_view] == ops and g1.nodes[-1].name == name
    for fast in (False, True):
        (unfused,) = Interpreter(g0, numerics=numerics, fast=fast).run(values)
        it = Interpreter(g1, numerics=numerics, fast=fast)
        (fused,) = it.run(values1)
        assert it.kernel_used[-1] == ("fast" if fast else "ref")
        np.testing.assert_array_equal(fused, unfused)


def bias_act_graph(act: str, ne=(40, 7, 3, 1), seed: int = 0):
    """`act(add(mul_mat(w, x), b))` as `ClipGraph.build_ffn` builds a linear layer with bias and activation."""
    rng = np.random.default_rng(seed)
    ctx = Context()
    w = ctx.input("f32", (16, ne[0]), "w")
    x = ctx.input("f32", (16, *ne[1:]), "x")
    b = ctx.input("f32", (ne[0], 1, 1, 1), "b")
    values = {t: (rng.standard_normal(tuple(reversed(t.ne))) * 0.7).astype(F32) for t in (w, x, b)}
    cur = ClipGraph.cb(ctx.add(ctx.mul_mat(w, x), b), "ffn_up_b", 2)
    return ClipGraph.cb(getattr(ctx, act)(cur), f"ffn_{act}", 2), values


@pytest.mark.parametrize("numerics", ["exact", "ggml"])
@pytest.mark.parametrize("act", ["gelu_erf", "gelu_quick"])
def test_bias_act_fused_equals_unfused(act, numerics):
    """The fused bias + activation gives the unfused graph's bits, with the reference kernels and with the fast
    ones (the bias added in float before the same activation code)."""
    check_fused_bits(lambda: bias_act_graph(act), numerics, "bias_act", ["mul_mat", "add_act"], f"ffn_{act}-2")


def test_bias_act_pass_skips():
    """Not fused: a sum another node also reads, a bias that is not one row."""
    out, _ = bias_act_graph("gelu_erf")
    ctx = Context()
    assert fuse_bias_act(Graph(ctx.add(out, out.srcs[0]))) == 0
    x = ctx.input("f32", (8, 3), "x")
    assert fuse_bias_act(Graph(ctx.gelu_erf(ctx.add(x, ctx.input("f32", (8, 3), "b"))))) == 0


def bias_residual_graph(swap: bool, ne=(40, 7, 3, 1), seed: int = 0):
    """`add(add(mul_mat(w, x), b), res)` (or the residual first) as `build_sam` ends an MLP, with a permuted,
    non-contiguous residual."""
    rng = np.random.default_rng(seed)
    ctx = Context()
    w = ctx.input("f32", (16, ne[0]), "w")
    x = ctx.input("f32", (16, *ne[1:]), "x")
    b = ctx.input("f32", (ne[0], 1, 1, 1), "b")
    r = ctx.input("f32", (ne[1], ne[0], ne[2], ne[3]), "r")
    values = {t: (rng.standard_normal(tuple(reversed(t.ne))) * 0.7).astype(F32) for t in (w, x, b, r)}
    cur = ClipGraph.cb(ctx.add(ctx.mul_mat(w, x), b), "ffn_out", 2)
    res = ctx.permute(r, 1, 0, 2, 3)
    return ClipGraph.cb(ctx.add(res, cur) if swap else ctx.add(cur, res), "sam_layer_out", 2), values


@pytest.mark.parametrize("numerics", ["exact", "ggml"])
@pytest.mark.parametrize("swap", [False, True])
def test_bias_residual_fused_equals_unfused(swap, numerics):
    """The fused bias + residual gives the unfused graph's bits, with the reference kernels and the fast ones, and
    keeps the residual add's name."""
    check_fused_bits(lambda: bias_residual_graph(swap), numerics, "bias_residual", ["mul_mat", "add_res"],
                     "sam_layer_out-2")


def test_bias_residual_pass_skips():
    """Not fused: a biased sum another node also reads, a bias that is not one row, a broadcast residual."""
    out, _ = bias_residual_graph(False)
    ctx = Context()
    assert passes.fuse_bias_residual(Graph(ctx.mul(out, out.srcs[0]))) == 0
    x = ctx.input("f32", (8, 3), "x")
    y = ctx.input("f32", (8, 3), "y")
    assert passes.fuse_bias_residual(Graph(ctx.add(ctx.add(x, ctx.input("f32", (8, 3), "b")), y))) == 0
    row = ctx.input("f32", (8,), "row")
    assert passes.fuse_bias_residual(Graph(ctx.add(ctx.add(x, row), ctx.input("f32", (8, 1), "col")))) == 0
    assert passes.fuse_bias_residual(Graph(ctx.add(ctx.add(x, row), y))) == 1


def _factor_groups(ne, cuts):
    """A reshape of a tensor of dims `ne`: its dims' prime factors in order, cut into four groups at `cuts`."""
    factors = []
    for n in ne:
        p = 2
        while n > 1:
            while n % p == 0:
                factors.append(p)
                n //= p
            p += 1
    bounds = [0, *sorted(c % (len(factors) + 1) for c in cuts), len(factors)]
    return tuple(int(np.prod(factors[a:b])) for a, b in zip(bounds, bounds[1:]))


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_elide_copies_reads_the_same_values(data):
    """cont(permute(reshape(cont(x)))) for x a slice or permutation of a tensor: after the pass the outer cont
    reads x's tensor directly whenever a strided view can say which elements it reads, and its value is the same,
    bit for bit; where no view can (a reshape merging dims that the copy made adjacent), it is left alone."""
    ne = tuple(data.draw(st.integers(1, 6)) for _ in range(4))
    rng = np.random.default_rng(0)
    ctx = Context()
    base = ctx.input("f32", ne, "base")
    x = base
    if data.draw(st.booleans()):  # a slice of base
        lo = [data.draw(st.integers(0, n - 1)) for n in ne]
        sub = [data.draw(st.integers(1, n - a)) for n, a in zip(ne, lo)]
        x = ctx.view_4d(base, *sub, *base.nb[1:], sum(a * b for a, b in zip(lo, base.nb)))
    x = ctx.permute(x, *data.draw(st.permutations(range(4))))
    copy = ctx.cont(x)
    shaped = ctx.reshape_4d(copy, *_factor_groups(copy.ne, data.draw(st.lists(st.integers(0, 20), min_size=3,
                                                                                max_size=3))))
    out = ctx.cont(ctx.permute(shaped, *data.draw(st.permutations(range(4)))))
    value = rng.standard_normal(tuple(reversed(ne))).astype(F32)
    (want,) = Interpreter(Graph(out), numerics="exact", fast=False).run({base: value})
    layout = passes.strided_layout(out.srcs[0])
    expressible = layout is not None and passes.view_of(layout, "") is not None
    event(f"strided view: {expressible}")
    graph = Graph(out)
    assert passes.elide_copies(graph) == int(expressible)
    graph = Graph(graph.outputs)
    assert (copy in graph.nodes) == (not expressible)
    (got,) = Interpreter(graph, numerics="exact", fast=False).run({base: value})
    np.testing.assert_array_equal(got, want)


def test_elide_copies_on_sam_operands():
    """The SAM attention's q, k, v as strided views of the qkv input, exact with both numerics and kernels; a
    reshape that merges a copy's permuted dims has no strided view."""
    for numerics in ("exact", "ggml"):
        out, inputs = sam_like_attention(5, 3, 8, 3, 2)
        want, _, _ = _run(out, inputs, numerics, fast=False, fused=False)
        for fast in (False, True):
            out, inputs = sam_like_attention(5, 3, 8, 3, 2)
            graph = Graph(out)
            fuse_sam_attention(graph)
            assert passes.elide_copies(graph) == 4  # q, k, v and the rel-pos products' copy of q
            graph = Graph(graph.outputs)
            assert [n.op for n in graph.nodes].count("cont") < 10
            (node,) = [n for n in graph.nodes if n.op == "sam_rel_attn"]
            assert {t.root.name for t in node.srcs[:3]} == {"qkv"}
            (got,) = Interpreter(graph, numerics=numerics, fast=fast).run(inputs)
            if fast:
                assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
            else:
                np.testing.assert_array_equal(got, want)
    ctx = Context()
    a = ctx.input("f32", (4, 3, 1, 1), "a")
    merged = ctx.reshape_2d(ctx.cont(ctx.transpose(a)), 12, 1)
    assert passes.strided_layout(merged) is None


def window_proj_graph(w: int, h: int, window: int, c: int, B: int, bias: bool = True, seed: int = 0):
    """A SAM windowed layer's end as `build_sam` builds it: the output projection of the windows' attention
    (`[c, window * window * n_windows]`), the builder's copy, `window_unpartition` (which crops the padding) and
    the residual add."""
    rng = np.random.default_rng(seed)
    ctx = Context()
    n_win = -(-w // window) * -(-h // window) * B
    x = ctx.input("f32", (c, window * window * n_win), "x")
    wo = ctx.input("f32", (c, c), "wo")
    b = ctx.input("f32", (c,), "b") if bias else None
    shortcut = ctx.input("f32", (c, w, h, B), "shortcut")
    values = {t: rng.standard_normal(tuple(reversed(t.ne))).astype(F32) for t in (x, wo, b, shortcut) if t}
    cur = ctx.mul_mat(wo, x)
    if bias:
        cur = ctx.add(cur, b)
    cur = ctx.reshape_4d(ctx.cont(cur), c, window, window, n_win)
    cur = sam_builder(ctx).window_unpartition(cur, w, h, window)
    return ClipGraph.cb(ctx.add(cur, shortcut), "sam_layer_out", 1), values


@settings(max_examples=30, deadline=None)
@given(w=st.integers(1, 9), h=st.integers(1, 9), window=st.integers(2, 5), c=st.sampled_from([4, 8, 12]),
       B=st.integers(1, 3), bias=st.booleans(), numerics=st.sampled_from(["exact", "ggml"]))
def test_linear_crop_computes_the_kept_rows(w, h, window, c, B, bias, numerics):
    """The projection moves past the unpartition when it crops padding: the product then has one row per token
    of the image (not of the padded windows), the flops drop by the padding rows' products and biases, the last
    copy keeps its name, and the value is the unfused graph's to float rounding (BLAS rounds a row's sums by where
    the row sits in the matrix), with the reference kernels and the fast ones. Without padding there is nothing
    to gain and the graph is left alone."""
    out, values = window_proj_graph(w, h, window, c, B, bias)
    g0 = Graph(out)
    out1, values1 = window_proj_graph(w, h, window, c, B, bias)
    report = {}
    g1 = fuse(Graph(out1), passes=["linear_crop"], report=report)
    padded = w % window or h % window
    event(f"padding: {bool(padded)}")
    assert report["linear_crop"] == int(bool(padded))
    if not padded:
        return
    (mm,) = [n for n in g1.nodes if n.op == "mul_mat"]
    assert mm.ne == mm.srcs[1].ne == (c, w, h, B) and mm.srcs[1].name.startswith("x ")  # the moves, on x
    n_win = -(-w // window) * -(-h // window) * B
    dropped = window * window * n_win - w * h * B  # rows: the product's (and the bias's) flops of each go
    assert summary(g0)["flops"] - summary(g1)["flops"] == (2.0 * c + bias) * c * dropped
    last = g1.nodes[-1].srcs[0]
    assert last.op == ("add" if bias else "mul_mat") and last.ne == (c, w, h, B) and "(cont)" in last.name
    for fast in (False, True):
        (want,) = Interpreter(g0, numerics=numerics, fast=fast).run(values)
        (got,) = Interpreter(g1, numerics=numerics, fast=fast).run(values1)
        assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()


def test_linear_crop_skips():
    """Left alone: a product another node also reads, a weight that is not square, moves that are not whole rows
    (a transpose, half rows), a chain that keeps every row, one that ends in rows of two of the layer's rows."""
    out, _ = window_proj_graph(5, 4, 3, 8, 1)
    ctx = Context()
    bias_add = out.srcs[0]
    while bias_add.op != "add":
        bias_add = bias_add.srcs[0]
    mm = bias_add.srcs[0]
    assert passes.move_linear_past_crop(Graph([out, ctx.sum_rows(mm)])) == 0
    x = ctx.input("f32", (6, 20), "x")
    crop = ctx.cont(ctx.view_2d(ctx.mul_mat(ctx.input("f32", (6, 8), "w"), x), 8, 10, 32, 0))
    assert passes.move_linear_past_crop(Graph(crop)) == 0  # 6 -> 8 features
    y = ctx.mul_mat(ctx.input("f32", (8, 8), "w2"), ctx.input("f32", (8, 20), "y"))
    assert passes.move_linear_past_crop(Graph(ctx.cont(ctx.view_2d(y, 8, 10, 32, 0)))) == 1
    y = ctx.mul_mat(ctx.input("f32", (8, 8), "w3"), ctx.input("f32", (8, 20), "y"))
    assert passes.move_linear_past_crop(Graph(ctx.cont(ctx.view_2d(ctx.transpose(y), 10, 8, 80, 0)))) == 0
    y = ctx.mul_mat(ctx.input("f32", (8, 8), "w4"), ctx.input("f32", (8, 20), "y"))
    assert passes.move_linear_past_crop(Graph(ctx.cont(ctx.view_2d(y, 4, 20, 32, 0)))) == 0  # half rows
    y = ctx.mul_mat(ctx.input("f32", (8, 8), "w5"), ctx.input("f32", (8, 20), "y"))
    assert passes.move_linear_past_crop(Graph(ctx.cont(ctx.permute(ctx.reshape_3d(y, 8, 4, 5), 0, 2, 1, 3)))) == 0
    y = ctx.mul_mat(ctx.input("f32", (8, 8), "w6"), ctx.input("f32", (8, 20), "y"))
    pairs = ctx.cont(ctx.view_2d(ctx.reshape_2d(y, 16, 10), 16, 5, 64, 0))  # whole rows, but two to a row
    assert passes.move_linear_past_crop(Graph(pairs)) == 0


def window_qkv_graph(w: int, h: int, window: int, c: int, n: int, B: int, bias: bool = True, seed: int = 0):
    """A SAM windowed layer's start as `build_sam` builds it: the normed input x `[c, w, h, B]`,
    `window_partition` (a pad to whole windows, then a permuted copy) and the qkv product `[n, ...]`, its bias."""
    rng = np.random.default_rng(seed)
    ctx = Context()
    x = ctx.input("f32", (c, w, h, B), "x")
    wqkv = ctx.input("f32", (c, n), "wqkv")
    b = ctx.input("f32", (n,), "b") if bias else None
    values = {t: rng.standard_normal(tuple(reversed(t.ne))).astype(F32) for t in (x, wqkv, b) if t}
    cur = ctx.mul_mat(wqkv, sam_builder(ctx).window_partition(x, window))
    return (ctx.add(cur, b) if bias else cur), values


@settings(max_examples=30, deadline=None)
@given(w=st.integers(1, 9), h=st.integers(1, 9), window=st.integers(2, 5), c=st.sampled_from([4, 8]),
       n=st.sampled_from([4, 12]), B=st.integers(1, 3), bias=st.booleans())
def test_linear_rows_multiplies_the_image_rows(w, h, window, c, n, B, bias):
    """The qkv product of the windows becomes `mul_mat_rows` over the layer's input itself: the pad and the
    partition's copy go, the flops drop by exactly the padding rows' products, and the value is the unfused
    graph's: bit for bit with the reference kernels and under ggml numerics (the operand is gathered whole), to
    float rounding with the fast kernels (BLAS rounds a row by where it sits in the matrix)."""
    out, values = window_qkv_graph(w, h, window, c, n, B, bias)
    g0 = Graph(out)
    out1, values1 = window_qkv_graph(w, h, window, c, n, B, bias)
    report = {}
    g1 = fuse(Graph(out1), passes=["linear_rows"], report=report)
    assert report["linear_rows"] == 1
    (mm,) = [t for t in g1.nodes if t.op.startswith("mul_mat")]
    assert mm.op == "mul_mat_rows" and mm.srcs[1].name == "x"
    assert [t.op for t in g1.nodes] == [mm.op] + ["add"] * bias  # no pad, no copy
    n_win = -(-w // window) * -(-h // window) * B
    padding = window * window * n_win - w * h * B
    event(f"padding: {bool(padding)}")
    assert summary(g0)["flops"] - summary(g1)["flops"] == 2.0 * c * n * padding
    for numerics, fast in (("exact", False), ("ggml", False), ("ggml", True), ("exact", True)):
        (want,) = Interpreter(g0, numerics=numerics, fast=fast).run(values)
        (got,) = Interpreter(g1, numerics=numerics, fast=fast).run(values1)
        if numerics == "exact" and fast:
            assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()
        else:
            np.testing.assert_array_equal(got, want)


def test_linear_rows_skips():
    """Left alone: a partition copy another node also reads, moves that are not whole rows (a transpose), a pad of
    dim 0, a product that only reads a reshape (nothing is copied), a stack of weights."""
    out, _ = window_qkv_graph(5, 4, 3, 8, 12, 1)
    part = out.srcs[0].srcs[1].srcs[0]  # the partition's copy, under its reshape
    assert part.op == "cont"
    assert passes.gather_linear_rows(Graph([out, Context().sum_rows(part)])) == 0
    ctx = Context()
    w = ctx.input("f32", (8, 6), "w")
    y = ctx.input("f32", (8, 10), "y")
    transposed = ctx.cont(ctx.transpose(ctx.input("f32", (10, 8), "t")))
    assert passes.gather_linear_rows(Graph(ctx.mul_mat(w, transposed))) == 0
    half_rows = ctx.pad(ctx.input("f32", (4, 10), "z"), 4, 0, 0, 0)
    assert passes.gather_linear_rows(Graph(ctx.mul_mat(w, half_rows))) == 0
    assert passes.gather_linear_rows(Graph(ctx.mul_mat(w, ctx.reshape_3d(y, 8, 5, 2)))) == 0
    stack = ctx.input("f32", (8, 6, 2), "stack")
    padded = ctx.pad(ctx.reshape_3d(y, 8, 5, 2), 0, 1, 0, 0)
    assert passes.gather_linear_rows(Graph(ctx.mul_mat(stack, padded))) == 0
    assert passes.gather_linear_rows(Graph(ctx.mul_mat(w, ctx.pad(y, 0, 2, 0, 0)))) == 1  # the control


def check_fused_values(graph: Graph, inputs: dict, node, want: np.ndarray, numerics: str) -> None:
    """The fused graph's value is `want` (the unfused graph's by the reference kernels): bit for bit with the
    reference kernels; with the fast ones, which must run the fused `node`, bit for bit under ggml numerics and
    within 1e-5 in reference mode."""
    (ref,) = Interpreter(graph, numerics=numerics, fast=False).run(inputs)
    np.testing.assert_array_equal(ref, want)
    it = Interpreter(graph, numerics=numerics, fast=True)
    (fast,) = it.run(inputs)
    assert it.kernel_used[graph.index[id(node)]] == "fast"
    if numerics == "ggml":
        np.testing.assert_array_equal(fast, want)
    else:
        assert np.abs(fast - want).max() <= 1e-5 * np.abs(want).max()


def picked_attention_rows(W: int, Hh: int, D: int, n_heads: int, B: int, rows, seed: int = 0, const=True):
    """The output projection of a SAM attention's token rows, picked by number (`mul_mat_rows`, as
    `gather_linear_rows` leaves a windowed layer's projection): rows of `sam_like_attention`'s `kqv_out`."""
    out, inputs = sam_like_attention(W, Hh, D, n_heads, B, seed)
    ctx = Context()
    wo = ctx.input("f32", (D * n_heads, 6), "wo")
    inputs[wo] = np.random.default_rng(seed + 1).standard_normal((6, D * n_heads)).astype(F32)
    rows = np.asarray(rows, np.int32).reshape(1, 1, 1, -1)
    if const:
        r = ctx.constant(rows, "rows")
    else:
        r = ctx.input("i32", (rows.size,), "rows")
        inputs[r] = rows.reshape(-1)
    return ctx.build(registry.get("mul_mat_rows"), wo, out, r), inputs


@pytest.mark.parametrize("W,Hh,D,n_heads,B,rows", [
    (3, 4, 8, 2, 1, [0, 5, 6, 11, 1]),  # some queries, out of order
    (4, 3, 4, 3, 2, [23, 0, 12, 12, 7, 0]),  # repeats, both batch entries
    (2, 2, 8, 2, 3, list(range(12))),  # every query
])
def test_attention_rows_computes_the_picked_queries(W, Hh, D, n_heads, B, rows):
    """The attention gives the picked token rows itself: the product reads `sam_rel_attn_rows`, the flops drop by
    the attention of the queries no row picks, and the value is the unfused graph's, bit for bit with the
    reference kernels (the rows of the whole attention, gathered) and under ggml numerics, to float rounding with
    the fast kernels."""
    others = [p for p in passes.PASSES if p != "attention_rows"]
    report = {}
    out1, inputs1 = picked_attention_rows(W, Hh, D, n_heads, B, rows)
    g1 = fuse(Graph(out1), report=report)
    assert report["attention_rows"] == 1
    g0 = fuse(Graph(picked_attention_rows(W, Hh, D, n_heads, B, rows)[0]), passes=others)
    ops = [t.op for t in g1.nodes]
    assert "mul_mat_rows" not in ops and "sam_rel_attn" not in ops and ops.count("sam_rel_attn_rows") == 1
    (node,) = [t for t in g1.nodes if t.op == "sam_rel_attn_rows"]
    assert node.name == "sam_rel_attn_rows-0" and [u.op for u in g1.consumers()[id(node)]] == ["mul_mat"]
    N = W * Hh
    skipped = B * N - len(set(rows))
    assert summary(g0)["flops"] - summary(g1)["flops"] == (4 * D + 6) * N * n_heads * skipped
    out, inputs = picked_attention_rows(W, Hh, D, n_heads, B, rows)
    for numerics in ("exact", "ggml"):
        (want,) = Interpreter(Graph(out), numerics=numerics, fast=False).run(inputs)
        check_fused_values(g1, inputs1, node, want, numerics)


def test_attention_rows_skips():
    """Left alone: a zero row (-1) among the row numbers, row numbers that are not a constant, token rows another
    node also reads."""
    assert passes.PASSES["attention_rows"](fuse(Graph(picked_attention_rows(3, 3, 4, 2, 1, [0, 4])[0]),
                                                passes=["sam_attention", "rel_pos"])) == 1  # the control
    for rows, const in (([0, -1, 4], True), ([0, 4], False)):
        out, _ = picked_attention_rows(3, 3, 4, 2, 1, rows, const=const)
        assert fuse(Graph(out), passes=["sam_attention", "rel_pos", "attention_rows"], report=(r := {})) and \
            r["attention_rows"] == 0
    out, _ = picked_attention_rows(3, 3, 4, 2, 1, [0, 4])
    shared = Graph([out, Context().sum_rows(out.srcs[1])])
    assert fuse(shared, passes=["sam_attention", "attention_rows"], report=(r := {})) and r["attention_rows"] == 0


def query_rows_graph(c: int, n_img: int, n_q: int, B: int, f: int = 12, seed: int = 0):
    """The end of v2's encoder in miniature: a last layer (output projection of an attention output `a`, residual,
    RMS norm, SiLU-gated MLP, residual), the final RMS norm, the crop to the last n_q tokens of each batch entry
    and the projector's product."""
    rng = np.random.default_rng(seed)
    ctx = Context()
    S = n_img + n_q
    ins = {"x": (c, S, B), "a": (c, S, B), "wo": (c, c), "wg": (c, f), "wu": (c, f), "wd": (f, c), "g1": (c,),
           "g2": (c,), "fc": (c, 5), "fcb": (5,)}
    t = {k: ctx.input("f32", ne, k) for k, ne in ins.items()}
    values = {v: rng.standard_normal(tuple(reversed(v.ne))).astype(F32) for v in t.values()}
    h = ctx.add(ctx.mul_mat(t["wo"], t["a"]), t["x"])
    n = ctx.mul(ctx.rms_norm(h, 1e-6), t["g1"])
    m = ctx.mul_mat(t["wd"], ctx.mul(ctx.silu(ctx.mul_mat(t["wg"], n)), ctx.mul_mat(t["wu"], n)))
    post = ctx.mul(ctx.rms_norm(ctx.add(h, m), 1e-6), t["g2"])
    crop = ctx.cont(ctx.view_3d(post, c, n_q, B, post.nb[1], post.nb[2], post.nb[1] * n_img))
    return ctx.add(ctx.mul_mat(t["fc"], crop), t["fcb"]), values


@pytest.mark.parametrize("c,n_img,n_q,B", [(8, 5, 3, 2), (4, 1, 6, 1), (12, 9, 1, 3)])
def test_picked_rows_computes_only_the_kept_tokens(c, n_img, n_q, B):
    """After `gather_linear_rows` makes the projector read the query tokens' rows by number, the last layer from
    its output projection on runs on those rows only (its products have n_q * B rows; the two values it reads
    from outside, picked by `get_rows`), and the value is the unfused graph's to float rounding (the products
    round as BLAS rounds fewer rows) with the reference and the fast kernels, under both numerics."""
    out, values = query_rows_graph(c, n_img, n_q, B)
    report = {}
    g1 = fuse(Graph(out), passes=["linear_rows", "picked_rows"], report=report)
    assert report == {"linear_rows": 1, "picked_rows": 1}
    products = [t for t in g1.nodes if t.op == "mul_mat"]
    assert len(products) == 4 and all(t.ne[1] == n_q * B for t in products)
    assert sorted(t.name for t in g1.nodes if t.op == "get_rows") == ["a (rows)", "x (rows)"]
    assert summary(g1)["flops"] < summary(fuse(Graph(query_rows_graph(c, n_img, n_q, B)[0]),
                                               passes=["linear_rows"]))["flops"]
    for numerics in ("exact", "ggml"):
        (want,) = Interpreter(Graph(out), numerics=numerics, fast=False).run(values)
        for fast in (False, True):
            (got,) = Interpreter(g1, numerics=numerics, fast=fast).run(values)
            assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_picked_rows_skips():
    """Left alone: row numbers that pick every row, row numbers that are not a constant, an operand another node
    also reads, an operand not computed row by row; a value of the layer that another node reads stays whole and
    is picked from."""
    def picked(out, extra=None):
        graph = fuse(Graph(out if extra is None else [out, extra]), passes=["linear_rows"])
        return passes.compute_picked_rows(graph), Graph(graph.outputs)

    assert picked(query_rows_graph(8, 5, 3, 2)[0])[0] == 1  # the control
    assert picked(query_rows_graph(8, 0, 3, 2)[0])[0] == 0  # every token kept: the crop is no crop
    out, _ = query_rows_graph(8, 5, 3, 2)
    post = out.srcs[0].srcs[1].srcs[0].srcs[0]  # add(mul_mat(fc, cont(view(post))), fcb)
    assert post.op == "mul" and picked(out, Context().sum_rows(post))[0] == 0
    out, _ = query_rows_graph(8, 5, 3, 2)
    h = next(t for t in Graph(out).nodes if t.op == "add" and t.srcs[1].name == "x")
    n, graph = picked(out, Context().sum_rows(h))
    assert n == 1 and sorted(t.name for t in graph.nodes if t.op == "get_rows") == [f"{h.name} (rows)"]
    ctx = Context()
    y = ctx.input("f32", (4, 6), "y")
    w = ctx.input("f32", (4, 3), "w")
    rows = ctx.constant(np.array([[[[1, 4]]]], np.int32), "rows")
    mmr = registry.get("mul_mat_rows")
    mixed = ctx.cont(ctx.transpose(ctx.input("f32", (6, 4), "z")))  # a row of it is a column of z
    assert passes.compute_picked_rows(Graph(ctx.build(mmr, w, mixed, rows))) == 0
    assert passes.compute_picked_rows(Graph(ctx.build(mmr, w, ctx.gelu(y), rows))) == 1  # the control
    dyn = ctx.input("i32", (2,), "dyn")
    assert passes.compute_picked_rows(Graph(ctx.build(mmr, w, ctx.gelu(y), dyn))) == 0


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_linear_rows_after_any_row_moves(data):
    """Any chain of zero pads (dims 1-3), permutes that keep dim 0, copies and reshapes between a packed value b
    and a product: the pass rewrites it when the chain copies or pads, into a product over b whose flops drop by
    exactly the padding rows', with the unfused graph's value (bits: reference kernels, ggml numerics; rounding:
    the fast reference-mode kernel)."""
    draw = data.draw
    c, m = draw(st.sampled_from([2, 4])), draw(st.integers(1, 3))
    ctx = Context()
    b = ctx.input("f32", (c, draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 2))), "b")
    w = ctx.input("f32", (c, m), "w")
    cur, padded, copies = b, False, False
    for step in draw(st.lists(st.sampled_from(["pad", "permute", "cont", "reshape"]), min_size=1, max_size=5)):
        if step == "pad":
            pads = [draw(st.integers(0, 2)) for _ in range(3)]
            cur, padded = ctx.pad(cur, 0, *pads), padded or any(pads)
            copies = True
        elif step == "permute":
            cur = ctx.permute(cur, 0, *draw(st.permutations([1, 2, 3])))
        elif step == "cont":
            cur, copies = ctx.cont(cur), True
        elif cur.is_contiguous():  # rows of k rows, or the rows as one dim
            k = draw(st.sampled_from([d for d in (1, 2, 3) if cur.ne[1] % d == 0]))
            cur = ctx.reshape_4d(cur, cur.ne[0] * k, cur.ne[1] // k, cur.ne[2], cur.ne[3])
    if cur.ne[0] != c:  # back to rows of c for the product
        if not cur.is_contiguous():
            cur, copies = ctx.cont(cur), True
        cur = ctx.reshape_4d(cur, c, cur.nelements // c, 1, 1)
    out = ctx.mul_mat(w, cur)
    rng = np.random.default_rng(draw(st.integers(0, 9)))
    values = {t: rng.standard_normal(tuple(reversed(t.ne))).astype(F32) for t in (b, w)}
    g0 = Graph(out)
    want = {(n, f): Interpreter(g0, numerics=n, fast=f).run(values)[0] for n in ("exact", "ggml") for f in (0, 1)}
    flops0 = summary(g0)["flops"]
    report = {}
    g1 = fuse(Graph(out), passes=["linear_rows"], report=report)
    event(f"rewritten: {report['linear_rows']}, padded: {padded}")
    assert report["linear_rows"] == int(copies)
    if copies:
        assert out.op == "mul_mat_rows" and out.srcs[1] is b
        padding = cur.nelements // c - b.nelements // c
        assert flops0 - summary(g1)["flops"] == 2.0 * c * m * padding and (padding > 0) == padded
    for (numerics, fast), v in want.items():
        (got,) = Interpreter(g1, numerics=numerics, fast=fast).run(values)
        if numerics == "exact" and fast:
            assert np.abs(got - v).max() <= 1e-6 * np.abs(v).max()
        else:
            np.testing.assert_array_equal(got, v)


def vit_like_attention(D, Nq, Nk, H, Hk, B, masked, seed=0):
    """build_attn as the ViT graphs call it: q, k, v permuted views of [D, heads, N, B] projections (k and v with
    Hk heads, shared by H/Hk query heads), a [Nk, Nq] mask (some keys -inf) or none."""
    ctx = Context()
    rng = np.random.default_rng(seed)
    inputs = {}

    def inp(ne, name, lo=-2.0, hi=2.0):
        t = ctx.input("f32", ne, name)
        inputs[t] = rng.uniform(lo, hi, ne[::-1]).astype(np.float32)
        return t

    q, k, v = inp((D, H, Nq, B), "q"), inp((D, Hk, Nk, B), "k"), inp((D, Hk, Nk, B), "v")
    mask = None
    if masked:
        mask = inp((Nk, Nq), "mask")
        inputs[mask][rng.random((Nq, Nk)) < 0.3] = -np.inf
        inputs[mask][:, 0] = 0.0
    out = ClipGraph.build_attn(sam_builder(ctx), None, None, q, k, v, mask, D ** -0.5, 0)
    return out, inputs


@pytest.mark.parametrize("numerics", ["exact", "ggml"])
@pytest.mark.parametrize("D,Nq,Nk,H,Hk,B,masked", [(8, 5, 5, 4, 4, 2, False), (16, 7, 7, 6, 2, 1, True),
                                                   (4, 3, 6, 3, 1, 3, True)])
def test_fused_attention_equals_unfused(numerics, D, Nq, Nk, H, Hk, B, masked):
    """build_attn's attention becomes one `attn` node named after its layer, which reads v from the projection
    itself (no transposed copy). Its reference kernel gives the unfused graph's bits, its fast kernel the same
    values within 1e-5 (bit for bit under ggml numerics)."""
    out, inputs = vit_like_attention(D, Nq, Nk, H, Hk, B, masked)
    (ref,) = Interpreter(Graph(out), numerics=numerics, fast=False).run(inputs)
    report = {}
    graph = fuse(Graph(out), report=report)
    assert report["attention"] == 1 and report["sam_attention"] == 0
    ops = [n.op for n in graph.nodes]
    assert ops.count("attn") == 1 and {"soft_max_ext", "mul_mat", "cont"}.isdisjoint(ops)
    (node,) = [n for n in graph.nodes if n.op == "attn"]
    assert node.name == "attn-0" and node.srcs[2].root.name == "v"
    check_fused_values(graph, inputs, node, ref, numerics)


def test_attention_pass_skips_shared_scores_and_alibi():
    """Scores or probabilities another node reads, or a softmax with an ALiBi bias, stay as they are."""
    out, _ = vit_like_attention(8, 4, 4, 2, 2, 1, True)
    sm = next(n for n in Graph(out).nodes if n.op == "soft_max_ext")
    assert passes.fuse_attention(Graph([out, Context().sum_rows(sm)])) == 0
    assert passes.fuse_attention(Graph([out, Context().sum_rows(sm.srcs[0])])) == 0
    out, _ = vit_like_attention(8, 4, 4, 2, 2, 1, True)
    next(n for n in Graph(out).nodes if n.op == "soft_max_ext").params["max_bias"] = 8.0
    assert passes.fuse_attention(Graph(out)) == 0
