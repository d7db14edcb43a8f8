"""Graph rewrite passes: replace sub-graphs by fused ops that compute the same value with less memory/time.

`fuse(graph)` runs every pass and returns a new `Graph` over the same outputs; the matched nodes are rewritten in
place (the node whose value the sub-graph produced becomes the fused node, so consumers and views of it are
untouched), and the nodes only the sub-graph used drop out of the new graph. Each pass returns how many
patterns it replaced; `fuse(..., report=dict)` collects the counts.

Passes:
- `fuse_sam_attention`: SAM attention with decomposed relative positions,
  `mul_mat(v, soft_max_ext(mul_mat(k, q), reshape_4d(add(repeat_4d(rel_w), rel_h)), scale))`
  -> `sam_rel_attn(q, k, v, rel_w, rel_h, scale)` (see `npggml.ops.fast.sam_attn`).
- `fuse_rel_pos`: the two rel-pos factors of a `sam_rel_attn` when they are SAM's chains from its own queries
  (copies of q regrouped by grid row and column, a batched product with the picked table rows
  `get_rows(table, indices)`, a copy of the columns' result) -> two `sam_rel_pos(q, table, indices)` nodes. Their
  reference kernel is the replaced product's kernel on that product's operands: the same bits.
- `move_linear_past_crop`: a linear layer (one square weight, a bias row or none) whose value is then only moved
  about row by row and cropped (SAM's window unpartition drops the windows' padding) -> the moves first, then the
  layer on the rows that remain (SAM's output projection skips the padding: 9-26 % of its rows). The same rows,
  each computed the same way, but BLAS rounds a row by where it sits in the matrix: the unfused graph's values to
  float rounding, not bit for bit, so `fuse(..., same_bits=True)` skips it (the Encoder with the reference kernels
  or under ggml numerics).
- `gather_linear_rows`: a product `mul_mat(w, x)` (w one matrix) whose operand x is a value padded with zero rows
  and / or moved about row by row (SAM's window partition: a pad to whole windows, then a permuted copy)
  -> `mul_mat_rows(w, b, rows)` over the value b itself, with x's row numbers as a constant: the pad and the copy
  go, and the fast kernel multiplies only the rows that are not padding (9-26 % of the windowed layers' qkv rows);
  the same takes the unpartition's and the crop's copies before the projection `move_linear_past_crop` moved.
  With the reference kernels and under ggml numerics the gathered operand is the unfused one, bit for bit; the
  fast reference-mode kernel multiplies the rows packed, which rounds differently (BLAS, as above): `same_bits`
  skips it.
- `fuse_norm_affine`: a layer norm's scale and shift, `add(mul(norm(a), w), b)` (or `rms_norm`, or no add) with
  w and b one row each -> `norm_affine(a, w, b, eps, rms)`: one pass over the rows instead of three. The fused
  node keeps the name of the node it replaces (`norm_b-3`, `ffn_inp_normed-3`): the same value, bit for bit.
- `fuse_bias_act`: a linear layer's bias and activation, `gelu_erf(add(x, b))` (or `gelu_quick`) with b one row
  -> `add_act(x, b, act)`, named as the activation node (`ffn_gelu_erf-3`): one pass instead of two.
- `fuse_bias_residual`: a linear layer's bias and the residual add after it, `add(add(x, b), y)` (either order of
  the outer add) with b one row and y of x's shape -> `add_res(x, b, y)`, named as the residual add
  (`sam_layer_out-3`): one pass instead of two.
- `elide_copies`: an operand of `sam_rel_attn`, `sam_rel_pos` or `cont` that is a copy (`cont`), or a reshape /
  permute / view of one, re-read as one strided view of the tensor the copy was taken from, when that is possible:
  SAM's q, k and v then read the qkv product itself, and their four copies a layer (q, k, v, v transposed) drop
  out. The reading node gets the same values, bit for bit; only where it reads them from changes.
"""

from __future__ import annotations

import re

import numpy as np

from npggml.graph.context import Context
from npggml.graph.graph import Graph
from npggml.graph.interp import Interpreter
from npggml.graph.tensor import OUTPUT, Tensor
from npggml.ops import registry
from npggml.ops.elementwise import BIAS_ACTS
from npggml.ops.registry import is_row


