"""`attn`: the attention of `build_attn` without flash attention as one op, computed block by block.

The ViT graphs (CLIP, DeepSeek-OCR v2's Qwen2 encoder, llava) compute attention as
`mul_mat(v, soft_max_ext(mul_mat(k, q), mask, scale))`: the whole score tensor `[Nk, Nq, H, B]` written by one
product, rewritten in place by the softmax and read again by the second product (28 MiB a layer for v2's six tiles
of 288 tokens). `npggml.graph.fuse.fuse_attention` replaces that sub-graph with this op, which holds one task's
scores per thread instead.

Sources (ggml order): q `[D, Nq, H, B]`, k `[D, Nk, Hk, Bk]`, v `[Nk, Dv, Hk, Bk]` (the operands of the two
mul_mats, which broadcast k and v over q's dims 2/3 by integer division: H/Hk query heads a k and v head is
grouped-query attention), mask None or
`[Nk, >= Nq, M2, M3]` f32/f16 (soft_max_ext's: broadcast over dims 2/3 by modulo, extra rows ignored). q and k with
unit-stride rows, v with unit-stride rows or columns (after `elide_copies` v is read transposed from the value
projection). Result `[Dv, Nq, H, B]` F32: the value of the replaced `mul_mat(v, soft_max)` node.

The reference kernel runs the replaced nodes' reference kernels in graph order: the unfused graph's value, bit for
bit. The fast kernel cuts the work like `sam_rel_attn`'s (`npggml.ops.fast.sam_attn`): tasks of up to
`BLOCK_ELEMENTS` scores, several heads that share a k and v (all of them without grouped-query attention, one
group with it) or one head's block of query rows; each task's scores key-major from one batched sgemm
(`k @ q_block^T`), then two Numba passes across the queries: the max of the scaled, masked scores over every key
(exact, so every exponential is at most 1), their exponentials in place (`exp32_lean`: a -inf mask gives 2.7e-38
instead of 0, ~1e-38 of the query's sum; NaN kept) with each query's sum (float32 sums of 8 keys added into a
double), a second sgemm with v, and each query's outputs times float32(1/sum). Under ggml numerics it runs the
replaced nodes' fast kernels one after the other (their values bit for bit, holding the whole score tensor).

Keys a mask hides are skipped where that is exact (`key_reach`): a key whose mask is more than REACH_GAP + 2 x the
largest possible |score * scale| (D max|q| max|k|) below its query's best mask value has the reference weight
exp(< -128) = 0, so a block of REACH_ROWS query rows stops at the last key one of its queries may need (blocks of
equal reach merged). v2's hybrid mask (-1e9) then leaves its image queries the image keys and query i the keys up
to i: ~30 % of the scores, 20 % off a global-view layer (8.0 -> 6.3 ms), 13 % off six tiles' (15.3 -> 13.4 ms).
Not without a mask, nor with a NaN or +inf mask value, a query with every key masked, or a q, k or v value that is
not finite (0 * inf is NaN in the reference's product with v).
"""

from __future__ import annotations

import math
import threading

import numpy as np

from npggml.graph.tensor import Tensor
from npggml.ops.fast import _blas
from npggml.ops.fast._common import F32, F64, exp32_lean, is_f32, serial
from npggml.ops.fast.sam_attn import NEG_INF, kernel_value, normalise_queries, ref_value, serial_fma, standin
from npggml.ops.fast.sam_attn import plan as sam_plan
from npggml.ops.registry import Out, ggml_numerics, op, require


def _flops(n) -> float:
    """The replaced nodes' flops: the two mul_mats and soft_max_ext (5 an element)."""
    q, v = n.srcs[0], n.srcs[2]
    scores = float(v.ne[0]) * q.ne[1] * q.ne[2] * q.ne[3]
    return (2.0 * q.ne[0] + 2.0 * v.ne[1] + 5.0) * scores


