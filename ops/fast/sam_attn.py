"""`sam_rel_attn`: SAM attention with decomposed relative positions as one op, computed block by block.

The SAM graph (llama.cpp `build_sam` + `build_attn`) builds the rel-pos bias as a full mask
`[WH, WH, n_head, B] = reshape(add(repeat_4d(rel_w), rel_h))` and then
`mul_mat(v, soft_max_ext(mul_mat(k, q), mask, scale))`: at the 1024 global view that is a 4096 x 4096 score
matrix per head, three times over (scores, mask, probabilities). `npggml.graph.fuse.fuse_sam_attention` replaces
that sub-graph with this op, which takes the two small rel-pos factors and adds `rel_h[q, kh] + rel_w[q, kw]` on
the fly to one block of query rows of a few heads at a time.

Sources (ggml order): q `[D, Nq, H, B]`, k `[D, Nk, H, B]`, v `[Nk, D, H, B]` (the operands of the two
mul_mats), rel_w `[W, 1, Nq, H*B]`, rel_h `[1, Hh, Nq, H*B]` with Nk = W*Hh (key index kh*W + kw). Result
`[D, Nq, H, B]` F32: exactly the value of the replaced `mul_mat(v, soft_max)` node. The reference kernel is the
unfused sub-graph's arithmetic (same float operations in the same order, head by head); the fast kernel runs
the two products through BLAS and the mask, scale and softmax in one Numba pass per block.
"""

from __future__ import annotations

import numba
import numpy as np

from npggml.ops.attention import softmax_rows
from npggml.ops.fast import _blas
from npggml.ops.fast._common import F32, F64, POW2, is_f32
from npggml.ops.fast.softmax import exp_sum_ggml, scale_row
from npggml.ops.linalg import vec_dot_round
from npggml.ops.registry import Out, ggml_numerics, op, require

NEG_INF = F32(-np.inf)
BLOCK_ELEMENTS = 1 << 21  # scores per block (8 MiB of float32): 512 query rows of 4096 keys


def _flops(n) -> float:
    """The replaced nodes' flops: two mul_mats, soft_max_ext (5/element) and the mask add (1/element)."""
    q, k = n.srcs[0], n.srcs[1]
    scores = float(k.ne[1]) * q.ne[1] * q.ne[2] * q.ne[3]
    return 4.0 * q.ne[0] * scores + 6.0 * scores


@op("sam_rel_attn", ggml="SAM_REL_ATTN", srcs=5, flops=_flops)
def sam_rel_attn(q, k, v, rel_w, rel_h, scale):
    D, Nq, H, B = q.ne
    Nk = k.ne[1]
    W, Hh = rel_w.ne[0], rel_h.ne[1]
    for t in (q, k, v, rel_w, rel_h):
        require(t.dtype == "f32", f"{t.name or 'operand'} must be f32, got {t.dtype}")
    require(k.ne == (D, Nk, H, B), f"k {k.ne_str()} must be [D={D}, Nk, H={H}, B={B}]")
    require(v.ne == (Nk, D, H, B), f"v {v.ne_str()} must be [Nk={Nk}, D={D}, H={H}, B={B}]")
    require(rel_w.ne == (W, 1, Nq, H * B), f"rel_w {rel_w.ne_str()} must be [W, 1, Nq={Nq}, H*B={H * B}]")
    require(rel_h.ne == (1, Hh, Nq, H * B), f"rel_h {rel_h.ne_str()} must be [1, Hh, Nq={Nq}, H*B={H * B}]")
    require(W * Hh == Nk, f"rel_w width {W} x rel_h height {Hh} != Nk = {Nk} keys")
    require(q.nb[0] == 4 and k.nb[0] == 4 and v.nb[0] == 4, "q, k and v rows must be contiguous")
    return Out((D, Nq, H, B), "f32")


def _operands(out, q, k, v, rel_w, rel_h):
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    W, Hh = out.srcs[3].ne[0], out.srcs[4].ne[1]
    rw = np.ascontiguousarray(rel_w, F32).reshape(B * H, Nq, W)
    rh = np.ascontiguousarray(rel_h, F32).reshape(B * H, Nq, Hh)
    return (q.reshape(B * H, Nq, D), k.reshape(B * H, Nk, D), v.reshape(B * H, D, Nk), rw, rh)


