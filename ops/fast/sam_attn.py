"""`sam_rel_attn`: SAM attention with decomposed relative positions as one op, computed block by block.

The SAM graph (llama.cpp `build_sam` + `build_attn`) builds the rel-pos bias as a full mask
`[WH, WH, n_head, B] = reshape(add(repeat_4d(rel_w), rel_h))` and then
`mul_mat(v, soft_max_ext(mul_mat(k, q), mask, scale))`: at the 1024 global view that is a 4096 x 4096 score
matrix per head, three times over (scores, mask, probabilities). `npggml.graph.fuse.fuse_sam_attention` replaces
that sub-graph with this op, which takes the two small rel-pos factors and adds `rel_h[q, kh] + rel_w[q, kw]` on
the fly to one block of query rows of a few heads at a time.

Sources (ggml order): q `[D, Nq, H, B]`, k `[D, Nk, H, B]`, v `[Nk, D, H, B]` (the operands of the two mul_mats),
rel_w `[W, 1, Nq, H*B]`, rel_h `[1, Hh, Nq, H*B]` with Nk = W*Hh (key index kh*W + kw); q and k with unit-stride
rows, v with unit-stride rows or columns (after `elide_copies` all three are views of the qkv product, v read
transposed). Result `[D, Nq, H, B]` F32: exactly the value of the replaced `mul_mat(v, soft_max)` node. The
reference kernel runs the replaced nodes' reference kernels in graph order (same bits as the unfused graph). The
fast kernel cuts the work into tasks of about 2 MiB of scores (8 MiB blocks ran ~5 % slower): one head's block of
128 query rows at the 1024 global view, the 12 heads of one 14x14 window in the windowed layers. The BLAS pool's
threads take tasks; each reads its operands as views of the nodes' buffers (copying q, k and the bias factors
first, on one thread, made the op twice as slow on a page: copies of q and k of up to 31 MiB a layer, and some
windowed layers then took 0.52-0.63 s instead of 0.07-0.12; a head split into 4 or more tasks has its k and v
copied dense once per thread and head, 0.8-2 MiB that BLAS then packs faster), computes its scores key-major with
one single-threaded sgemm (`k @ q_block^T`, batched over the task's heads), then two Numba passes that run across
the queries: the max of the scaled and biased scores over every 8th row of the key grid (read only; a full max pass
was ~5 % of a task, and any shift at most the true max gives the same softmax: `_softmax_cols` says how sums that
come out large are handled), then their exponentials in place with each query's sum (float32 sums of 8 keys added
into a double, in key order; `exp32_lean`, within 1.2 ulp of exp), multiplies them by v with a second sgemm,
`v @ p`, a column per query (against `p^T @ v^T`: 5-10 % faster on session 5's Zen 3; level for a global view and
1-4 % slower for windows and tiles on session 19's Zen 4; on session 25's Ice Lake 3-19 % faster as one thread's
product, a global layer 2 % faster and windows and tiles level), and writes each query's 64 outputs times 1/sum
into the result (the reference normalises the probabilities before the product: the same value to float32
rounding). Memory: one task's scores per thread. Under ggml numerics it goes head by head through the mul_mat
kernels themselves and soft_max_ext's ggml softmax, so that it reproduces whatever ggml kernel they reproduce (one
head's scores).
"""

from __future__ import annotations

import threading

import numba
import numpy as np

from npggml.graph.tensor import Tensor, packed_nb
from npggml.ops import registry
from npggml.ops.fast import _blas
from npggml.ops.fast._common import F32, F64, exp32_lean, helper, is_f32, kernel, serial
from npggml.ops.fast.softmax import softmax_row_ggml
from npggml.ops.registry import Out, ggml_numerics, op, require

NEG_INF = F32(-np.inf)
BLOCK_ELEMENTS = 1 << 19  # scores per task (2 MiB of float32): 128 query rows of 4096 keys, or 12 196x196 heads
# The softmax's shift: the max over every MAX_SAMPLE_STEP-th row of the key grid. A sum of exponentials above
# SUM_LIMIT is divided out; one of SUM_OVERFLOW or more may hold an exponential clamped at exp(88) = 1.65e38
# (`exp32_lean`), so its scores are taken again with the true max (`_softmax_cols`, `_settle_sums`).
MAX_SAMPLE_STEP = 8
SUM_LIMIT, SUM_OVERFLOW = F64(2.0**20), F64(2.0**126)


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
    require(q.nb[0] == 4 and k.nb[0] == 4, "q and k rows must be contiguous")
    require(4 in (v.nb[0], v.nb[1]), "v must have rows or columns of unit stride")
    return Out((D, Nq, H, B), "f32")


