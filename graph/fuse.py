"""Graph rewrite passes: replace sub-graphs by fused ops that compute the same value with less memory/time.

`fuse(graph)` runs every pass and returns a new `Graph` over the same outputs; the matched nodes are rewritten in
place (the node whose value the sub-graph produced becomes the fused node, so consumers and views of it are
untouched), and the nodes only the sub-graph used drop out of the new graph. Each pass returns how many
patterns it replaced; `fuse(..., report=dict)` collects the counts.

Passes (the three SAM attention ones live in `npggml.graph.fuse_sam`, the three row ones in
`npggml.graph.fuse_rows`):
- `fuse_sam_attention`: SAM attention with decomposed relative positions,
  `mul_mat(v, soft_max_ext(mul_mat(k, q), reshape_4d(add(repeat_4d(rel_w), rel_h)), scale))`
  -> `sam_rel_attn(q, k, v, rel_w, rel_h, scale)` (see `npggml.ops.fast.sam_attn`).
- `fuse_attention`: any other attention without flash attention (`build_attn`: CLIP, v2's Qwen2 encoder),
  `mul_mat(v, soft_max_ext(mul_mat(k, q), mask, scale))` with no ALiBi -> `attn(q, k, v, mask, scale)` (see
  `npggml.ops.fast.attn`), named `attn-<il>`. It runs after `fuse_sam_attention`, which takes SAM's.
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
- `fuse_attention_rows` (`npggml.graph.fuse_sam`): a product of picked rows `mul_mat_rows(w, b, rows)` whose
  operand b is the token rows of a `sam_rel_attn` (its output with each token's heads side by side, as the moved
  projection reads it after `gather_linear_rows`) -> `mul_mat(w, sam_rel_attn_rows(q, k, v, rel_w, rel_h, rows))`:
  the attention gives the picked rows itself, and its fast kernel computes only the queries that are kept (SAM's
  windowed layers no longer attend from the windows' padding: 9-26 % of their queries). Its reference kernel
  gathers the rows of the whole attention's reference value: the operand the product had, bit for bit.
- `compute_picked_rows` (`npggml.graph.fuse_rows`): a product of picked rows `mul_mat_rows(w, b, rows)` whose
  operand b is computed row by row (adds, norms, activations, products with one weight matrix, reshapes) and
  whose rows pick fewer rows than b has -> that computation on the picked rows only: each of its nodes (read by
  nothing else) on the picked rows of its sources, the values it reads from elsewhere picked by `get_rows`, and
  the product's row numbers counted among the picked rows. v2's encoder keeps only the query tokens: its last
  layer's output projection, MLP and norms skip the image tokens' rows. Products of fewer rows round differently
  (BLAS, as above): `same_bits` skips it.
- `fuse_norm_affine`: a layer norm's scale and shift, `add(mul(norm(a), w), b)` (or `rms_norm`, or no add) with
  w and b one row each -> `norm_affine(a, w, b, eps, rms)`: one pass over the rows instead of three. The fused
  node keeps the name of the node it replaces (`norm_b-3`, `ffn_inp_normed-3`): the same value, bit for bit.
- `fuse_bias_act`: a linear layer's bias and activation, `gelu_erf(add(x, b))` (or `gelu_quick`) with b one row
  -> `add_act(x, b, act)`, named as the activation node (`ffn_gelu_erf-3`): one pass instead of two.
- `fuse_bias_residual`: a linear layer's bias and the residual add after it, `add(add(x, b), y)` (either order of
  the outer add) with b one row and y of x's shape -> `add_res(x, b, y)`, named as the residual add
  (`sam_layer_out-3`): one pass instead of two.
- `elide_copies`: an operand of `sam_rel_attn(_rows)`, `attn`, `sam_rel_pos` or `cont` that is a copy (`cont`), or
  a reshape / permute / view of one, re-read as one strided view of the tensor the copy was taken from, when that
  is possible: SAM's q, k and v then read the qkv product itself, and their four copies a layer (q, k, v, v
  transposed) drop out, and so does `build_attn`'s copy of v transposed. The reading node gets the same values, bit
  for bit; only where it reads them from changes.
"""

from __future__ import annotations

from npggml.graph.context import Context
from npggml.graph.fuse_rows import compute_picked_rows, gather_linear_rows, move_linear_past_crop
from npggml.graph.fuse_sam import fuse_attention_rows, fuse_rel_pos, fuse_sam_attention, rewrite_attentions
from npggml.graph.graph import Graph, only_user, sole_user
from npggml.graph.tensor import Tensor
from npggml.ops import registry
from npggml.ops.elementwise import BIAS_ACTS
from npggml.ops.registry import is_row