def _only_user(t: Tensor, user: Tensor, users: dict[int, list[Tensor]]) -> bool:
    """t is read by `user` alone and is not a graph output."""
    return _sole_user(t, users) is user


def _sole_user(t: Tensor, users: dict[int, list[Tensor]]) -> Tensor | None:
    """The one node that reads t, if t is not also a graph output."""
    u = users.get(id(t), [])
    return u[0] if len(u) == 1 and not (t.flags & OUTPUT) else None


def _fused_name(kqv: Tensor, users: dict[int, list[Tensor]], fallback: int) -> str:
    """`sam_rel_attn-<il>` with the layer taken from the `kqv_out-<il>` node downstream, if there is one."""
    frontier = [kqv]
    for _ in range(3):
        nxt = []
        for t in frontier:
            for u in users.get(id(t), []):
                m = re.fullmatch(r"kqv_out-(\d+)", u.name)
                if m:
                    return f"sam_rel_attn-{m.group(1)}"
                nxt.append(u)
        frontier = nxt
    return f"sam_rel_attn#{fallback}"


def match_sam_attention(kqv: Tensor, users: dict[int, list[Tensor]]) -> tuple | None:
    """The sources of the fused op if `kqv` is the top of the SAM rel-pos attention pattern, else None."""
    if kqv.op != "mul_mat" or kqv.is_view:
        return None
    v, sm = kqv.srcs
    if sm is None or sm.op != "soft_max_ext" or sm.params.get("max_bias", 0.0) != 0.0:
        return None
    kq, mask = sm.srcs
    if kq is None or kq.op != "mul_mat" or mask is None or mask.op != "reshape_4d":
        return None
    add = mask.srcs[0]
    if add.op != "add" or add.is_view:
        return None
    rep, rel_h = add.srcs
    if rep.op not in ("repeat_4d", "repeat") or rep.is_view:
        return None
    rel_w = rep.srcs[0]
    k, q = kq.srcs
    W, Hh = rel_w.ne[0], rel_h.ne[1]
    D, Nq, H, B = q.ne
    Nk = k.ne[1]
    shapes_ok = (rel_w.ne == (W, 1, Nq, H * B) and rel_h.ne == (1, Hh, Nq, H * B)
                 and rep.ne == (W, Hh, Nq, H * B) and mask.ne == (Nk, Nq, H, B) and W * Hh == Nk
                 and kq.ne == (Nk, Nq, H, B))
    if not shapes_ok:
        return None
    for t, user in ((sm, kqv), (kq, sm), (mask, sm), (add, mask), (rep, add)):
        if not _only_user(t, user, users):
            return None
    return (q, k, v, rel_w, rel_h), {"scale": sm.params["scale"]}


def fuse_sam_attention(graph: Graph) -> int:
    """Rewrite every SAM rel-pos attention in `graph` into `sam_rel_attn`; returns the number rewritten."""
    d = registry.get("sam_rel_attn")
    users = graph.consumers()
    n = 0
    for node in list(graph.nodes):
        m = match_sam_attention(node, users)
        if m is None:
            continue
        srcs, params = m
        res = d.rule(*srcs, **params)
        if tuple(res.ne) != node.ne or res.dtype != node.dtype:
            continue
        node.name = _fused_name(node, users, n)
        node.op, node.srcs, node.params = d.name, srcs, params
        n += 1
    return n


SWAP12 = (0, 2, 1, 3)  # the permute that swaps dims 1 and 2


def _is_op(t: Tensor | None, op: str, axes: tuple | None = None) -> bool:
    """t is an `op` node (a permute of `axes`, if given)."""
    if t is None or t.op != op:
        return False
    return axes is None or tuple(t.params[f"axis{i}"] for i in range(4)) == axes


def _picked_table(a: Tensor) -> tuple[Tensor, Tensor] | None:
    """(tab, idx) if a is `reshape_3d(get_rows(tab, reshape_1d(idx)))`, SAM's picked rel-pos table [D, S, S] with
    idx [S, S]."""
    if not _is_op(a, "reshape_3d") or not _is_op(a.srcs[0], "get_rows"):
        return None
    tab, flat = a.srcs[0].srcs
    if not _is_op(flat, "reshape_1d"):
        return None
    idx = flat.srcs[0]
    S = idx.ne[0]
    ok = (a.ne == (tab.ne[0], S, S, 1) and idx.ne == (S, S, 1, 1) and idx.dtype == "i32" and idx.is_contiguous()
          and tab.dtype in ("f32", "f16", "bf16") and tab.ne[2] == tab.ne[3] == 1 and tab.is_contiguous())
    return (tab, idx) if ok else None