def _bias_rows(out, rel_w, rel_h):
    """rel_w, rel_h as (B, H, Nq, W) and (B, H, Nq, Hh) arrays (ggml's dim 3 of the factors runs over H*B, the
    head fastest); views of the nodes' buffers, which are contiguous in the SAM graph."""
    B, H, Nq = out.ne[3], out.ne[2], out.ne[1]
    W, Hh = out.srcs[3].ne[0], out.srcs[4].ne[1]
    rw = np.ascontiguousarray(rel_w, F32).reshape(B, H, Nq, W)
    rh = np.ascontiguousarray(rel_h, F32).reshape(B, H, Nq, Hh)
    return rw, rh


def standin(op_name: str, ne: tuple, srcs: tuple, params: dict | None = None) -> Tensor:
    """A packed F32 node of the replaced sub-graph, for the reference kernels that look at their node."""
    ne = tuple(int(x) for x in ne)
    return Tensor(dtype="f32", ne=ne, nb=packed_nb("f32", ne), op=op_name, srcs=srcs, params=params or {})


def ref_value(node: Tensor, *args, **params) -> np.ndarray:
    """The value of the stand-in `node` by its op's reference kernel, as F32."""
    return np.asarray(registry.get(node.op).ref(node, *args, **params)).astype(F32, copy=False)


def kernel_value(node: Tensor, *args, dst: np.ndarray | None = None, **params) -> np.ndarray:
    """The value of the stand-in `node` in dst (default: a new buffer): its op's fast kernel, else its
    reference kernel."""
    d = registry.get(node.op)
    dst = np.empty(node.ne[::-1], F32) if dst is None else dst
    if d.fast is None or d.fast(dst, node, *args, **params) is NotImplemented:
        dst[...] = ref_value(node, *args, **params)
    return dst


@sam_rel_attn.kernel
def _sam_rel_attn(out, q, k, v, rel_w, rel_h, scale):
    """The replaced nodes' own reference kernels, in graph order, on stand-ins of the replaced nodes: the value
    is the unfused graph's, bit for bit, whatever those kernels do (it holds the whole score tensor)."""
    q_t, k_t, v_t, rw_t, rh_t = out.srcs
    D, Nq, H, B = q_t.ne
    W, Hh = rw_t.ne[0], rh_t.ne[1]
    Nk = k_t.ne[1]

    kq_t = standin("mul_mat", (Nk, Nq, H, B), (k_t, q_t))
    kq = ref_value(kq_t, k, q)
    rep_t = standin("repeat_4d", (W, Hh, Nq, H * B), (rw_t,), {"ne0": W, "ne1": Hh, "ne2": Nq, "ne3": H * B})
    rep = ref_value(rep_t, rel_w, **rep_t.params)
    add_t = standin("add", rep_t.ne, (rep_t, rh_t))
    mask = ref_value(add_t, rep, rel_h).reshape(B, H, Nq, Nk)
    mask_t = standin("reshape_4d", (Nk, Nq, H, B), (add_t,))
    sm_t = standin("soft_max_ext", kq_t.ne, (kq_t, mask_t), {"scale": scale, "max_bias": 0.0})
    sm = ref_value(sm_t, kq, mask, scale, 0.0)
    return ref_value(standin("mul_mat", out.ne, (v_t, sm_t)), v, sm)


# The reference-mode passes may contract a*b + c into an fma (the exp polynomial runs ~30 % faster); both form
# the biased scores through one helper, `_biased`.
serial_fma = numba.njit(cache=True, nogil=True, fastmath={"contract"}, error_model="numpy")


# The scores of one block are held key-major, sT[key, query] (the product k @ q_block^T), so every pass below is
# an elementwise loop over a row of queries, with one running max / sum per query column: each query's
# reduction still runs over its keys in the reference's order, and the loops vectorise across queries.


@helper
def _biased(row, wr, hr, scale, c):
    """Query c's biased score in key row `row`: s*scale + (rel_w[kw] + rel_h[kh]), one fma under the passes'
    contraction; both passes form it here, so the max is the max of exactly what the exp pass exponentiates."""
    return row[c] * scale + (wr[c] + hr[c])


@helper
def _weight(row, wr, hr, scale, colmax, c):
    """exp(biased score - the query's max), the softmax numerator (`exp32_lean`)."""
    return exp32_lean(_biased(row, wr, hr, scale, c) - colmax[c])


