"""Graph construction, the interpreter's hooks and errors, printing."""

import numpy as np
import pytest

import npggml
from npggml.graph.context import Context
from npggml.graph.graph import Graph
from npggml.graph.interp import Interpreter, bf16_to_f32, f32_to_bf16
from npggml.graph.printer import table, to_dot, trace_line


def small_graph():
    ctx = Context()
    x = ctx.input("f32", (4, 3), "x")
    w = ctx.constant(np.arange(20, dtype=np.float32).reshape(5, 4), "w")
    y = ctx.mul_mat(w, x).set_name("y")
    z = ctx.add(y, ctx.constant(np.ones(5, np.float32), "b")).set_name("z")
    out = ctx.cont(ctx.permute(z, 1, 0, 2, 3)).set_name("out")
    return ctx, x, w, out


def test_graph_order_is_post_order_from_outputs():
    _, x, w, out = small_graph()
    g = Graph(out)
    names = [n.name for n in g.nodes]
    assert names == ["y", "z", "z (permuted)", "out"]
    assert [t.name for t in g.leafs] == ["w", "x", "b"]


def test_interpreter_computes_and_hooks_follow_eval_callback_protocol():
    _, x, w, out = small_graph()
    g = Graph(out)
    xv = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    asked, seen = [], []

    def ask(node):
        asked.append(node.name)
        return node.name in ("z", "out")

    def observe(node, value, seconds):
        seen.append((node.name, value.shape))
        return True

    (res,) = Interpreter(g).run({x: xv}, ask=ask, observe=observe)
    expect = (xv @ w.data.T + 1).T
    np.testing.assert_allclose(res, expect.reshape(res.shape), rtol=1e-6)
    assert asked == [n.name for n in g.nodes]
    assert seen == [("z", (1, 1, 3, 5)), ("out", (1, 1, 5, 3))]  # values are 4-D: reversed(ne)


def test_observe_returning_false_stops_the_run():
    _, x, _, out = small_graph()
    g = Graph(out)
    interp = Interpreter(g)
    seen = []
    interp.run({x: np.zeros((3, 4), np.float32)}, ask=lambda n: True,
               observe=lambda n, v, s: seen.append(n.name) or n.name != "z")
    assert seen == ["y", "z"]


def test_shape_error_names_op_inputs_and_builder_line():
    ctx = Context()
    a = ctx.input("f32", (4, 3), "a")
    b = ctx.input("f32", (5, 3), "b")
    with pytest.raises(npggml.ShapeError) as e:
        ctx.mul_mat(a, b)
    msg = str(e.value)
    assert "mul_mat" in msg and "a{4,3}" in msg and "b{5,3}" in msg and "test_core.py:" in msg


def test_missing_input_is_a_clear_error():
    _, x, _, out = small_graph()
    with pytest.raises(npggml.NpggmlError, match="'x'.*not set"):
        Interpreter(Graph(out)).run({})


def test_kernel_error_names_node_and_builder_line():
    ctx = Context()
    table_ = ctx.constant(np.zeros((3, 4), np.float32), "table")
    idx = ctx.input("i32", (2,), "idx")
    rows = ctx.get_rows(table_, idx).set_name("rows")
    with pytest.raises(npggml.KernelError) as e:
        Interpreter(Graph(rows)).run({idx: np.array([0, 7], np.int32)})
    msg = str(e.value)
    assert "rows" in msg and "GET_ROWS" in msg and "table{4,3}" in msg and "test_core.py:" in msg


def test_trace_line_and_table_golden():
    _, x, _, out = small_graph()
    g = Graph(out)
    assert trace_line(0, g.nodes[0], 0.00041) == "[  0] y = MUL_MAT(w{4,5}, x{4,3}) -> {5,3} f32  0.41 ms"
    assert trace_line(3, g.nodes[3]) == "[  3] out = CONT(z (permuted){3,5}) -> {3,5} f32"
    assert table(g).splitlines() == [
        "#  name          op       inputs             ne     type  arena  flops  bytes",
        "0  y             MUL_MAT  w{4,5}, x{4,3}     {5,3}  f32   -      120    60",
        "1  z             ADD      y{5,3}, b{5}       {5,3}  f32   -      15     60",
        "2  z (permuted)  PERMUTE  z{5,3}             {3,5}  f32   view   0      0",
        "3  out [o]       CONT     z (permuted){3,5}  {3,5}  f32   -      0      60",
    ]
    dot = to_dot(g)
    assert dot.startswith("digraph G {") and '"leaf_0" -> "node_0" [ label = "src 0"; ]' in dot


def test_bf16_round_trip_rounds_to_nearest_even():
    x = np.array([1.0, 1.00390625, 1.01171875, -2.5, np.inf], np.float32)
    assert np.array_equal(bf16_to_f32(f32_to_bf16(x)), np.array([1.0, 1.0, 1.015625, -2.5, np.inf], np.float32))
    nan = f32_to_bf16(np.array([np.nan], np.float32))
    assert np.isnan(bf16_to_f32(nan))[0]


def test_view_of_dequantised_weight_uses_stored_type_offsets():
    ctx = Context()
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    w = ctx.constant(data, "w16", dtype="f16")  # stored f16, held as f32
    v = ctx.view_2d(w, 2, 2, w.nb[1], 2 * 2)  # offset of 2 f16 elements
    out = ctx.cont(v)
    (res,) = Interpreter(Graph(out)).run({})
    np.testing.assert_array_equal(res.reshape(2, 2), data[:2, 2:4])
