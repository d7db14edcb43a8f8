"""arange (ggml-semantics §2.23)."""

from __future__ import annotations

import math

import numpy as np

from npggml.ops._libm import fma32
from npggml.ops.registry import Out, op, require

F32 = np.float32


def arange_len(start: float, stop: float, step: float) -> int:
    return int(math.ceil(F32(F32(F32(stop) - F32(start)) / F32(step))))


@op("arange", ggml="ARANGE", srcs=0)
def arange(start, stop, step):
    """F32 [ceil((stop - start) / step)], v[i] = start + step*i in float32 (one fused multiply-add)."""
    require(stop > start, f"stop {stop} must be > start {start}")
    require(step > 0, f"step {step} must be > 0")
    return Out((arange_len(start, stop, step), 1, 1, 1), "f32")


@arange.kernel
def _arange(out, start, stop, step):
    i = np.arange(out.ne[0]).astype(F32)
    return fma32(F32(step), i, F32(start)).reshape(out.shape)  # start + step*i, contracted by GCC
