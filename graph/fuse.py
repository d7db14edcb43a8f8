"""Graph rewrite passes: replace sub-graphs by fused ops that compute the same value with less memory/time.

`fuse(graph)` runs every pass and returns a new `Graph` over the same outputs; the matched nodes are rewritten in
place (the node whose value the sub-graph produced becomes the fused node, so consumers and views of it are
untouched), and the nodes only the sub-graph used drop out of the new graph. Each pass returns how many
patterns it replaced; `fuse(..., report=dict)` collects the counts.

Passes:
- `fuse_sam_attention`: SAM attention with decomposed relative positions,
  `mul_mat(v, soft_max_ext(mul_mat(k, q), reshape_4d(add(repeat_4d(rel_w), rel_h)), scale))`
  -> `sam_rel_attn(q, k, v, rel_w, rel_h, scale)` (see `npggml.ops.fast.sam_attn`).
- `fuse_norm_affine`: a layer norm's scale and shift, `add(mul(norm(a), w), b)` (or `rms_norm`, or no add) with
  w and b one row each -> `norm_affine(a, w, b, eps, rms)`: one pass over the rows instead of three. The fused
  node keeps the name of the node it replaces (`norm_b-3`, `ffn_inp_normed-3`): the same value, bit for bit.
- `fuse_bias_act`: a linear layer's bias and activation, `gelu_erf(add(x, b))` (or `gelu_quick`) with b one row
  -> `add_act(x, b, act)`, named as the activation node (`ffn_gelu_erf-3`): one pass instead of two.
"""

from __future__ import annotations

import re

from npggml.graph.graph import Graph
from npggml.graph.tensor import OUTPUT, Tensor
from npggml.ops import registry
from npggml.ops.elementwise import BIAS_ACTS


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


def _row_of(t: Tensor | None, n0: int) -> bool:
    return t is not None and t.dtype == "f32" and t.ne == (n0, 1, 1, 1)


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
        if mul is None or mul.op != "mul" or mul.srcs[0] is not norm or not _row_of(mul.srcs[1], norm.ne[0]):
            continue
        top, b = mul, None
        add = _sole_user(mul, users)
        if add is not None and add.op == "add" and add.srcs[0] is mul and _row_of(add.srcs[1], norm.ne[0]):
            top, b = add, add.srcs[1]
        top.op, top.srcs = d.name, (norm.srcs[0], mul.srcs[1], b)
        top.params = {"eps": norm.params["eps"], "rms": norm.op == "rms_norm"}
        n += 1
    return n


def fuse_bias_act(graph: Graph) -> int:
    """Rewrite every activation in `BIAS_ACTS` of an `add(x, b)` with b one row, whose sum only the activation
    reads, into `add_act`; returns the number rewritten."""
    d = registry.get("add_act")
    users = graph.consumers()
    n = 0
    for node in list(graph.nodes):
        if node.op not in BIAS_ACTS or node.dtype != "f32":
            continue
        add = node.srcs[0]
        if add.op != "add" or add.is_view or _sole_user(add, users) is not node:
            continue
        x, b = add.srcs
        if x.dtype != "f32" or not x.is_contiguous_rows() or not _row_of(b, x.ne[0]):
            continue
        node.params = {"act": node.op}
        node.op, node.srcs = d.name, (x, b)
        n += 1
    return n


PASSES = {"sam_attention": fuse_sam_attention, "norm_affine": fuse_norm_affine, "bias_act": fuse_bias_act}


def fuse(graph: Graph, passes=None, report: dict | None = None) -> Graph:
    """Run the passes (default: all) on `graph`; returns a new Graph over its outputs (`graph` itself when
    nothing matched)."""
    total = 0
    for name in passes or PASSES:
        k = PASSES[name](graph)
        total += k
        if report is not None:
            report[name] = k
    if total == 0:
        return graph
    return Graph(graph.outputs)
