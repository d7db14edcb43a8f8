"""The row passes of `npggml.graph.fuse`: a linear layer moved past the copies that crop its rows
(`move_linear_past_crop`), a product of padded / moved rows -> `mul_mat_rows` over the value itself
(`gather_linear_rows`), the row-by-row computation of a `mul_mat_rows` operand on the picked rows only
(`compute_picked_rows`). `npggml.graph.fuse` runs them with the other passes and describes them all."""

from __future__ import annotations

import numpy as np

from npggml.graph.context import Context
from npggml.graph.graph import Graph, only_user, sole_user
from npggml.graph.interp import Interpreter
from npggml.graph.tensor import Tensor
from npggml.ops import registry
from npggml.ops.registry import is_row

# ops that can only move rows about (and reshape them), never mix the elements of different rows
ROW_MOVES = frozenset({"cont", "permute", "reshape", *(f"{k}_{n}d" for k in ("cont", "reshape", "view")
                                                        for n in range(1, 5))})


def _moves_rows(t: Tensor, c: int) -> bool:
    """t, reading a value made of rows of c floats (packed), holds whole rows of it: each of its own rows is a
    run of whole c-float rows (unit stride, a multiple of c long, offset and other strides multiples of c
    floats) and a permute keeps dim 0. A copy (`cont`) of such a tensor is packed, made of whole rows again."""
    if t.op not in ROW_MOVES or t.dtype != "f32" or t.ne[0] % c:
        return False
    if t.op == "permute" and t.params["axis0"] != 0:
        return False
    row = 4 * c
    return not t.is_view or (t.nb[0] == 4 and t.view_offs % row == 0
                             and all(nb % row == 0 for ne, nb in zip(t.ne[1:], t.nb[1:]) if ne > 1))


def _linear(t: Tensor, users: dict[int, list[Tensor]]) -> tuple[Tensor, Tensor | None, Tensor] | None:
    """(mul_mat, bias, x) if t is `mul_mat(w, x)` or `add(mul_mat(w, x), b)` (b one row, the product read by the
    add alone) with w one square f32-output matrix and x packed (so like the product): the rows of t are a function
    of the rows of x alone, each the same function."""
    mm, b = t, None
    if t.op == "add" and not t.is_view and t.srcs[0].op == "mul_mat" and only_user(t.srcs[0], t, users):
        mm, b = t.srcs
        if not is_row(b, mm.ne[0]):
            return None
    if mm.op != "mul_mat" or mm.is_view or mm.dtype != "f32":
        return None
    w, x = mm.srcs
    square = w.ne[0] == w.ne[1] and w.ne[2] == w.ne[3] == 1
    if not square or x.dtype != "f32" or not x.is_contiguous():
        return None
    return mm, b, x


def move_linear_past_crop(graph: Graph) -> int:
    """Rewrite every linear layer (a square weight, with or without a bias row) whose value is then only moved
    about row by row and cropped (SAM's window unpartition drops the windows' padding) so that the moves run
    first, on the layer's input, and the layer on the rows that remain: the same rows, each computed the same
    way, without the products of the rows that are thrown away. The last copy of the moves becomes the layer
    (named as that copy, whose value it now computes); returns the number rewritten."""
    users = graph.consumers()
    n = 0
    for top in list(graph.nodes):
        lin = _linear(top, users)
        if lin is None:
            continue
        mm, b, x = lin
        chain, t = [], top
        while (u := sole_user(t, users)) is not None and _moves_rows(u, top.ne[0]):
            chain.append(u)
            t = u
        while chain and chain[-1].is_view:  # the moves end with their last copy, which becomes the layer
            chain.pop()
        if not chain or chain[-1].nelements >= top.nelements or chain[-1].ne[0] != top.ne[0]:
            continue
        last = chain[-1]
        ctx = Context()
        cur = x
        for u in chain:  # named by their rules, after x: `kqv_out-3 (reshaped) (cont)`
            if u.op == "cont" and cur.is_contiguous():
                continue  # a copy of packed rows: the rows as they are
            cur = ctx.build(registry.get(u.op), cur, **u.params)
        if b is None:
            last.op, last.srcs, last.params = "mul_mat", (mm.srcs[0], cur), {}
        else:
            last.op, last.srcs, last.params = "add", (ctx.mul_mat(mm.srcs[0], cur).set_name(mm.name), b), {}
        n += 1
    return n


