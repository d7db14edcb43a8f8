"""The debugging toolkit on small graphs and arrays: the verbosity ladder, trace/stats/strides lines, the
compare metrics, per-view splitting of dumps, and layer labels for the profile."""

import io
import re

import numpy as np
import pytest

import npggml
from npggml.graph import debug as dbg
from npggml.graph.compare import compare_arrays
from npggml.graph.context import Context
from npggml.graph.graph import Graph
from npggml.graph.interp import Interpreter
from npggml.graph.printer import stats_line, strides_line, summary, trace_line
from npggml.graph.profile import layer_labels, profile
from npggml.tools.trace import dump_shape, split_batch

X = np.arange(12, dtype=np.float32).reshape(3, 4)


def small_graph():
    ctx = Context()
    x = ctx.input("f32", (4, 3), "x")
    w = ctx.constant(np.arange(20, dtype=np.float32).reshape(5, 4), "w")
    y = ctx.mul_mat(w, x).set_name("y")
    z = ctx.add(y, ctx.constant(np.ones(5, np.float32), "b")).set_name("z")
    out = ctx.cont(ctx.permute(z, 1, 0, 2, 3)).set_name("out")
    return x, Graph(out)


def run_at(level, match=None, **hooks):
    """Run the small graph with reference kernels at a debug level; returns the normalised debug lines."""
    x, g = small_graph()
    buf = io.StringIO()
    with npggml.debug(level, match=match, stream=buf):
        Interpreter(g, fast=False).run({x: X}, **hooks)
    text = re.sub(r"\d+\.\d\d ms", "T ms", buf.getvalue())
    text = re.sub(r"in [\d.]+ s of kernels \([\d.]+ s wall, [\d.]+ GFLOP/s\)", "in T", text)
    return text.splitlines()


HEAD = "npggml debug: graph 4 nodes, 3 leafs, weights 100 B, arena 128 B, 135 FLOPs (0.00 GFLOP)"
TAIL = "npggml debug: ran 4/4 nodes in T; kernels: 3 ref, 0 fast, 1 view"
TRACE = [
    "[  0] y = MUL_MAT(w{4,5}, x{4,3}) -> {5,3} f32  T ms",
    "[  1] z = ADD(y{5,3}, b{5}) -> {5,3} f32  T ms",
    "[  2] z (permuted) = PERMUTE(z{5,3}) -> {3,5} f32  T ms",
    "[  3] out = CONT(z (permuted){3,5}) -> {3,5} f32  T ms",
]
STATS = [
    "      min=14 max=670 mean=214 std=190.662 nan=0",
    "      min=15 max=671 mean=215 std=190.662 nan=0",
    "      min=15 max=671 mean=215 std=190.662 nan=0",
    "      min=15 max=671 mean=215 std=190.662 nan=0",
]
STRIDES = [
    "      kernel=ref nb={4,20,60,60}",
    "      kernel=ref nb={4,20,60,60}",
    "      kernel=view nb={20,4,60,60} view of z+0",
    "      kernel=ref nb={4,12,60,60}",
]


def test_ladder_levels_golden():
    assert run_at(0) == []
    assert run_at(1) == [HEAD, TAIL]
    assert run_at(2) == [HEAD, *TRACE, TAIL]
    assert run_at(3) == [HEAD, *[ln for pair in zip(TRACE, STATS) for ln in pair], TAIL]
    assert run_at(4) == [HEAD, *[ln for t in zip(TRACE, STATS, STRIDES) for ln in t], TAIL]


def test_ladder_name_filter_and_user_hooks_keep_the_protocol():
    asked, seen = [], []

    def ask(node):
        asked.append(node.name)
        return node.name == "z"

    def observe(node, value, seconds):
        seen.append(node.name)
        return False  # stop after z

    lines = run_at(2, match="y,z*", ask=ask, observe=observe)
    # the user's ask saw every node up to the stop, its observe only z; the ladder printed the matched nodes
    assert asked == ["y", "z"] and seen == ["z"]
    assert lines == [HEAD, TRACE[0], TRACE[1], TAIL.replace("4/4", "2/4").replace("3 ref", "2 ref")
                     .replace("1 view", "0 view")]