def match_rel_pos(attn: Tensor) -> tuple | None:
    """((tab_w, idx_w), (tab_h, idx_h), width) if the rel-pos factors of the `sam_rel_attn` node `attn` are SAM's
    chains from its own queries q = permute(Q, SWAP12) (`models.sam`): qr = reshape_4d(cont(permute(Q, SWAP12))),
    the queries as a grid [D, W, Hh, H*B];
    rel_w = reshape_4d(cont(permute(mul_mat(table_w, cont(permute(qr, SWAP12))), SWAP12))) and
    rel_h = reshape_4d(mul_mat(table_h, qr)), each table `_picked_table`; else None."""
    q, rel_w, rel_h = attn.srcs[0], attn.srcs[3], attn.srcs[4]
    if not (_is_op(q, "permute", SWAP12) and _is_op(rel_w, "reshape_4d") and _is_op(rel_h, "reshape_4d")):
        return None
    mm_h = rel_h.srcs[0]
    c = rel_w.srcs[0]
    if not (_is_op(mm_h, "mul_mat") and _is_op(c, "cont") and _is_op(c.srcs[0], "permute", SWAP12)):
        return None
    mm_w = c.srcs[0].srcs[0]
    if not _is_op(mm_w, "mul_mat"):
        return None
    qr = mm_h.srcs[1]
    xw = mm_w.srcs[1]
    if not (_is_op(xw, "cont") and _is_op(xw.srcs[0], "permute", SWAP12) and xw.srcs[0].srcs[0] is qr):
        return None
    if not (_is_op(qr, "reshape_4d") and _is_op(qr.srcs[0], "cont")):
        return None
    pq = qr.srcs[0].srcs[0]
    if not (_is_op(pq, "permute", SWAP12) and pq.srcs[0] is q.srcs[0]):
        return None
    D, N, H, B = q.ne
    W, Hh = qr.ne[1], qr.ne[2]
    if qr.ne != (D, W, Hh, H * B) or W * Hh != N:
        return None
    tw, th = _picked_table(mm_w.srcs[0]), _picked_table(mm_h.srcs[0])
    if tw is None or th is None or tw[1].ne[0] != W or th[1].ne[0] != Hh:
        return None
    return tw, th, W


def fuse_rel_pos(graph: Graph) -> int:
    """Point every `sam_rel_attn` whose rel-pos factors are SAM's chains from its own queries (`match_rel_pos`)
    at two `sam_rel_pos` nodes that compute them from those queries and the tables: the copies of the queries
    (two a layer), the small batched products and the copy of their result drop out. Returns the number of
    attentions rewritten."""
    d = registry.get("sam_rel_pos")
    n = 0
    for attn in list(graph.nodes):
        if attn.op != "sam_rel_attn" or (m := match_rel_pos(attn)) is None:
            continue
        (tab_w, idx_w), (tab_h, idx_h), width = m
        ctx = Context()
        layer = attn.name.rsplit("-", 1)[-1]
        q = attn.srcs[0]
        rel_w = ctx.build(d, q, tab_w, idx_w, width=width, axis=0).set_name(f"rel_pos_w-{layer}")
        rel_h = ctx.build(d, q, tab_h, idx_h, width=width, axis=1).set_name(f"rel_pos_h-{layer}")
        if rel_w.ne != attn.srcs[3].ne or rel_h.ne != attn.srcs[4].ne:
            continue
        attn.srcs = (*attn.srcs[:3], rel_w, rel_h)
        n += 1
    return n


def fuse_norm_affine(graph: Graph) -> int:
    """Rewrite every `add(mul(norm(a), w), b)` / `mul(norm(a), w)` (norm or rms_norm, w and b rows) whose
    intermediate values only the next node reads into `norm_affine`; returns the number rewritten."""
    d = registry.get("norm_affine")
    users = graph.consumers()
    n = 0
    for norm in list(graph.nodes):
        if norm.op not in ("norm", "rms_norm") or norm.dtype != "f32":
            continue
        mul = _sole_user(norm, users)
        if mul is None or mul.op != "mul" or mul.srcs[0] is not norm or not is_row(mul.srcs[1], norm.ne[0]):
            continue
        top, b = mul, None
        add = _sole_user(mul, users)
        if add is not None and add.op == "add" and add.srcs[0] is mul and is_row(add.srcs[1], norm.ne[0]):
            top, b = add, add.srcs[1]
        top.op, top.srcs = d.name, (norm.srcs[0], mul.srcs[1], b)
        top.params = {"eps": norm.params["eps"], "rms": norm.op == "rms_norm"}
        n += 1
    return n


