"""Row reductions and norms over dim 0 (ggml-semantics §2.9, §2.11). Sums accumulate in double where ggml's
CPU kernels do."""

from __future__ import annotations

import numpy as np

from npggml.ops.registry import Out, op, require

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
    """ggml_compute_forward_norm_f32: double sums, float mean/variance/scale."""
    x = x.astype(F32, copy=False)
    n = x.shape[-1]
    mu = (x.sum(axis=-1, keepdims=True, dtype=np.float64) / n).astype(F32)
    y = x - mu
    var = ((y.astype(np.float64) ** 2).sum(axis=-1, keepdims=True) / n).astype(F32)
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
    ms = (np.einsum("...i,...i->...", a, a, dtype=np.float64)[..., None] / a.shape[-1]).astype(F32)
    return a * (F32(1) / np.sqrt(ms + F32(eps)))