@serial_fma
def _max_cols(sT, rwT, rhT, scale, colmax, step):
    """colmax = max of s*scale + (rel_w[kw] + rel_h[kh]) per query over the key rows kh = 0, step, 2 step, ...
    (every key when step is 1; the scores are only read). Each key row's biased scores go to a temporary row
    first; the running max as a loop of selects ran 3x slower than `np.maximum` (a NaN score makes its query's
    max NaN, and so its output, as in the reference)."""
    W, Hh = rwT.shape[0], rhT.shape[0]
    qb = sT.shape[1]
    tmp = np.empty(qb, F32)
    colmax[:] = NEG_INF
    for kh in range(0, Hh, step):
        hr = rhT[kh]
        for kw in range(W):
            row = sT[kh * W + kw]
            wr = rwT[kw]
            for c in range(qb):
                tmp[c] = _biased(row, wr, hr, scale, c)
            np.maximum(colmax, tmp, colmax)


@serial_fma
def _exp_cols(sT, rwT, rhT, scale, colmax, acc, part):
    """sT = exp(s*scale + (rel_w + rel_h) - colmax) in place (`_weight`), acc = their sum per query: float32
    sums of 8 keys (9 after an odd row count W; in `part`) added into a double, in key order (~6 % faster than
    adding each row, converted, into the double sum). Two key rows a step, whose exponentials are independent
    chains (~10 % faster than one row a step)."""
    W, Hh = rwT.shape[0], rhT.shape[0]
    qb = sT.shape[1]
    acc[:] = 0.0
    part[:] = 0.0
    n = 0
    for kh in range(Hh):
        hr = rhT[kh]
        for kw in range(0, W, 2):
            r0, w0 = sT[kh * W + kw], rwT[kw]
            if kw + 1 < W:
                r1, w1 = sT[kh * W + kw + 1], rwT[kw + 1]
                for c in range(qb):
                    a, b = _weight(r0, w0, hr, scale, colmax, c), _weight(r1, w1, hr, scale, colmax, c)
                    r0[c], r1[c] = a, b
                    part[c] += a + b
                n += 2
            else:
                for c in range(qb):
                    a = _weight(r0, w0, hr, scale, colmax, c)
                    r0[c] = a
                    part[c] += a
                n += 1
            if n >= 8:
                n = 0
                for c in range(qb):
                    acc[c] += part[c]
                    part[c] = 0.0
    for c in range(qb):
        acc[c] += part[c]


@serial_fma
def _softmax_cols(S, rwT, rhT, scale, colmax, acc, part, step):
    """Each head's key-major scores S[j] (a task's heads, one after the other) -> their exponentials and sums:
    `_max_cols` with `step`, then `_exp_cols` with that max, then `_settle_sums`. Any shift gives the same softmax
    as long as the exponentials neither overflow nor all vanish. With step > 1 the shift is the max over a sample
    of the keys, at most the true max m, so the exponentials are at most exp(m - shift), each at most its query's
    sum, which is at least 1 (the sampled max's own term). False when a sum may hold a clamped exponential: the
    caller computes the scores again and this with step 1 (every exponential then at most 1: sums at most the
    number of keys, or NaN, so that call returns True)."""
    for j in range(S.shape[0]):
        _max_cols(S[j], rwT[j], rhT[j], scale, colmax, step)
        _exp_cols(S[j], rwT[j], rhT[j], scale, colmax, acc[j], part)
        if not _settle_sums(S[j], acc[j], colmax):
            return False
    return True


@serial
def _settle_sums(sT, acc, inv):
    """One head's sums against the limits: one of SUM_OVERFLOW or more (an exponential may have been clamped)
    returns False; one above SUM_LIMIT is divided out of its query's exponentials (times float(1/sum), as the
    reference normalises them) and becomes 1; the others stay. `inv` is scratch (the column maxima, used up)."""
    large = False
    for c in range(acc.shape[0]):
        if acc[c] >= SUM_OVERFLOW:
            return False
        inv[c] = F32(1.0)
        if acc[c] > SUM_LIMIT:
            inv[c] = F32(1.0 / acc[c])
            acc[c] = 1.0
            large = True
    if large:
        for k in range(sT.shape[0]):
            row = sT[k]
            for c in range(row.shape[0]):
                row[c] *= inv[c]
    return True


@serial
def normalise_queries(R, acc, res):
    """res[j, c, :] = R[j, :, c] * float(1/sum) per query c: the product with v (R = v @ p, a column per query)
    is normalised after the product instead of before."""
    for j in range(R.shape[0]):
        for c in range(R.shape[2]):
            inv = F32(1.0 / acc[j, c])
            for d in range(R.shape[1]):
                res[j, c, d] = R[j, d, c] * inv


