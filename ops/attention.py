"""soft_max_ext (ggml-semantics §2.13)."""

from __future__ import annotations

import math

import numpy as np

from npggml.ops.elementwise import tile_to
from npggml.ops.registry import Out, op, require

F32 = np.float32


def alibi_slopes(n_head: int, max_bias: float) -> np.ndarray:
    if max_bias <= 0:
        return np.ones(n_head, dtype=F32)
    n_log2 = 1 << int(math.floor(math.log2(n_head)))
    m0 = F32(2.0 ** (-max_bias / n_log2))
    m1 = F32(2.0 ** (-(max_bias / 2.0) / n_log2))
    h = np.arange(n_head)
    return np.where(h < n_log2, m0 ** (h + 1), m1 ** (2 * (h - n_log2) + 1)).astype(F32)


@op("soft_max_ext", ggml="SOFT_MAX", srcs=2, inplace=True, flops=lambda n: 5 * n.nelements)
def soft_max_ext(a, mask, scale=1.0, max_bias=0.0):
    require(a.dtype == "f32", f"soft_max is F32 only, got {a.dtype}")
    require(a.is_contiguous(), "a must be contiguous")
    if mask is not None:
        require(mask.dtype in ("f16", "f32"), f"mask must be f16 or f32, got {mask.dtype}")
        require(mask.is_contiguous(), "mask must be contiguous")
        require(mask.ne[0] == a.ne[0] and mask.ne[1] >= a.ne[1],
                f"mask {mask.ne_str()} must have ne0 == {a.ne[0]} and ne1 >= {a.ne[1]}")
        require(a.ne[2] % mask.ne[2] == 0 and a.ne[3] % mask.ne[3] == 0, "mask must broadcast over dims 2/3")
    require(max_bias == 0 or mask is not None, "max_bias > 0 needs a mask")
    return Out(a.ne, a.dtype)


@soft_max_ext.kernel
def _soft_max_ext(out, a, mask, scale=1.0, max_bias=0.0):
    w = a * F32(scale)
    if mask is not None:
        m = mask[:, :, : a.shape[2], :].astype(F32, copy=False)
        slope = alibi_slopes(a.shape[1], max_bias)[None, :, None, None]
        w = w + slope * tile_to(m, a.shape)
    return softmax_rows(w)


def softmax_rows(w: np.ndarray) -> np.ndarray:
    """exp(w - max) scaled by 1/sum, the sum accumulated in double (ggml_vec_soft_max_f32)."""
    mx = w.max(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore"):
        e = np.exp(w - mx)
    s = e.sum(axis=-1, keepdims=True, dtype=np.float64)
    return e * (1.0 / s).astype(F32)
