"""`sam_rel_attn_rows`: `sam_rel_attn` for the token rows that are kept, with each token's heads side by side.

In a windowed SAM layer the attention output is read as token rows (`cont(permute(attn, 0, 2, 1, 3))`, rows of
D*H) by the output projection, which after `move_linear_past_crop` and `gather_linear_rows` picks its rows by
number (`mul_mat_rows`): the windows' padding rows are never read. `npggml.graph.fuse_sam.fuse_attention_rows`
makes the attention give those picked rows itself: this op's value is exactly the gathered operand of that
product, so the product becomes a plain `mul_mat` of it, and the fast kernel computes only the queries that some
row picks (74 % of a 768 tile's windowed queries, 84 % of the 1024 global view's, 91 % of a 640 tile's).

Sources: q, k, v, rel_w, rel_h as `sam_rel_attn`'s (q `[D, Nq, H, B]`), rows i32 `[R0, R1, R2, 1]`: token row
numbers b*Nq + i, or -1 for a zero row. Result `[D*H, R0, R1, R2]` F32, row r the heads of token rows[r].
"""

from __future__ import annotations

import numpy as np

from npggml.ops import registry
from npggml.ops.fast._common import F32, is_f32
from npggml.ops.fast.sam_attn import _bias_rows, _sam_rel_attn, attend, plan, sam_rel_attn_fast, standin
from npggml.ops.linalg import gather_rows, rows_in_range
from npggml.ops.registry import Out, ggml_numerics, op, require


def _kept(rows) -> int | None:
    """The distinct token rows that `rows` (a constant's data, or None) picks."""
    if rows is None:
        return None
    rows = np.asarray(rows)
    return np.unique(rows[rows >= 0]).size


def _flops(n) -> float:
    """`sam_rel_attn`'s flops for the queries that are picked (every query when the rows are not a constant)."""
    q, k = n.srcs[0], n.srcs[1]
    kept = _kept(n.srcs[5].data)
    queries = q.ne[1] * q.ne[3] if kept is None else kept
    return (4.0 * q.ne[0] + 6.0) * k.ne[1] * q.ne[2] * queries


@op("sam_rel_attn_rows", ggml="SAM_REL_ATTN_ROWS", srcs=6, flops=_flops)
def sam_rel_attn_rows(q, k, v, rel_w, rel_h, rows, scale):
    D, _, H, _ = registry.get("sam_rel_attn").rule(q, k, v, rel_w, rel_h, scale=scale).ne
    require(rows.dtype == "i32" and rows.is_contiguous() and rows.ne[3] == 1,
            f"rows must be packed i32 [R0, R1, R2, 1], got {rows.dtype} {rows.ne_str()}")
    return Out((D * H, *rows.ne[:3]), "f32")


def _whole(out):
    """A stand-in of the `sam_rel_attn` node over the same sources, and its value's (B, H, Nq, D) shape."""
    q_t = out.srcs[0]
    D, Nq, H, B = q_t.ne
    return standin("sam_rel_attn", q_t.ne, out.srcs[:5], {"scale": out.params["scale"]}), (B, H, Nq, D)


def _token_rows(whole: np.ndarray) -> np.ndarray:
    """The attention's value (B, H, Nq, D) as its token rows (B*Nq, H*D)."""
    B, H, Nq, D = whole.shape
    return np.ascontiguousarray(whole.transpose(0, 2, 1, 3)).reshape(B * Nq, H * D)


@sam_rel_attn_rows.kernel
def _sam_rel_attn_rows(out, q, k, v, rel_w, rel_h, rows, scale):
    """`sam_rel_attn`'s reference kernel (the unfused graph's bits), its token rows, gathered."""
    whole_t, _ = _whole(out)
    whole = _sam_rel_attn(whole_t, q, k, v, rel_w, rel_h, scale)
    return gather_rows(_token_rows(whole), rows, out.ne[0])


def _run(sel: np.ndarray) -> np.ndarray | slice:
    """sel as a slice when it is a run of consecutive queries (a whole window, or its first rows): the task reads
    its queries as a view instead of a copy (a v1 page's windowed attentions: 0.57 -> 0.55 s)."""
    return slice(int(sel[0]), int(sel[-1]) + 1) if sel.size and sel[-1] - sel[0] + 1 == sel.size else sel


@sam_rel_attn_rows.fast_kernel
def sam_rel_attn_rows_fast(dst, out, q, k, v, rel_w, rel_h, rows, scale):
    """Only the picked queries: each batch entry's picked queries in tasks of `sam_rel_attn`'s plan, written
    straight to their first row; a row that repeats one gets a copy, a -1 row zeros. Under ggml numerics the whole
    `sam_rel_attn` (its ggml path), gathered."""
    if not is_f32(q, k, v, dst) or not dst.flags.c_contiguous:
        return NotImplemented
    B, H, Nq, D = q.shape
    idx = rows.reshape(-1)
    if not rows_in_range(idx, B * Nq):
        return NotImplemented  # the reference kernel says what is wrong
    whole_t, shape = _whole(out)
    if ggml_numerics():
        whole = np.empty(shape, F32)
        sam_rel_attn_fast(whole, whole_t, q, k, v, rel_w, rel_h, scale)
        dst[...] = gather_rows(_token_rows(whole), rows, D * H)
        return None
    picked = np.flatnonzero(idx >= 0)
    tokens, at = np.unique(idx[picked], return_index=True)
    first = np.full(B * Nq, -1, np.int64)  # the first row that picks each token
    first[tokens] = picked[at]
    g, qb = plan(H, Nq, k.shape[2])
    tasks = []
    for b in range(B):
        dest = first[b * Nq:(b + 1) * Nq]  # entry b's queries -> their first rows
        sel = np.flatnonzero(dest >= 0)
        parts = [_run(sel[i0:i0 + qb]) for i0 in range(0, sel.size, qb)]
        tasks += [(b, h0, min(h0 + g, H), part, dest[part]) for h0 in range(0, H, g) for part in parts]
    res = dst.reshape(-1, H, D)
    rw, rh = _bias_rows(whole_t, rel_w, rel_h)
    attend(res, q, k, v, rw, rh, F32(scale), g, qb, tasks)
    res[idx < 0] = 0.0
    again = picked[first[idx[picked]] != picked]
    res[again] = res[first[idx[again]]]
    return None