@kernel
def _bias_softmax_ggml(w, rw, rh, scale):
    """Each query row of w in place: w[q, kh*W + kw] * scale + (rel_w[q, kw] + rel_h[q, kh]) (soft_max_ext's
    a*scale + 1*mask with the mask add(repeat_4d(rel_w), rel_h)), then ggml's softmax of the row; rows in
    parallel, one pass over the head's scores."""
    W, Hh = rw.shape[1], rh.shape[1]
    for q in numba.prange(w.shape[0]):
        row = w[q]
        wr = rw[q]
        for kh in range(Hh):
            h = rh[q, kh]
            for kw in range(W):
                row[kh * W + kw] = row[kh * W + kw] * scale + (wr[kw] + h)
        softmax_row_ggml(row)


def _ggml_heads(out, q, k, v, rw, rh, scale, res) -> None:
    """ggml numerics, head by head: the two products by the mul_mat kernels themselves (on stand-ins with the
    replaced nodes' operands, so whatever ggml kernel they reproduce, they reproduce it here), the bias, scale
    and ggml's soft_max as soft_max_ext's fast kernel computes them. Holds one head's scores."""
    q_t, k_t, v_t, _, _ = out.srcs
    Nq, Nk = q_t.ne[1], k_t.ne[1]
    kq_t = standin("mul_mat", (Nk, Nq, 1, 1), (k_t, q_t))
    sm_t = standin("soft_max_ext", (Nk, Nq, 1, 1), (kq_t, None))
    kqv_t = standin("mul_mat", (out.ne[0], Nq, 1, 1), (v_t, sm_t))
    w = np.empty((1, 1, Nq, Nk), F32)
    for b, h in np.ndindex(*q.shape[:2]):
        kernel_value(kq_t, k[b, h][None, None], q[b, h][None, None], dst=w)
        _bias_softmax_ggml(w[0, 0], rw[b, h], rh[b, h], scale)
        kernel_value(kqv_t, v[b, h][None, None], w, dst=res[b, h][None, None])


def dense(x: np.ndarray) -> np.ndarray:
    """The 2-D view x itself when it is dense, else a dense copy with the same unit-stride axis (x or x.T
    C-contiguous): copying along the rows of the source costs a few % of one of the head's products."""
    if x.flags.c_contiguous or x.flags.f_contiguous:
        return x
    return np.ascontiguousarray(x) if x.strides[-1] == 4 else np.ascontiguousarray(x.T).T


# Dense copies of a head's k and v once it spans this many tasks. One attention layer, alternated runs (medians of
# 11, 15 and 25; session 13's Zen 3): 4096 queries in 32 tasks a head 3-13 % faster (667 -> 582 ms), 2304 x 6
# tiles (11 tasks) 1-4 % faster, 1600 x 6 tiles (5 tasks) from 6 % faster to 1 % slower (594 -> 557, 441 -> 444,
# 447 -> 453 ms). On session 20's Zen 4 those 5 tasks a head 4-7 % faster (343 -> 319, 337 -> 322, 332 -> 316 ms;
# the v1 page 19.84 -> 19.50 s, faster in 5 of 5 alternations), so from 4 on.
DENSE_MIN_TASKS = 4