def _bias_add(t: Tensor, reader: Tensor, users: dict[int, list[Tensor]]) -> tuple[Tensor, Tensor] | None:
    """(x, b) if t is `add(x, b)`, b one row and x F32 with contiguous rows, and only `reader` reads the sum."""
    if t.op != "add" or t.is_view or _sole_user(t, users) is not reader:
        return None
    x, b = t.srcs
    return (x, b) if x.dtype == "f32" and x.is_contiguous_rows() and is_row(b, x.ne[0]) else None


def fuse_bias_act(graph: Graph) -> int:
    """Rewrite every activation in `BIAS_ACTS` of an `add(x, b)` with b one row, whose sum only the activation
    reads, into `add_act`; returns the number rewritten."""
    d = registry.get("add_act")
    users = graph.consumers()
    n = 0
    for node in list(graph.nodes):
        if node.op not in BIAS_ACTS or node.dtype != "f32":
            continue
        xb = _bias_add(node.srcs[0], node, users)
        if xb is None:
            continue
        node.params = {"act": node.op}
        node.op, node.srcs = d.name, xb
        n += 1
    return n


def fuse_bias_residual(graph: Graph) -> int:
    """Rewrite every `add(add(x, b), y)` or `add(y, add(x, b))` with b one row, y of x's shape and the inner sum
    read by the outer add alone, into `add_res(x, b, y)`; returns the number rewritten. (x + b) + y is what the
    two adds compute in either order: a float sum does not depend on the order of its two terms."""
    d = registry.get("add_res")
    users = graph.consumers()
    n = 0
    for node in list(graph.nodes):
        if node.op != "add" or node.dtype != "f32" or node.is_view:
            continue
        for inner, y in (node.srcs, node.srcs[::-1]):
            xb = _bias_add(inner, node, users)
            if xb is not None and y.dtype == "f32" and y.ne == xb[0].ne == node.ne:
                node.op, node.srcs, node.params = d.name, (*xb, y), {}
                n += 1
                break
    return n


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
    if t.op == "add" and not t.is_view and t.srcs[0].op == "mul_mat" and _only_user(t.srcs[0], t, users):
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
        while (u := _sole_user(t, users)) is not None and _moves_rows(u, top.ne[0]):
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
        while (_moves_rows(t, c) or _pads_rows(t, c)) and _sole_user(t, users) is (chain[0] if chain else mm):
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


Layout = tuple[Tensor, tuple, tuple, int]  # base, ne, nb, byte offset: the value as a strided view of base