def test_env_level_and_context_manager_override(monkeypatch, capsys):
    x, g = small_graph()
    monkeypatch.setenv("NPGGML_DEBUG", "2")
    monkeypatch.setenv("NPGGML_DEBUG_MATCH", "out")
    Interpreter(g, fast=False).run({x: X})
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and err[1].startswith("[  3] out = CONT(")
    with npggml.debug(0):
        Interpreter(g, fast=False).run({x: X})
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("NPGGML_DEBUG", "loud")
    with pytest.raises(npggml.NpggmlError, match="NPGGML_DEBUG must be an integer"):
        Interpreter(g).run({x: X})
    with pytest.raises(npggml.NpggmlError, match="0..4"):
        with npggml.debug(7):
            pass


def test_level_zero_attaches_nothing(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("attach called at level 0")

    monkeypatch.setattr(dbg, "attach", boom)
    monkeypatch.delenv("NPGGML_DEBUG", raising=False)
    x, g = small_graph()
    (res,) = Interpreter(g).run({x: X})
    assert res.shape == (1, 1, 5, 3)
    with npggml.debug(1), pytest.raises(AssertionError, match="attach called"):
        Interpreter(g).run({x: X})


def test_trace_stats_strides_lines_golden():
    _, g = small_graph()
    y, _, perm, out = g.nodes
    assert trace_line(57, y, 0.00041) == "[ 57] y = MUL_MAT(w{4,5}, x{4,3}) -> {5,3} f32  0.41 ms"
    assert stats_line(np.array([1.0, np.nan, 3.0])) == "      min=1 max=3 mean=2 std=1 nan=1"
    assert stats_line(np.array([np.nan])) == "      min=nan max=nan mean=nan std=nan nan=1"
    assert strides_line(perm, "view") == "      kernel=view nb={20,4,60,60} view of z+0"
    assert strides_line(out, "fast") == "      kernel=fast nb={4,12,60,60}"


def test_name_filter():
    f = dbg.name_filter("sam_layer_out-*, layer_out-23")
    assert f("sam_layer_out-3") and f("layer_out-23") and not f("layer_out-2") and not f("Layer_out-23")
    assert dbg.name_filter(None)("anything") and dbg.name_filter(" , ")("x")


# --- compare metrics --------------------------------------------------------------------------------
def test_compare_arrays_metrics():
    b = np.array([[1.0, -2.0], [4.0, 0.5]], np.float32)
    a = b.copy()
    a[1, 0] = 4.1
    r = compare_arrays("t", a, b, rtol=1e-3, atol=0.0)
    assert r.max_abs == pytest.approx(0.1, rel=1e-5) and r.max_rel == pytest.approx(0.1 / 4, rel=1e-5)
    assert r.nmse == pytest.approx(0.01 / (1 + 4 + 16 + 0.25), rel=1e-4)
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    cos = float(a64 @ b64 / np.linalg.norm(a64) / np.linalg.norm(b64))
    assert r.cosine == pytest.approx(cos, rel=1e-9) and r.bound == pytest.approx(4e-3) and r.diverged
    assert not compare_arrays("t", a, b, rtol=0.03, atol=0.0).diverged  # 0.1 <= 0.03 * 4
    assert not compare_arrays("t", a, b, rtol=0.0, atol=0.11).diverged
    same = compare_arrays("t", b, b)
    assert same.max_abs == 0 and same.nmse == 0 and same.cosine == pytest.approx(1.0) and not same.diverged


def test_compare_arrays_nan_and_shape():
    b = np.array([1.0, np.nan, 2.0])
    assert not compare_arrays("t", b.copy(), b).diverged  # NaN where the reference has NaN agrees
    a = np.array([1.0, 0.0, np.nan])
    r = compare_arrays("t", a, b)
    assert r.diverged and r.max_abs == np.inf and "NaN" in r.note
    r = compare_arrays("t", np.zeros((3, 4)), np.zeros((4, 3)))
    assert r.diverged and "shape mismatch" in r.note and "(3, 4)" in r.note


# --- dump layout --------------------------------------------------------------------------------------
def test_dump_shape_drops_trailing_unit_ne_dims():
    assert dump_shape((32, 40, 40, 1)) == (40, 40, 32)
    assert dump_shape((64, 1, 3, 1)) == (3, 1, 64)
    assert dump_shape((1, 1, 1, 1)) == (1,)


def test_split_batch_follows_the_batch_slowest_layout():
    rng = np.random.default_rng(0)
    sam = rng.standard_normal((6, 40, 40, 32))  # v1 [32,40,40,B=6], view = tile row 1 = tiles 3..5
    np.testing.assert_array_equal(split_batch(sam, 3, 6, 6), sam[3:6])
    flat = rng.standard_normal((606, 64))  # pre_ln [64, 101*B] flattened
    assert split_batch(flat, 0, 3, 6).shape == (303, 64)
    weave = rng.standard_normal((2, 310, 48))  # [n_embd, tokens, R rows]: one row per view, unit dim dropped
    np.testing.assert_array_equal(split_batch(weave, 3, 6, 6), weave[1])
    v2 = rng.standard_normal((6, 48, 48, 32))  # v2 tile 4 alone
    np.testing.assert_array_equal(split_batch(v2, 4, 5, 6), v2[4])
    assert split_batch(rng.standard_normal((101, 64)), 0, 3, 6) is None  # a shared table cannot be cut


# --- profile --------------------------------------------------------------------------------------------
def test_layer_labels_inherit_through_unnamed_nodes_and_stop_at_layer_outputs():
    ctx = Context()
    x = ctx.input("f32", (8, 4), "x")
    q = ctx.scale(x, 2.0).set_name("Qcur-0")
    qp = ctx.cont(ctx.permute(q, 1, 0, 2, 3))  # "Qcur-0 (permuted) (cont)"
    s0 = ctx.add(ctx.cont(ctx.permute(qp, 1, 0, 2, 3)), x).set_name("sam_layer_out-0")
    neck = ctx.scale(s0, 0.5)  # consumes a layer output: "other"
    f = ctx.scale(neck, 3.0).set_name("ffn_out-0")
    l0 = ctx.add(f, neck).set_name("layer_out-0")
    g = Graph(ctx.scale(l0, 1.0))
    labels = dict(zip((n.name for n in g.nodes), layer_labels(g)))
    assert labels["Qcur-0"] == labels["Qcur-0 (permuted) (cont)"] == labels["sam_layer_out-0"] == "sam_layer-0"
    assert labels["ffn_out-0"] == labels["layer_out-0"] == "layer-0"
    assert labels[neck.name] == labels[g.nodes[-1].name] == "other"
    grouped = layer_labels(g, {id(q): "tiles"})
    assert grouped[0] == "tiles/sam_layer-0" and grouped[-1] == "page/other"


def test_profile_totals_are_sums_over_nodes():
    x, g = small_graph()
    interp = Interpreter(g, fast=False)
    interp.run({x: X})
    ops, layers, total = profile(g, interp.times, interp.kernel_used)
    assert total.nodes == 4 and total.flops == summary(g)["flops"] == 135
    assert sum(r.flops for r in ops) == sum(r.flops for r in layers) == 135
    assert sum(r.seconds for r in ops) == pytest.approx(sum(interp.times))
    assert {r.key: r.nodes for r in ops} == {"MUL_MAT": 1, "ADD": 1, "PERMUTE": 1, "CONT": 1}
    assert total.ref == 3 and total.fast == 0