@op("attn", ggml="ATTN", srcs=4, flops=_flops)
def attn(q, k, v, mask, scale):
    D, Nq, H, B = q.ne
    Nk, Hk, Bk = k.ne[1], k.ne[2], k.ne[3]
    for t in (q, k, v):
        require(t.dtype == "f32", f"{t.name or 'operand'} must be f32, got {t.dtype}")
    require(k.ne[0] == D, f"k {k.ne_str()} must have rows of D = {D}")
    require(H % Hk == 0 and B % Bk == 0, f"k {k.ne_str()} must broadcast over q {q.ne_str()}'s dims 2 and 3")
    require(v.ne[0] == Nk and v.ne[2:] == (Hk, Bk), f"v {v.ne_str()} must be [Nk={Nk}, Dv, Hk={Hk}, Bk={Bk}]")
    require(q.nb[0] == 4 and k.nb[0] == 4, "q and k rows must be contiguous")
    require(4 in (v.nb[0], v.nb[1]), "v must have rows or columns of unit stride")
    if mask is not None:
        require(mask.dtype in ("f16", "f32"), f"mask must be f16 or f32, got {mask.dtype}")
        require(mask.ne[0] == Nk and mask.ne[1] >= Nq and H % mask.ne[2] == 0 and B % mask.ne[3] == 0,
                f"mask {mask.ne_str()} must be [Nk={Nk}, >= {Nq}, a divisor of {H}, a divisor of {B}]")
    return Out((v.ne[1], Nq, H, B), "f32")


