"""Row reductions and norms over dim 0 (ggml-semantics §2.9, §2.11). Sums accumulate in double where ggml's
CPU kernels do."""

from __future__ import annotations

import numpy as np

from npggml.ops._libm import reduce_add16
from npggml.ops.registry import Out, op, require, require_row

F32 = np.float32


@op("sum_rows", ggml="SUM_ROWS")
def sum_rows(a):
    require(a.dtype == "f32", f"sum_rows is F32 only, got {a.dtype}")
    return Out((1, *a.ne[1:]), a.dtype)


@sum_rows.kernel
def _sum_rows(out, a):
    return a.sum(axis=-1, keepdims=True, dtype=np.float64)


@op("mean", ggml="MEAN")
def mean(a):
    require(a.dtype == "f32", f"mean is F32 only, got {a.dtype}")
    return Out((1, *a.ne[1:]), "f32")


@mean.kernel
def _mean(out, a):
    return (a.sum(axis=-1, keepdims=True, dtype=np.float64).astype(F32) / F32(a.shape[-1])).astype(F32)


def _norm_rows(x: np.ndarray, eps: float) -> np.ndarray:
    """ggml_compute_forward_norm_f32: the row sum in double rounded to float, mean = sum/n in float; the
    centred squares in float, summed in double (blocks of 16 first reduced in float, ggml_vec_cvar_f32);
    float variance and scale."""
    x = x.astype(F32, copy=False)
    n = x.shape[-1]
    mu = x.sum(axis=-1, keepdims=True, dtype=np.float64).astype(F32) / F32(n)
    y = x - mu
    sq = y * y
    nb = n // 16 * 16
    blocks = reduce_add16(sq[..., :nb].reshape(*sq.shape[:-1], nb // 16, 16)).astype(np.float64)
    terms = np.concatenate([blocks, sq[..., nb:].astype(np.float64)], axis=-1)
    var = (np.cumsum(terms, axis=-1)[..., -1:] / n).astype(F32)
    return y * (F32(1) / np.sqrt(var + F32(eps)))


@op("norm", ggml="NORM", flops=lambda n: 5 * n.nelements)
def norm(a, eps):
    require(a.dtype == "f32", f"norm is F32 only, got {a.dtype}")
    return Out(a.ne, a.dtype)


@norm.kernel
def _norm(out, a, eps):
    return _norm_rows(a, eps)


@op("rms_norm", ggml="RMS_NORM", inplace=True, flops=lambda n: 3 * n.nelements)
def rms_norm(a, eps):
    require(a.dtype == "f32", f"rms_norm is F32 only, got {a.dtype}")
    require(a.nb[0] == 4, "rows must be contiguous")
    return Out(a.ne, a.dtype)


@rms_norm.kernel
def _rms_norm(out, a, eps):
    return _rms_norm_rows(a, eps)


def _rms_norm_rows(a: np.ndarray, eps: float) -> np.ndarray:
    sq = (a * a).astype(np.float64)  # products rounded to float, summed in double
    ms = (sq.sum(axis=-1, keepdims=True) / a.shape[-1]).astype(F32)
    return a * (F32(1) / np.sqrt(ms + F32(eps)))


def _norm_affine_flops(n) -> float:
    """The replaced nodes' flops: the norm's (5 or rms 3 per element), the mul's and the add's (1 each)."""
    return ((3 if n.params["rms"] else 5) + 1 + (n.srcs[2] is not None)) * n.nelements


@op("norm_affine", ggml="NORM_AFFINE", srcs=3, flops=_norm_affine_flops)
def norm_affine(a, w, b, eps, rms=False):
    """Fused `add(mul(norm(a), w), b)` (`rms`: `rms_norm`; b may be None: no add), w and b one row each, as
    `npggml.graph.fuse.fuse_norm_affine` finds them in the graph (the layer norms' scale and shift)."""
    require(a.dtype == "f32", f"norm_affine is F32 only, got {a.dtype}")
    require_row(w, a.ne[0], "w")
    if b is not None:
        require_row(b, a.ne[0], "b")
    return Out(a.ne, a.dtype)


@norm_affine.kernel
def _norm_affine(out, a, w, b, eps, rms=False):
    """The replaced nodes' reference kernels in order: the unfused graph's value, bit for bit."""
    y = (_rms_norm_rows if rms else _norm_rows)(a, eps) * w.reshape(-1)
    return y if b is None else y + b.reshape(-1)


@op("group_norm", ggml="GROUP_NORM", flops=lambda n: 5 * n.nelements)
def group_norm(a, n_groups, eps):
    """Normalise each group of ceil(ne2/n_groups) channels (dim 2) over dims 0, 1 and its channels, per i3."""
    require(a.dtype == "f32", f"group_norm is F32 only, got {a.dtype}")
    require(a.nb[0] == 4, "rows must be contiguous")
    require(n_groups > 0, f"n_groups = {n_groups} must be > 0")
    return Out(a.ne, a.dtype)


@group_norm.kernel
def _group_norm(out, a, n_groups, eps):
    """ggml_compute_forward_group_norm_f32: double sums (row by row), float mean, float (x - mean), squares
    rounded to float before the double sum, float variance and scale."""
    x = a.astype(F32, copy=False)
    n3, c, n1, n0 = x.shape
    cpg = (c + n_groups - 1) // n_groups
    res = np.empty(x.shape, F32)
    for g in range(n_groups):
        lo, hi = g * cpg, min((g + 1) * cpg, c)
        if lo >= hi:
            continue
        blk = x[:, lo:hi]
        cnt = n0 * n1 * (hi - lo)
        rows = blk.sum(axis=-1, dtype=np.float64)  # per-row double sums, added up in row order
        mean = (np.cumsum(rows.reshape(n3, -1), axis=-1)[:, -1] / cnt).astype(F32)
        v = blk - mean[:, None, None, None]
        sq = (v * v).astype(np.float64).sum(axis=-1)
        var = (np.cumsum(sq.reshape(n3, -1), axis=-1)[:, -1] / cnt).astype(F32)
        scale = F32(1) / np.sqrt(var + F32(eps))
        res[:, lo:hi] = v * scale[:, None, None, None]
    return res


@op("argmax", ggml="ARGMAX")
def argmax(a):
    """I32 [ne1]: per row the index of the maximum; ties resolve to the last index."""
    require(a.ne[2] == 1 and a.ne[3] == 1, f"argmax needs a matrix, got {a.ne_str()}")
    require(a.dtype == "f32", f"argmax is F32 only, got {a.dtype}")
    require(a.nb[0] == 4, "rows must be contiguous")
    return Out((a.ne[1], 1, 1, 1), "i32")


def _argmax_loop(row: np.ndarray) -> int:
    """ggml_vec_argmax_f32 literally: max = MAX(max, x[i]); if max == x[i] then idx = i."""
    mx, idx = F32(-np.inf), 0
    for i, v in enumerate(row):
        mx = mx if mx > v else v
        if mx == v:
            idx = i
    return idx


@argmax.kernel
def _argmax(out, a):
    x = a[0, 0]  # (ne1, ne0)
    n = x.shape[-1]
    mx = x.max(axis=-1, keepdims=True)
    last = n - 1 - np.argmax((x == mx)[:, ::-1], axis=-1)
    bad = np.isnan(x).any(axis=-1)
    for r in np.nonzero(bad)[0]:
        last[r] = _argmax_loop(x[r])
    return last.astype(np.int32).reshape(out.shape)