def strided_layout(t: Tensor) -> Layout | None:
    """t's value as a strided f32 view of a tensor that is not a copy, looking through `cont` nodes (a cont has its
    source's value) and views of them; None where a step is not a strided re-reading (a reshape that merges dims a
    copy had made adjacent, say)."""
    if t.dtype != "f32":
        return None
    if t.op == "cont" and not t.is_view:
        src = t.srcs[0]
        return strided_layout(src) if src.dtype == t.dtype and src.ne == t.ne else None
    if not t.is_view:
        return t, t.ne, t.nb, 0
    if t.view_src.op != "cont":
        return t.view_src, t.ne, t.nb, t.view_offs
    inner = strided_layout(t.view_src)
    if inner is None:
        return None
    base, xne, xnb, xoff = inner
    # the copy is packed: its element index i is x's element with digits (i // c[j]) % xne[j]
    c = [1, xne[0], xne[0] * xne[1], xne[0] * xne[1] * xne[2]]
    if t.view_offs % 4 or any(nb % 4 for nb in t.nb) or 0 in xne:
        return None
    first = [(t.view_offs // 4 // c[j]) % xne[j] for j in range(4)]
    last = list(first)
    nb = []
    for ne, step in zip(t.ne, (b // 4 for b in t.nb)):
        if ne == 1:
            nb.append(None)
            continue
        j = next((j for j in range(3, -1, -1) if xne[j] > 1 and 0 < c[j] <= step), None)
        if j is None or step % c[j]:
            return None
        last[j] += step // c[j] * (ne - 1)
        nb.append(step // c[j] * xnb[j])
    if any(hi >= n for hi, n in zip(last, xne)):  # a step would carry into the next dim of x
        return None
    offset = xoff + sum(f * b for f, b in zip(first, xnb))
    for k in range(4):  # size-1 dims: any stride addresses the same bytes; take the packed one
        if nb[k] is None:
            nb[k] = 4 if k == 0 else nb[k - 1] * t.ne[k - 1]
    return base, t.ne, tuple(nb), offset


def view_of(layout: Layout, name: str) -> Tensor | None:
    """A view node with `layout` (ggml views have unit-stride rows: a view_4d over the dims ordered with a
    unit-stride one first, or one of size 1, then a permute back), or None if there is neither."""
    base, ne, nb, offset = layout
    unit = next((k for k in range(4) if nb[k] == 4 and ne[k] > 1), None)
    if unit is None:
        unit = next((k for k in range(4) if ne[k] == 1), None)
        if unit is None:
            return None
        nb = tuple(4 if k == unit else b for k, b in enumerate(nb))
    order = [unit] + [k for k in range(4) if k != unit]
    ctx = Context()
    v = ctx.view_4d(base, *(ne[k] for k in order), *(nb[k] for k in order[1:]), offset)
    if order != [0, 1, 2, 3]:
        v = ctx.permute(v, *order)
    assert v.ne == ne and v.nb == nb, (v.ne, v.nb, ne, nb)
    return v.set_name(name)


# which sources of which ops may be any strided view (their kernels take strided operands)
STRIDED_READERS = {"sam_rel_attn": (0, 1, 2), "sam_rel_pos": (0,), "cont": (0,)}


def _reads_a_copy(t: Tensor) -> bool:
    return t.op == "cont" or (t.is_view and t.view_src.op == "cont")


def elide_copies(graph: Graph) -> int:
    """Point every operand in `STRIDED_READERS` that reads a copy at the copied tensor itself (`strided_layout`);
    returns the number of operands rewritten in nodes that are still needed (a copy can itself read a copy, and
    drop out once its reader reads past it). Copies nothing else reads then drop out of the graph."""
    rewritten: dict[int, int] = {}
    for node in list(graph.nodes):
        which = STRIDED_READERS.get(node.op, ())
        srcs = list(node.srcs)
        for i in which:
            s = srcs[i]
            if s is None or not _reads_a_copy(s):
                continue
            layout = strided_layout(s)
            v = view_of(layout, s.name) if layout is not None else None
            if v is not None:
                srcs[i] = v
        if srcs == list(node.srcs):
            continue
        res = registry.get(node.op).rule(*srcs, **node.params)
        if tuple(res.ne) == node.ne and res.dtype == node.dtype:
            rewritten[id(node)] = sum(a is not b for a, b in zip(srcs, node.srcs))
            node.srcs = tuple(srcs)
    return sum(rewritten.get(id(t), 0) for t in Graph(graph.outputs).nodes) if rewritten else 0


PASSES = {"sam_attention": fuse_sam_attention, "rel_pos": fuse_rel_pos, "linear_crop": move_linear_past_crop,
          "linear_rows": gather_linear_rows,
          "norm_affine": fuse_norm_affine, "bias_act": fuse_bias_act, "bias_residual": fuse_bias_residual,
          "copies": elide_copies}
# passes whose graph gives the unfused graph's values to float rounding, not bit for bit
REROUNDING = frozenset({"linear_crop", "linear_rows"})


def fuse(graph: Graph, passes=None, report: dict | None = None, same_bits: bool = False) -> Graph:
    """Run the passes (default: all; with `same_bits`, those that keep every value bit for bit) on `graph`;
    returns a new Graph over its outputs (`graph` itself when nothing matched). Each pass sees the nodes the
    passes before it made (a projection moved past the crop reads moved rows a later pass may gather)."""
    for name in passes or PASSES:
        if same_bits and name in REROUNDING:
            continue
        k = PASSES[name](graph)
        if k:
            graph = Graph(graph.outputs)
        if report is not None:
            report[name] = k
    return graph