def _one_float_a_row(u: Tensor, c: int) -> dict | None:
    """The params of the row move or pad u (over rows of c floats) for the same move over rows of one float:
    dim 0's size divided by c, strides and offsets by 4c bytes; None for a move that cannot be scaled (`reshape`
    takes a shape tensor, a stride that is not a multiple of a row)."""
    if u.op == "reshape":
        return None
    params = dict(u.params)
    for key, v in u.params.items():
        unit = c if key == "ne0" else 4 * c if key.startswith(("nb", "offset")) else None
        if unit is not None:
            if v % unit:
                return None
            params[key] = v // c
    return params


PADS = frozenset({"pad", "pad_ext"})


def _pads_rows(t: Tensor, c: int) -> bool:
    """t zero-pads a value made of rows of c floats with whole rows (dim 0 untouched)."""
    p = t.params
    return (t.op in PADS and t.dtype == "f32" and t.ne[0] % c == 0
            and not (p["p0"] if t.op == "pad" else p["lp0"] or p["rp0"]))


def _row_numbers(chain: list[Tensor], moves: list[dict], b: Tensor, c: int) -> np.ndarray:
    """Which row of b (rows of c floats, counted in memory order) each row at the end of `chain` holds, -1 for a
    padding row: the same moves and pads (`moves`: their params at one float a row) run on b's row numbers
    (exact below 2**24 rows)."""
    n = b.nelements // c
    ctx = Context()
    cur = ctx.constant(np.arange(1, n + 1, dtype=np.float32).reshape(b.shape[:-1] + (b.ne[0] // c,)), "rows")
    for u, params in zip(chain, moves):
        cur = ctx.build(registry.get(u.op), cur, **params)
    value = Interpreter(Graph([ctx.cont(cur)]), numerics="exact", fast=False).run()[0]
    return (value.astype(np.int64) - 1).astype(np.int32).reshape(value.shape[:-1])


def gather_linear_rows(graph: Graph) -> int:
    """Rewrite every product `mul_mat(w, x)` (w one matrix) whose operand x is a value b padded with zero rows
    and / or moved about row by row (SAM's window partition: a pad, then a permuted copy) into
    `mul_mat_rows(w, b, rows)` with the row numbers of the moves as a constant: the pads and copies go, and the
    fast kernel does not multiply the padding rows. b is the last packed value on the way down from x (a moved
    projection's operand goes back to the attention output's token rows, not past them to its heads). Returns
    the number rewritten."""
    users = graph.consumers()
    n = 0
    for mm in list(graph.nodes):
        if mm.op != "mul_mat" or mm.is_view or mm.dtype != "f32":
            continue
        w, x = mm.srcs
        c = w.ne[0]
        if w.ne[2] != 1 or w.ne[3] != 1 or x.dtype != "f32":
            continue
        chain, t = [], x
        while (_moves_rows(t, c) or _pads_rows(t, c)) and sole_user(t, users) is (chain[0] if chain else mm):
            chain.insert(0, t)
            t = t.srcs[0]
        while chain and not (t.is_contiguous() and t.ne[0] % c == 0):  # read the last packed value on the way
            t = chain.pop(0)
        moves = [_one_float_a_row(u, c) for u in chain]
        if not any(u.op in PADS or not u.is_view for u in chain) or None in moves or t.nelements // c >= 1 << 24:
            continue  # nothing is copied (the product reads t itself already), or a move without a row form
        rows = Context().constant(_row_numbers(chain, moves, t, c), "rows").set_name(f"{mm.name} rows")
        mm.op, mm.srcs, mm.params = "mul_mat_rows", (w, t, rows), {}
        n += 1
    return n


# ops whose row r is the same function of row r of the sources listed (the others are one row, or a weight; a
# binary op's second source may be one row too)
ROW_WISE = {"add": (0, 1), "sub": (0, 1), "mul": (0, 1), "div": (0, 1), "add_res": (0, 2), "add_act": (0,),
            "norm_affine": (0,), "swiglu_split": (0, 1), "mul_mat": (1,), "norm": (0,), "rms_norm": (0,),
            **{u: (0,) for u in ("gelu", "gelu_erf", "gelu_quick", "silu", "scale")},
            **{f"reshape_{n}d": (0,) for n in range(2, 5)}}
BINARY = frozenset({"add", "sub", "mul", "div"})


def _row_sources(t: Tensor, n_rows: int) -> list[int] | None:
    """Which sources hold t's rows if t is computed row by row (`ROW_WISE`), t and those sources packed f32
    values of n_rows rows each (a reshape keeping the rows' length), every other source one row or one matrix
    (a product's weight); else None."""
    if t.op not in ROW_WISE or t.dtype != "f32" or t.nelements != t.ne[0] * n_rows:
        return None
    if t.is_view and not (t.op.startswith("reshape") and t.ne[0] == t.srcs[0].ne[0]):
        return None
    which = [i for i in ROW_WISE[t.op] if not (t.op in BINARY and i == 1 and t.srcs[1].ne[1:] == (1, 1, 1))]
    for i, s in enumerate(t.srcs):
        if s is None:
            continue
        if i in which:
            if s.dtype != "f32" or not s.is_contiguous() or s.nelements != s.ne[0] * n_rows:
                return None
        elif not (s.ne[2] == s.ne[3] == 1 and (t.op == "mul_mat" or s.ne[1] == 1)):
            return None
    return which


def _region(graph: Graph, b: Tensor, mm: Tensor, n_rows: int, users) -> list[tuple[Tensor, list[int]]]:
    """The nodes whose picked rows are all that `mm` needs, in graph order, with their row sources: b and, from it
    upwards, every node computed row by row (`_row_sources`) that only nodes of the region or mm read (not a graph
    output)."""
    outputs = {id(t) for t in graph.outputs}
    region, pending = {}, {id(b): b}
    while pending:  # the latest node first: its readers are all decided by then
        t = pending.pop(max(pending, key=lambda k: graph.index.get(k, -1)))
        which = _row_sources(t, n_rows)
        readers = users.get(id(t), [])
        if which is None or id(t) in outputs or not all(id(u) in region or u is mm for u in readers):
            continue
        region[id(t)] = (t, which)
        pending.update((id(s), s) for s in (t.srcs[i] for i in which) if id(s) not in region)
    return sorted(region.values(), key=lambda tw: graph.index[id(tw[0])]) if id(b) in region else []


def _on_rows(region: list[tuple[Tensor, list[int]]], picked: np.ndarray, n_rows: int) -> Tensor:
    """The region's nodes built again on the picked rows (2-D, `[ne0, picked]`); returns the last one's."""
    ctx = Context()
    at = ctx.constant(picked.astype(np.int32), "picked rows")
    new: dict[int, Tensor] = {}

    def rows_of(s: Tensor) -> Tensor:
        if id(s) not in new:  # a value from outside the region: its picked rows
            flat = s if s.ne[1:] == (n_rows, 1, 1) else ctx.reshape_2d(s, s.ne[0], n_rows)
            new[id(s)] = ctx.get_rows(flat, at).set_name(f"{s.name} (rows)")
        return new[id(s)]

    for t, which in region:
        if t.op.startswith("reshape"):  # the same rows
            new[id(t)] = rows_of(t.srcs[0])
            continue
        srcs = [rows_of(s) if i in which else s for i, s in enumerate(t.srcs)]
        new[id(t)] = ctx.build(registry.get(t.op), *srcs, **t.params).set_name(f"{t.name} (rows)")
    return new[id(region[-1][0])]


def compute_picked_rows(graph: Graph) -> int:
    """Rewrite every product of picked rows `mul_mat_rows(w, b, rows)` (row numbers a constant) whose operand b is
    computed row by row and that picks fewer rows than b has, so that b's row-by-row computation (`_region`) runs
    on the picked rows only: each node of it on the picked rows of its sources, the values it reads from elsewhere
    picked by `get_rows`, the product's row numbers counted among the picked rows. v2's encoder keeps only the
    query tokens' rows: its last layer's attention output projection, MLP and norms then skip the image tokens'.
    Returns the number rewritten."""
    users = graph.consumers()
    n = 0
    for mm in list(graph.nodes):
        if mm.op != "mul_mat_rows" or mm.is_view or mm.srcs[2].data is None:
            continue
        w, b, rows = mm.srcs
        idx = np.asarray(rows.data)
        n_rows = b.nelements // w.ne[0]
        picked = np.unique(idx[idx >= 0])
        if b.ne[0] != w.ne[0] or picked.size >= n_rows or not only_user(b, mm, users):
            continue
        region = _region(graph, b, mm, n_rows, users)
        if not region:
            continue
        at_picked = np.where(idx >= 0, np.searchsorted(picked, idx), -1).astype(np.int32)
        mm.srcs = (w, _on_rows(region, picked, n_rows), Context().constant(at_picked, rows.name))
        n += 1
    return n
