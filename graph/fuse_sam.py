"""The SAM attention passes of `npggml.graph.fuse`: the rel-pos attention sub-graph -> `sam_rel_attn`
(`fuse_sam_attention`), its two rel-pos factors -> `sam_rel_pos` nodes (`fuse_rel_pos`), and an attention whose
token rows a product picks -> `sam_rel_attn_rows` (`fuse_attention_rows`). `npggml.graph.fuse` runs them with the
other passes and describes them all."""

from __future__ import annotations

import re

from npggml.errors import ShapeError
from npggml.graph.context import Context
from npggml.graph.graph import Graph, only_user
from npggml.graph.tensor import Tensor
from npggml.ops import registry
from npggml.ops.registry import RuleError


def fused_name(kqv: Tensor, users: dict[int, list[Tensor]], fallback: int, op: str) -> str:
    """`<op>-<il>` with the layer taken from the `kqv_out-<il>` node downstream, if there is one."""
    frontier = [kqv]
    for _ in range(3):
        nxt = []
        for t in frontier:
            for u in users.get(id(t), []):
                m = re.fullmatch(r"kqv_out-(\d+)", u.name)
                if m:
                    return f"{op}-{m.group(1)}"
                nxt.append(u)
        frontier = nxt
    return f"{op}#{fallback}"


def layer_tag(name: str) -> str:
    """The suffix that names a node made from the node `name` after its layer: `-3` for `sam_rel_attn-3`, else
    ` of <name>`."""
    layer = re.fullmatch(r".*-(\d+)", name)
    return f"-{layer.group(1)}" if layer else f" of {name}"


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
        if not only_user(t, user, users):
            return None
    return (q, k, v, rel_w, rel_h), {"scale": sm.params["scale"]}


def rewrite_attentions(graph: Graph, op_name: str, match) -> int:
    """Rewrite every node for which `match(node, users)` gives (sources, params) into the fused op `op_name`, named
    `<op_name>-<il>` (`fused_name`), where the op's shape rule takes those sources and gives the node's shape and
    type; returns the number rewritten."""
    d = registry.get(op_name)
    users = graph.consumers()
    n = 0
    for node in list(graph.nodes):
        m = match(node, users)
        if m is None:
            continue
        srcs, params = m
        try:
            res = d.rule(*srcs, **params)
        except RuleError:  # operands the fused op does not take (a transposed k, a quantised v, ...)
            continue
        if tuple(res.ne) != node.ne or res.dtype != node.dtype:
            continue
        node.name = fused_name(node, users, n, op_name)
        node.op, node.srcs, node.params = d.name, srcs, params
        n += 1
    return n


def fuse_sam_attention(graph: Graph) -> int:
    """Rewrite every SAM rel-pos attention in `graph` into `sam_rel_attn`; returns the number rewritten."""
    return rewrite_attentions(graph, "sam_rel_attn", match_sam_attention)


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
        tag = layer_tag(attn.name)  # `sam_rel_attn-3` -> `rel_pos_w-3`
        q = attn.srcs[0]
        rel_w = ctx.build(d, q, tab_w, idx_w, width=width, axis=0).set_name(f"rel_pos_w{tag}")
        rel_h = ctx.build(d, q, tab_h, idx_h, width=width, axis=1).set_name(f"rel_pos_h{tag}")
        if rel_w.ne != attn.srcs[3].ne or rel_h.ne != attn.srcs[4].ne:
            continue
        attn.srcs = (*attn.srcs[:3], rel_w, rel_h)
        n += 1
    return n


CONTS = frozenset({"cont", *(f"cont_{n}d" for n in range(1, 5))})


def fuse_attention_rows(graph: Graph) -> int:
    """Rewrite every product `mul_mat_rows(w, b, rows)` whose operand b is the token rows of a `sam_rel_attn` (b a
    copy of `permute(attn, 0, 2, 1, 3)`, rows of its D*H floats, read by nothing else) and whose row numbers are a
    constant without -1 into `mul_mat(w, sam_rel_attn_rows(q, k, v, rel_w, rel_h, rows))`, named
    `sam_rel_attn_rows-<il>` after the attention: the attention gives the picked rows itself, and the fast kernel
    computes only their queries (SAM's windowed layers: not the windows' padding). Returns the number rewritten."""
    d = registry.get("sam_rel_attn_rows")
    users = graph.consumers()
    n = 0
    for mm in list(graph.nodes):
        if mm.op != "mul_mat_rows" or mm.is_view:
            continue
        w, b, rows = mm.srcs
        perm = b.srcs[0] if b.op in CONTS and not b.is_view else None
        if not _is_op(perm, "permute", SWAP12) or perm.srcs[0].op != "sam_rel_attn" or perm.srcs[0].is_view:
            continue
        attn = perm.srcs[0]
        D, _, H, _ = attn.ne
        sole = only_user(attn, perm, users) and only_user(perm, b, users) and only_user(b, mm, users)
        if not sole or w.ne[0] != D * H or rows.data is None or (rows.data < 0).any():
            continue
        try:
            picked = Context().build(d, *attn.srcs, rows, **attn.params)
        except ShapeError:
            continue
        picked.set_name(f"{d.name}{layer_tag(attn.name)}")
        mm.op, mm.srcs, mm.params = "mul_mat", (w, picked), {}
        n += 1
    return n