@sam_rel_attn.kernel
def _sam_rel_attn(out, q, k, v, rel_w, rel_h, scale):
    k_type, v_type = out.srcs[1].dtype, out.srcs[2].dtype
    B, H, Nq, D = q.shape
    q3, k3, v3, rw, rh = _operands(out, q, k, v, rel_w, rel_h)
    res = np.empty((B * H, Nq, D), F32)
    for j in range(B * H):
        qj = vec_dot_round(q3[j], k_type) if ggml_numerics() else q3[j]
        kq = np.matmul(qj, k3[j].T)  # mul_mat(k, q)
        mask = (rw[j][:, None, :] + rh[j][:, :, None]).reshape(Nq, -1)  # add(repeat_4d(rel_w), rel_h)
        w = kq * F32(scale) + mask  # soft_max_ext: a*scale + 1*mask (slope 1)
        p = softmax_rows(w)
        if ggml_numerics():
            p = vec_dot_round(p, v_type)
        res[j] = np.matmul(p, v3[j].T)  # mul_mat(v, kq)
    return res.reshape(out.shape)


serial = numba.njit(cache=True, nogil=True, fastmath=False)

ROWS = 16  # score rows per softmax step: 16 rows of 4096 keys stay in L2 between the passes


@serial
def _mask_rows(s, rw, rh, scale):
    """w = s*scale + (rw[kw] + rh[kh]) in place (s (rows, Nk), rw (rows, W), rh (rows, Hh)); returns nothing,
    each row's max is subtracted (the exact path's exponentials follow in NumPy)."""
    W, Hh = rw.shape[1], rh.shape[1]
    for i in range(s.shape[0]):
        row = s[i]
        wr = rw[i]
        mx = NEG_INF
        for kh in range(Hh):
            hv = rh[i, kh]
            for kw in range(W):
                x = row[kh * W + kw] * scale + (wr[kw] + hv)
                row[kh * W + kw] = x
                if x > mx:
                    mx = x
        for c in range(row.shape[0]):
            row[c] = row[c] - mx


@serial
def _normalise_rows(s):
    for i in range(s.shape[0]):
        row = s[i]
        tot = F64(0.0)
        for c in range(row.shape[0]):
            tot += F64(row[c])
        scale_row(row, tot)


@serial
def _mask_softmax_ggml_rows(s, rw, rh, scale, pow2):
    """w = s*scale + (rw[kw] + rh[kh]), then ggml's soft_max (SIMD exp, float32 16-block sums, double total)."""
    W, Hh = rw.shape[1], rh.shape[1]
    tmp = np.empty(16, F32)
    for i in range(s.shape[0]):
        row = s[i]
        wr = rw[i]
        mx = NEG_INF
        for kh in range(Hh):
            hv = rh[i, kh]
            for kw in range(W):
                x = row[kh * W + kw] * scale + (wr[kw] + hv)
                row[kh * W + kw] = x
                if x > mx:
                    mx = x
        tot = exp_sum_ggml(row, mx, row, pow2, tmp)
        scale_row(row, tot)


def blocks(nq: int, nk: int, budget: int = BLOCK_ELEMENTS) -> int:
    """Query rows per block so that a block of scores holds about `budget` floats."""
    return max(1, min(nq, budget // max(nk, 1)))


@sam_rel_attn.fast_kernel
def sam_rel_attn_fast(dst, out, q, k, v, rel_w, rel_h, scale):
    if not is_f32(q, k, v, dst) or not dst.flags.c_contiguous:
        return NotImplemented
    ggml = ggml_numerics()
    k_type, v_type = out.srcs[1].dtype, out.srcs[2].dtype
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    q3, k3, v3, rw, rh = _operands(out, q, k, v, rel_w, rel_h)
    res = dst.reshape(B * H, Nq, D)
    qb = blocks(Nq, Nk)
    tasks = [(j, i0, min(i0 + qb, Nq)) for j in range(B * H) for i0 in range(0, Nq, qb)]
    sc = F32(scale)
    _blas.use_own_threads()

    def work(lo, hi):
        """Each pool thread: its blocks of (head, query rows), scores -> softmax -> times v, all on its own."""
        buf = np.empty(qb * Nk, F32)
        for j, i0, i1 in tasks[lo:hi]:
            s = buf[: (i1 - i0) * Nk].reshape(i1 - i0, Nk)
            qj = q3[j, i0:i1]
            if ggml:
                qj = vec_dot_round(qj, k_type)
            np.matmul(qj, k3[j].T, out=s)
            for r0 in range(0, i1 - i0, ROWS):
                r1 = min(r0 + ROWS, i1 - i0)
                sub, wr, hr = s[r0:r1], rw[j, i0 + r0:i0 + r1], rh[j, i0 + r0:i0 + r1]
                if ggml:
                    _mask_softmax_ggml_rows(sub, wr, hr, sc, POW2)
                else:
                    _mask_rows(sub, wr, hr, sc)
                    with np.errstate(invalid="ignore", over="ignore"):
                        np.exp(sub, out=sub)  # NumPy's float32 exp, as the reference
                    _normalise_rows(sub)
            p = vec_dot_round(s, v_type) if ggml else s
            np.matmul(p, v3[j].T, out=res[j, i0:i1])

    _blas.run_split(work, len(tasks))