def blocks(nq: int, nk: int) -> int:
    """Query rows per block: blocks of at most BLOCK_ELEMENTS scores, the rows shared out evenly (1600 queries
    make two blocks of 800, not 1310 + 290)."""
    most = max(1, min(nq, BLOCK_ELEMENTS // max(nk, 1)))
    n_blocks = -(-nq // most)
    return -(-nq // n_blocks)


def plan(n_heads: int, nq: int, nk: int) -> tuple[int, int]:
    """(heads, query rows) per task, `n_heads` being the heads of one batch entry (a task's heads are views of
    one q, k and v): a head whose scores fit in a block goes whole, with as many other heads as fit (SAM's 196 x
    196 windows: 12 a task); a larger head goes alone, in blocks of query rows."""
    if nq * nk <= BLOCK_ELEMENTS:
        return max(1, min(n_heads, BLOCK_ELEMENTS // max(nq * nk, 1))), nq
    return 1, blocks(nq, nk)


@sam_rel_attn.fast_kernel
def sam_rel_attn_fast(dst, out, q, k, v, rel_w, rel_h, scale):
    if not is_f32(q, k, v, dst) or not dst.flags.c_contiguous:
        return NotImplemented
    B, H, Nq, D = q.shape
    rw, rh = _bias_rows(out, rel_w, rel_h)
    if ggml_numerics():
        _ggml_heads(out, q, k, v, rw, rh, F32(scale), dst)
        return None
    g, qb = plan(H, Nq, k.shape[2])
    tasks = [(b, h0, min(h0 + g, H), slice(i0, min(i0 + qb, Nq)), None)
             for b in range(B) for h0 in range(0, H, g) for i0 in range(0, Nq, qb)]
    attend(dst, q, k, v, rw, rh, F32(scale), g, qb, tasks)
    return None


def attend(dst, q, k, v, rw, rh, sc, g, qb, tasks) -> None:
    """The reference-mode attention of `tasks` on the BLAS pool. A task (b, h0, h1, sel, dest) is the queries `sel`
    (a slice or an index array, at most qb of them) of heads h0:h1 (at most g) of batch entry b; their outputs go
    to dst[b, h0:h1, sel] (dest None, dst (B, H, Nq, D)) or to rows `dest` of dst (n, H, D)."""
    Nk, D = k.shape[2], q.shape[3]
    _blas.use_own_threads()
    scratch = {}  # per thread: a task's scores, their column maxima, partial and whole sums, the product with v
    held = {}  # per thread: (b, h) -> that head's k and v, dense, while its tasks last
    dense_heads = g == 1 and len(tasks) >= DENSE_MIN_TASKS * len({t[:2] for t in tasks})

    def operands(tid, b, h0, h1):
        """k and v of the task's heads: views, or (a head split into several tasks) dense copies of one head's,
        which BLAS packs faster than the strided views (4-7 % of each product), made once per thread and head."""
        if not dense_heads:
            return k[b, h0:h1], v[b, h0:h1]
        key, kd, vd = held.get(tid, (None, None, None))
        if key != (b, h0):
            kd, vd = dense(k[b, h0]), dense(v[b, h0])
            held[tid] = ((b, h0), kd, vd)
        return kd[None], vd[None]

    def work(lo, hi):
        """A chunk of tasks, each on its own: scores -> softmax -> times v -> normalised into the result. The
        operands are views (q and k of a SAM layer are strided: their heads interleave in each token's row)."""
        tid = threading.get_ident()
        if tid not in scratch:
            scratch[tid] = (np.empty(g * Nk * qb, F32), np.empty((2, qb), F32), np.empty(g * qb, F64),
                            np.empty(g * D * qb, F32))
        s_buf, (colmax, part), acc_buf, r_buf = scratch[tid]
        for b, h0, h1, sel, dest in tasks[lo:hi]:
            qs = q[b, h0:h1][:, sel]  # a view for a slice, the picked rows for an index array
            m, n = qs.shape[:2]
            kk, vv = operands(tid, b, h0, h1)
            S = s_buf[: m * Nk * n].reshape(m, Nk, n)
            qT = qs.transpose(0, 2, 1)
            np.matmul(kk, qT, out=S)  # mul_mat(k, q), key-major
            # the block's bias rows, one row of queries per kw (kh): contiguous, as Numba vectorises those
            rw_b = np.ascontiguousarray(rw[b, h0:h1][:, sel].transpose(0, 2, 1))
            rh_b = np.ascontiguousarray(rh[b, h0:h1][:, sel].transpose(0, 2, 1))
            acc = acc_buf[: m * n].reshape(m, n)
            if not _softmax_cols(S, rw_b, rh_b, sc, colmax[:n], acc, part[:n], MAX_SAMPLE_STEP):
                np.matmul(kk, qT, out=S)  # a sum may have overflowed: again, with the true max
                _softmax_cols(S, rw_b, rh_b, sc, colmax[:n], acc, part[:n], 1)
            R = r_buf[: m * D * n].reshape(m, D, n)
            np.matmul(vv, S, out=R)  # v @ p, a column per query (the module docstring says why)
            if dest is None:
                normalise_queries(R, acc, dst[b, h0:h1, sel])
            else:
                normalise_rows(R, acc, dst, dest, h0)

    _blas.run_split(work, len(tasks))


@serial
def normalise_rows(R, acc, res, dest, h0):
    """res[dest[c], h0 + j, :] = R[j, :, c] * float(1/sum): `normalise_queries` into the rows `dest` of res (n, H,
    D), an attention output with each token's heads side by side in its row."""
    for j in range(R.shape[0]):
        for c in range(R.shape[2]):
            inv = F32(1.0 / acc[j, c])
            row = res[dest[c], h0 + j]
            for d in range(R.shape[1]):
                row[d] = R[j, d, c] * inv
