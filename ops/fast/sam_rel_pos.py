"""`sam_rel_pos`: one of the two rel-pos factors of `sam_rel_attn` computed from the queries and the rel-pos table
(the fused form of the SAM graph's chain for it, `npggml.graph.fuse.fuse_rel_pos`): one sgemm per grid position
over all heads."""

from __future__ import annotations

import numpy as np

from npggml.ops.fast import _blas
from npggml.ops.fast._common import F32, is_f32
from npggml.ops.fast.sam_attn import ref_value, standin
from npggml.ops.registry import Out, ggml_numerics, op, require


def _pos_flops(n) -> float:
    return 2.0 * n.srcs[0].ne[0] * n.nelements


@op("sam_rel_pos", ggml="SAM_REL_POS", srcs=3, flops=_pos_flops)
def sam_rel_pos(q, tab, idx, width, axis):
    """One rel-pos factor of `sam_rel_attn` from its queries: q [D, N, H, B] (N = width x rows of a grid, query
    i at column i % width, row i // width), tab [D, L] (a table of L rows), idx [S, S] i32 (row numbers of tab:
    idx[p, k] for query position p and key position k, in NumPy order). axis 0 (columns, S = width): rel_w
    [S, 1, N, H*B]; axis 1 (rows, S = N / width): rel_h [1, S, N, H*B]; each the dot of query i's row with table
    row idx[p(i), k], p(i) its column or row. The fused form of SAM's get_rows / permute / cont / mul_mat chain
    (`npggml.graph.fuse.fuse_rel_pos`), which computes the same value."""
    D, N, H, B = q.ne
    S = idx.ne[0]
    require(axis in (0, 1), f"axis must be 0 (columns) or 1 (rows), got {axis}")
    require(q.dtype == "f32" and q.nb[0] == 4, f"q must be f32 with unit-stride rows, got {q.dtype} {q.ne_str()}")
    require(tab.dtype in ("f32", "f16", "bf16") and tab.ne[0] == D and tab.ne[2] == tab.ne[3] == 1,
            f"tab must be one f32/f16/bf16 table of rows of {D}, got {tab.dtype} {tab.ne_str()}")
    require(tab.is_contiguous(), "tab must be contiguous")
    require(idx.dtype == "i32" and idx.is_contiguous() and idx.ne[1] == S and idx.ne[2] == idx.ne[3] == 1,
            f"idx must be packed i32 [S, S], got {idx.dtype} {idx.ne_str()}")
    require(width > 0 and N % width == 0, f"{N} queries are not a grid of width {width}")
    require(S == (width if axis == 0 else N // width),
            f"idx is {S}x{S}, the grid has {width if axis == 0 else N // width} {('columns', 'rows')[axis]}")
    return Out((S, 1, N, H * B) if axis == 0 else (1, S, N, H * B), "f32")


def _rows_in_range(tab: np.ndarray, idx: np.ndarray) -> bool:
    """Every row number of idx is a row of tab (no -1 padding here, unlike `mul_mat_rows`)."""
    ix = idx[0, 0]
    return not ix.size or (ix.min() >= 0 and ix.max() < tab.shape[2])


def _pos_table(tab: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """tab's rows picked by idx: (S, S, D) float32, T[p, k] = tab[idx[p, k]] (get_rows' check and conversion)."""
    if not _rows_in_range(tab, idx):
        raise IndexError(f"row index out of range [0, {tab.shape[2]})")
    return tab[0, 0][idx[0, 0]].astype(F32, copy=False)


@sam_rel_pos.kernel
def _sam_rel_pos(out, q, tab, idx, width, axis):
    """The replaced chain's product through mul_mat's own reference kernel, on the operands that chain gives
    it (the queries regrouped by grid row and column and copied packed, the picked table rows): the same bits."""
    q_t = out.srcs[0]
    D, N, H, B = q_t.ne
    S = idx.shape[-1]
    T = _pos_table(tab, idx)[None]  # (1, S, S, D): one picked table per query position
    grid = np.asarray(q, F32).reshape(B * H, N // width, width, D)  # (B*H, row, column, D)
    x = np.ascontiguousarray(grid.transpose(0, 2, 1, 3) if axis == 0 else grid)  # position axis second
    mm_t = standin("mul_mat", (S, *x.shape[-2::-1]), (standin("get_rows", (D, S, S, 1), ()),
                                                      standin("cont", x.shape[::-1], ())))
    res = ref_value(mm_t, T, x)
    if axis == 0:
        res = res.transpose(0, 2, 1, 3)  # back to (B*H, row, column, S)
    return res.reshape(out.shape)


@sam_rel_pos.fast_kernel
def sam_rel_pos_fast(dst, out, q, tab, idx, width, axis):
    """Position by position (on the BLAS pool): the queries at one grid position (all heads, all batch entries)
    copied packed, one sgemm with that position's table rows, the products put in place. Within float rounding of
    the reference (BLAS blocks other products). Under ggml numerics the replaced chain's product as the reference
    kernel computes it (ggml's mul_mat, as `ggml_matmul` reproduces it)."""
    if not is_f32(q, dst) or not dst.flags.c_contiguous:
        return NotImplemented
    if not _rows_in_range(tab, idx):
        return NotImplemented  # the reference kernel says what is wrong
    if ggml_numerics():
        dst[...] = _sam_rel_pos(out, q, tab, idx, width, axis)
        return None
    B, H, N, D = q.shape
    T = _pos_table(tab, idx).transpose(0, 2, 1)  # (S, D, S): position p's table rows as columns
    S = T.shape[0]
    grid = q.reshape(B, H, N // width, width, D)
    res = dst.reshape(B, H, N // width, width, S)
    order = (3, 0, 1, 2, 4) if axis == 0 else (2, 0, 1, 3, 4)  # the position axis first
    grid, res = grid.transpose(order), res.transpose(order)
    _blas.use_own_threads()

    def positions(lo, hi):
        for p in range(lo, hi):
            res[p] = (np.ascontiguousarray(grid[p]).reshape(-1, D) @ T[p]).reshape(res.shape[1:])

    _blas.run_split(positions, S)
    return None