def _replaced(out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Stand-ins of the replaced nodes: mul_mat(k, q), soft_max_ext, mul_mat(v, softmax)."""
    q_t, k_t, v_t, m_t = out.srcs
    kq_t = standin("mul_mat", (k_t.ne[1], *q_t.ne[1:]), (k_t, q_t))
    sm_t = standin("soft_max_ext", kq_t.ne, (kq_t, m_t), {"scale": out.params["scale"], "max_bias": 0.0})
    return kq_t, sm_t, standin("mul_mat", out.ne, (v_t, sm_t))


@attn.kernel
def _attn(out, q, k, v, mask, scale):
    """The replaced nodes' own reference kernels, in graph order (it holds the whole score tensor)."""
    kq_t, sm_t, kqv_t = _replaced(out)
    return ref_value(kqv_t, v, ref_value(sm_t, ref_value(kq_t, k, q), mask, scale, 0.0))


@serial_fma
def _softmax_cols(S, mT, which, scale, colmax, acc, part):
    """Each head j's key-major scores S[j] -> exp(s*scale + mask - max) in place and acc[j] = each query's sum;
    mT[which[j]] is head j's mask, transposed (a row per key, or a single row of zeros). The max runs over every
    key (`np.maximum` across the queries; a NaN score makes its query's max NaN, and so its output, as in the
    reference); the sums are float32 sums of 8 keys added into a double."""
    nk, qb = S.shape[1], S.shape[2]
    tmp = np.empty(qb, F32)
    for j in range(S.shape[0]):
        sT, m = S[j], mT[which[j]]
        rows = m.shape[0]
        colmax[:] = NEG_INF
        for kk in range(nk):
            row, mr = sT[kk], m[kk % rows]
            for c in range(qb):
                tmp[c] = row[c] * scale + mr[c]
            np.maximum(colmax, tmp, colmax)
        a = acc[j]
        a[:] = 0.0
        part[:] = 0.0
        for kk in range(nk):
            row, mr = sT[kk], m[kk % rows]
            for c in range(qb):
                e = exp32_lean(row[c] * scale + mr[c] - colmax[c])
                row[c] = e
                part[c] += e
            if kk % 8 == 7:
                for c in range(qb):
                    a[c] += part[c]
                    part[c] = 0.0
        for c in range(qb):
            a[c] += part[c]


TASKS_PER_THREAD = 4


def plan(group: int, n_heads: int, nq: int, nk: int) -> tuple[int, int]:
    """`sam_attn.plan` with at most the `group` heads that share one k and v (all of them without grouped-query
    attention) and few enough to make ~4 tasks a thread of the `n_heads` heads of all batch entries (v2's global
    view, 14 heads: 7.8 ms a layer, 8.9 with a task a thread)."""
    return sam_plan(min(group, -(-n_heads // (TASKS_PER_THREAD * _blas.workers()))), nq, nk)


def head_runs(n_heads: int, span: int, g: int) -> list[tuple[int, int]]:
    """[h0, h1) of each task's heads: each run of `span` heads (that share k and v) cut into near-equal parts of at
    most g."""
    parts = -(-span // g)
    return [(s + i * span // parts, s + (i + 1) * span // parts) for s in range(0, n_heads, span)
            for i in range(parts)]


@serial
def _transpose(src, dst):
    """dst[z, i, j] = src[z, j, i], in 16 x 16 tiles: 0.2 ms for a 512 x 512 mask, against 0.58 ms for NumPy's
    copy of the transposed view (which reads down the columns)."""
    for z in range(src.shape[0]):
        for i0 in range(0, dst.shape[1], 16):
            for j0 in range(0, dst.shape[2], 16):
                for i in range(i0, min(i0 + 16, dst.shape[1])):
                    for j in range(j0, min(j0 + 16, dst.shape[2])):
                        dst[z, i, j] = src[z, j, i]


def _masks(mask: np.ndarray | None, nq: int) -> np.ndarray:
    """The distinct masks transposed, (M3*M2, Nk, Nq) F32 with rows per key; no mask: one row of zeros."""
    if mask is None:
        return np.zeros((1, 1, nq), F32)
    m = mask[:, :, :nq, :].astype(F32, copy=False)
    m = m.reshape(-1, *m.shape[2:])
    mT = np.empty((m.shape[0], m.shape[2], m.shape[1]), F32)
    _transpose(m, mT)
    return mT


REACH_GAP = 128.0  # exp(-128) is 0 in float32 (below -104)
REACH_ROWS = 64  # query rows with their own key reach (32 ran no faster, 128 saved fewer scores)


@serial
def _reach(mT, gap, reach):
    """reach[z, c] = 1 + the last key of mask z (mT (M, Nk, Nq), a row per key) whose mask for query c is within
    gap (plus 1e-6 of both values, for the scores' float rounding) of the query's largest; False (reach not
    filled) when a mask value is NaN or +inf, or a query's masks are all -inf."""
    nk, nq = mT.shape[1], mT.shape[2]
    top = np.empty(nq, F32)
    bad = np.zeros(nq, np.bool_)
    for z in range(mT.shape[0]):
        top[:] = -np.inf
        for kk in range(nk):
            row = mT[z, kk]
            for c in range(nq):
                x = row[c]
                bad[c] |= (x != x) | (x == np.inf)
                top[c] = x if x > top[c] else top[c]
        for c in range(nq):
            if bad[c] or top[c] == -np.inf:
                return False
            reach[z, c] = 0
        for kk in range(nk):
            row = mT[z, kk]
            for c in range(nq):
                t = F64(top[c])
                x = F64(row[c])
                reach[z, c] = kk + 1 if x >= t - gap - 1e-6 * (abs(t) + abs(x)) else reach[z, c]
    return True


def _amax(x: np.ndarray) -> float:
    """max |x| (NaN if x holds one)."""
    return max(float(x.max()), -float(x.min())) if x.size else 0.0


def key_reach(mask, mT, q, k, v, scale) -> np.ndarray | None:
    """(M, Nq) int64: how many keys each query of each distinct mask needs (the others have a zero weight in the
    reference softmax), or None when every key is needed or that cannot be shown (no mask; a q, k, v or mask
    value that is not finite)."""
    if mask is None or not np.isfinite(v.sum(dtype=F64)):
        return None
    bound = abs(float(scale)) * q.shape[-1] * _amax(q) * _amax(k)  # |q.k| <= D max|q| max|k|
    if not math.isfinite(bound):
        return None
    reach = np.empty(mT.shape[::2], np.int64)
    if not _reach(mT, REACH_GAP + 2.0 * bound, reach) or reach.min() == mT.shape[1]:
        return None
    return reach


def query_blocks(reach: np.ndarray | None, which: np.ndarray, nq: int, nk: int, qb: int) -> list[tuple]:
    """(i0, i1, keys) of a task's query blocks: at most qb rows; with key reaches, blocks of REACH_ROWS rows that
    need their own number of keys (the most any of the task's masks needs), runs of equal reach merged."""
    if reach is None:
        return [(i0, min(i0 + qb, nq), nk) for i0 in range(0, nq, qb)]
    need = reach[which].max(axis=0)
    unit = min(REACH_ROWS, qb)
    out: list[tuple] = []
    for i0 in range(0, nq, unit):
        i1 = min(i0 + unit, nq)
        ke = int(need[i0:i1].max())
        if out and out[-1][2] == ke and i1 - out[-1][0] <= qb:
            out[-1] = (out[-1][0], i1, ke)
        else:
            out.append((i0, i1, ke))
    return out


@attn.fast_kernel
def attn_fast(dst, out, q, k, v, mask, scale):
    if not is_f32(q, k, v, dst) or not dst.flags.c_contiguous:
        return NotImplemented
    if ggml_numerics():
        kq_t, sm_t, kqv_t = _replaced(out)
        kq = kernel_value(kq_t, k, q)  # the softmax overwrites the scores, as in the graph
        kernel_value(kqv_t, v, kernel_value(sm_t, kq, mask, scale, 0.0, dst=kq), dst=dst)
        return None
    B, H, Nq, _ = q.shape
    Bk, Hk, Nk, _ = k.shape
    Dv = v.shape[2]
    gh, gb = H // Hk, B // Bk
    mT = _masks(mask, Nq)
    m3, m2 = (1, 1) if mask is None else mask.shape[:2]  # no mask: mT has the one row of zeros
    span = H if gh == 1 else gh  # heads that share one k and v
    g, qb = plan(span, H * B, Nq, Nk)
    reach = key_reach(mask, mT, q, k, v, scale)
    tasks = []
    for b in range(B):
        for h0, h1 in head_runs(H, span, g):
            which = np.array([(b % m3) * m2 + h % m2 for h in range(h0, h1)])
            tasks += [(b, h0, h1, which, *blk) for blk in query_blocks(reach, which, Nq, Nk, qb)]
    # each block's masks as dense arrays: Numba vectorises the softmax over a block's queries only when their
    # mask rows are contiguous (a column slice of mT ran its passes ~6x slower)
    masks = {blk: np.ascontiguousarray(mT[:, : blk[2], blk[0]: blk[1]]) for blk in {t[4:] for t in tasks}}
    _blas.use_own_threads()
    scratch = {}
    sc = F32(scale)

    def work(lo, hi):
        tid = threading.get_ident()
        if tid not in scratch:
            scratch[tid] = (np.empty(g * Nk * qb, F32), np.empty((2, qb), F32), np.empty(g * qb, F64),
                            np.empty(g * Dv * qb, F32))
        s_buf, (colmax, part), acc_buf, r_buf = scratch[tid]
        for b, h0, h1, which, i0, i1, ke in tasks[lo:hi]:
            m, n = h1 - h0, i1 - i0
            bk = b // gb
            if gh == 1:
                kk, vv = k[bk, h0:h1, :ke], v[bk, h0:h1, :, :ke]
            else:
                kk, vv = k[bk, h0 // gh, :ke][None], v[bk, h0 // gh, :, :ke][None]
            S = s_buf[: m * ke * n].reshape(m, ke, n)
            np.matmul(kk, q[b, h0:h1, i0:i1].transpose(0, 2, 1), out=S)
            acc = acc_buf[: m * n].reshape(m, n)
            _softmax_cols(S, masks[i0, i1, ke], which, sc, colmax[:n], acc, part[:n])
            R = r_buf[: m * Dv * n].reshape(m, Dv, n)
            np.matmul(vv, S, out=R)  # v @ p, as in `sam_rel_attn`
            normalise_queries(R, acc, dst[b, h0:h1, i0:i1])

    _blas.run_split(work, len(tasks))
