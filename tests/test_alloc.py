"""Arena planner invariants (gallocr semantics) on random graphs, and reserve-once."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from npggml.graph.alloc import Arena, ArenaError, plan_graph
from npggml.graph.context import Context
from npggml.graph.graph import Graph
from npggml.graph.interp import Interpreter

UNARY = ["scale", "sqr", "gelu", "silu", "norm", "cont_t", "soft_max"]
BINARY = ["add", "mul", "concat_view"]


@st.composite
def random_graphs(draw):
    """A random DAG over [6, 4] tensors: in-place-able ops, non-in-place ops, views, copies."""
    ctx = Context()
    n_in = draw(st.integers(1, 3))
    nodes = [ctx.input("f32", (6, 4), f"in{i}") for i in range(n_in)]
    for k in range(draw(st.integers(1, 14))):
        kind = draw(st.sampled_from(UNARY + BINARY))
        a = draw(st.sampled_from(nodes))
        if kind == "scale":
            t = ctx.scale(a, 0.5)
        elif kind == "sqr":
            t = ctx.sqr(a)
        elif kind in ("gelu", "silu"):
            t = getattr(ctx, kind)(a)
        elif kind == "norm":
            t = ctx.norm(a, 1e-5)
        elif kind == "soft_max":
            t = ctx.soft_max_ext(a, None, 1.0, 0.0)
        elif kind == "cont_t":  # permute + cont: a view feeding a copy
            t = ctx.cont(ctx.transpose(ctx.cont(ctx.transpose(a))))
        elif kind == "concat_view":  # concat then a view back to [6, 4]
            c = ctx.concat(a, draw(st.sampled_from(nodes)), 1)
            t = ctx.view_2d(c, 6, 4, c.nb[1], draw(st.sampled_from([0, 4 * c.nb[1]])))
        else:
            t = getattr(ctx, kind)(a, draw(st.sampled_from(nodes)))
        nodes.append(t.set_name(f"n{k}"))
    outs = [nodes[-1]]
    extra = draw(st.sampled_from(nodes[n_in:]))
    if extra is not nodes[-1] and not extra.is_view:
        outs.append(extra)
    return Graph(outs), nodes[:n_in]


def _inputs(g, ins, seed=0):
    rng = np.random.default_rng(seed)
    return {t: rng.standard_normal((4, 6)).astype(np.float32) for t in ins if any(t is x for x in g.leafs)}


@given(random_graphs())
def test_live_buffers_never_overlap_and_views_cost_nothing(gi):
    g, _ = gi
    plan = plan_graph(g)
    for n in g.nodes:
        if n.is_view:
            assert id(n) not in plan.offsets
    items = list(plan.offsets)
    for i, a in enumerate(items):
        oa, sa = plan.offsets[a], plan.sizes[a]
        assert oa % 32 == 0 and oa + sa <= plan.size
        for b in items[i + 1 :]:
            ob, sb = plan.offsets[b], plan.sizes[b]
            if plan.inplace.get(a) == b or plan.inplace.get(b) == a:
                continue  # an in-place result shares its source's bytes by design
            if oa < ob + sb and ob < oa + sa:  # same bytes: lifetimes must be disjoint
                (fa, la), (fb, lb) = plan.lifetimes[a], plan.lifetimes[b]
                assert la < fb or lb < fa, (a, b, plan.lifetimes[a], plan.lifetimes[b])


@given(random_graphs())
def test_running_in_the_planned_arena_gives_the_same_values(gi):
    g, ins = gi
    values = _inputs(g, ins)
    expect = Interpreter(g).run(values)
    arena = Arena()
    got = Interpreter(g, plan=arena.reserve(g)).run(values)
    for e, o in zip(expect, got):
        np.testing.assert_array_equal(e, o)


def _chain(n_rows):
    ctx = Context()
    x = ctx.input("f32", (8, n_rows), "x")
    y = ctx.gelu(ctx.norm(ctx.add(x, x), 1e-5))
    return Graph(ctx.cont(ctx.transpose(ctx.mul(y, y)))), x


def test_reserve_once_fits_every_smaller_graph_without_new_allocations():
    arena = Arena()
    big, x = _chain(64)
    arena.reserve(big)
    assert arena.allocations == 1
    for rows in (1, 7, 32, 64):
        g, x = _chain(rows)
        plan = arena.plan(g)
        assert plan.size <= arena.nbytes
        (res,) = Interpreter(g, plan=plan).run({x: np.ones((rows, 8), np.float32)})
        assert res.shape[-2:] == (8, rows)
    assert arena.allocations == 1


def test_a_graph_larger_than_the_reserve_is_refused_or_re_reserved():
    small, _ = _chain(4)
    big, _ = _chain(64)
    arena = Arena()
    arena.reserve(small)
    with pytest.raises(ArenaError, match=r"needs an arena of \d+ bytes but \d+ bytes were reserved"):
        arena.plan(big)
    growing = Arena(grow=True)
    growing.reserve(small)
    growing.plan(big)
    assert growing.allocations == 2 and growing.nbytes >= plan_graph(big).size


def test_inplace_reuse_takes_the_dying_source():
    ctx = Context()
    x = ctx.input("f32", (8, 4), "x")
    a = ctx.norm(x, 1e-5)  # not in-place-able: new block
    b = ctx.scale(a, 2.0)  # in-place-able, a dies here: takes a's bytes
    c = ctx.norm(b, 1e-5)
    plan = plan_graph(Graph(c))
    assert plan.inplace.get(id(b)) == id(a)
    assert id(c) not in plan.inplace