def match_attention(kqv: Tensor, users: dict[int, list[Tensor]]) -> tuple | None:
    """The sources of the fused op if `kqv` is `mul_mat(v, soft_max_ext(mul_mat(k, q), mask, scale))` whose score
    and probability tensors nothing else reads, else None."""
    if kqv.op != "mul_mat" or kqv.is_view:
        return None
    v, sm = kqv.srcs
    if sm.op != "soft_max_ext" or sm.params.get("max_bias", 0.0) != 0.0:
        return None
    kq, mask = sm.srcs
    if kq.op != "mul_mat" or not (only_user(sm, kqv, users) and only_user(kq, sm, users)):
        return None
    k, q = kq.srcs
    return (q, k, v, mask), {"scale": sm.params["scale"]}


def fuse_attention(graph: Graph) -> int:
    """Rewrite every attention `match_attention` finds into `attn`; returns the number rewritten."""
    return rewrite_attentions(graph, "attn", match_attention)


def fuse_norm_affine(graph: Graph) -> int:
    """Rewrite every `add(mul(norm(a), w), b)` / `mul(norm(a), w)` (norm or rms_norm, w and b rows) whose
    intermediate values only the next node reads into `norm_affine`; returns the number rewritten."""
    d = registry.get("norm_affine")
    users = graph.consumers()
    n = 0
    for norm in list(graph.nodes):
        if norm.op not in ("norm", "rms_norm") or norm.dtype != "f32":
            continue
        mul = sole_user(norm, users)
        if mul is None or mul.op != "mul" or mul.srcs[0] is not norm or not is_row(mul.srcs[1], norm.ne[0]):
            continue
        top, b = mul, None
        add = sole_user(mul, users)
        if add is not None and add.op == "add" and add.srcs[0] is mul and is_row(add.srcs[1], norm.ne[0]):
            top, b = add, add.srcs[1]
        top.op, top.srcs = d.name, (norm.srcs[0], mul.srcs[1], b)
        top.params = {"eps": norm.params["eps"], "rms": norm.op == "rms_norm"}
        n += 1
    return n


def _bias_add(t: Tensor, reader: Tensor, users: dict[int, list[Tensor]]) -> tuple[Tensor, Tensor] | None:
    """(x, b) if t is `add(x, b)`, b one row and x F32 with contiguous rows, and only `reader` reads the sum."""
    if t.op != "add" or t.is_view or sole_user(t, users) is not reader:
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
STRIDED_READERS = {"sam_rel_attn": (0, 1, 2), "sam_rel_attn_rows": (0, 1, 2), "attn": (0, 1, 2),
                   "sam_rel_pos": (0,), "cont": (0,)}


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


PASSES = {"sam_attention": fuse_sam_attention, "attention": fuse_attention, "rel_pos": fuse_rel_pos,
          "linear_crop": move_linear_past_crop, "linear_rows": gather_linear_rows,
          "attention_rows": fuse_attention_rows, "picked_rows": compute_picked_rows,
          "norm_affine": fuse_norm_affine, "bias_act": fuse_bias_act, "bias_residual": fuse_bias_residual,
          "copies": elide_copies}
# passes whose graph gives the unfused graph's values to float rounding, not bit for bit
REROUNDING = frozenset({"linear_crop", "linear_rows", "picked_rows"})
# passes that compute named values of the unfused graph (`kqv_out-3`, `layer_out-23`) for the rows read later only,
# as new nodes: the named ones drop out of the graph
PARTIAL = frozenset({"attention_rows", "picked_rows"})


def fuse(graph: Graph, passes=None, report: dict | None = None, same_bits: bool = False,
         whole: bool = False) -> Graph:
    """Run the passes (default: all; with `same_bits`, those that keep every value bit for bit; with `whole`, those
    that keep every named value with all its rows, as `npggml trace` shows them) on `graph`; returns a new Graph
    over its outputs (`graph` itself when nothing matched). Each pass sees the nodes the passes before it made (a
    projection moved past the crop reads moved rows a later pass may gather)."""
    for name in passes or PASSES:
        if (same_bits and name in REROUNDING) or (whole and name in PARTIAL):
            continue
        k = PASSES[name](graph)
        if k:
            graph = Graph(graph.outputs)
        if report is not None:
            report[name] = k
    return graph
