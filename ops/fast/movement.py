"""Copies: cont / cont_Nd / dup / cpy (same shape), concat, repeat / repeat_4d, pad / pad_ext. Values are copied
bit for bit (as unsigned integers of the element size), strided sources read in cache-friendly tiles."""

from __future__ import annotations

import numba
import numpy as np

from npggml.ops import registry
from npggml.ops.fast._common import kernel, row_of

TILE = 32
_UINT = {4: np.uint32, 2: np.uint16, 8: np.uint64, 1: np.uint8}


@kernel
def _copy_rows(x, y):
    """y = x, same 4-D shape; x's last axis has unit stride (or is short)."""
    n3, n2, n1, n0 = x.shape
    for r in numba.prange(n3 * n2 * n1):
        i3, i2, i1 = row_of(r, n2, n1)
        xr = x[i3, i2, i1]
        yr = y[i3, i2, i1]
        for i in range(n0):
            yr[i] = xr[i]


@kernel
def _copy_tiled(x, y):
    """y = x for a strided x: 32x32 tiles of the last two axes, so reads and writes both stay in cache."""
    n3, n2, n1, n0 = x.shape
    t1 = (n1 + TILE - 1) // TILE
    t0 = (n0 + TILE - 1) // TILE
    for r in numba.prange(n3 * n2 * t1 * t0):
        i3 = r // (n2 * t1 * t0)
        i2 = (r // (t1 * t0)) % n2
        b1 = ((r // t0) % t1) * TILE
        b0 = (r % t0) * TILE
        e1 = min(b1 + TILE, n1)
        e0 = min(b0 + TILE, n0)
        for i1 in range(b1, e1):
            for i0 in range(b0, e0):
                y[i3, i2, i1, i0] = x[i3, i2, i1, i0]


def _as_uint(a: np.ndarray) -> np.ndarray | None:
    u = _UINT.get(a.dtype.itemsize)
    return None if u is None else a.view(u)


def _4d(a: np.ndarray) -> np.ndarray:
    return a.reshape((1,) * (4 - a.ndim) + a.shape) if a.ndim < 4 else a


def copy_into(dst: np.ndarray, src: np.ndarray) -> bool:
    """dst[...] = src for arrays of one shape and dtype; False if the dtype is not a plain 1/2/4/8-byte one."""
    if dst.dtype != src.dtype or dst.shape != src.shape:
        return False
    x, y = _as_uint(src), _as_uint(dst)
    if x is None or y is None:
        return False
    x, y = _4d(x), _4d(y)
    if x.size == 0:
        return True
    if x.shape[-1] == 1 or x.strides[-1] == x.itemsize or x.shape[-1] >= 4 * TILE and x.shape[-2] < 4:
        _copy_rows(x, y)
    else:
        _copy_tiled(x, y)
    return True


def _cont(dst, out, a, **_):
    if dst.shape != a.shape:
        if not dst.flags.c_contiguous:
            return NotImplemented
        dst = dst.reshape(a.shape)
    if not copy_into(dst, a):
        return NotImplemented


for _name in ("cont", "cont_1d", "cont_2d", "cont_3d", "cont_4d", "dup"):
    registry.get(_name).fast_kernel(_cont)


@registry.get("cpy").fast_kernel
def cpy_fast(dst, out, a, b):
    if dst.shape != a.shape:
        if not a.flags.c_contiguous:
            return NotImplemented
        a = a.reshape(dst.shape)
    if not copy_into(dst, a):
        return NotImplemented


@registry.get("concat").fast_kernel
def concat_fast(dst, out, a, b, dim):
    ax = 3 - dim
    na = a.shape[ax]
    lo = [slice(None)] * 4
    hi = [slice(None)] * 4
    lo[ax] = slice(0, na)
    hi[ax] = slice(na, None)
    if not copy_into(dst[tuple(lo)], a) or not copy_into(dst[tuple(hi)], b):
        return NotImplemented


@kernel
def _tile(x, y):
    n3, n2, n1, n0 = y.shape
    a3, a2, a1, a0 = x.shape
    for r in numba.prange(n3 * n2 * n1):
        i3, i2, i1 = row_of(r, n2, n1)
        xr = x[i3 % a3, i2 % a2, i1 % a1]
        yr = y[i3, i2, i1]
        if a0 == n0:
            for i in range(n0):
                yr[i] = xr[i]
        else:
            for i in range(n0):
                yr[i] = xr[i % a0]


def _repeat(dst, out, a, *_, **__):
    x, y = _as_uint(a), _as_uint(dst)
    if x is None or y is None or a.dtype != dst.dtype or 0 in a.shape:
        return NotImplemented
    _tile(_4d(x), _4d(y))


registry.get("repeat").fast_kernel(_repeat)
registry.get("repeat_4d").fast_kernel(_repeat)


def _pad_into(dst: np.ndarray, a: np.ndarray, lefts: tuple[int, int, int, int]):
    """dst = a placed at offset `lefts` (NumPy axis order) with zeros around it: each zero cell written once."""
    inner = tuple(slice(lo, lo + n) for lo, n in zip(lefts, a.shape))
    if not copy_into(dst[inner], a):
        return NotImplemented
    for ax in range(4):
        for side in (slice(0, inner[ax].start), slice(inner[ax].stop, None)):
            dst[inner[:ax] + (side,) + (slice(None),) * (3 - ax)] = 0
    return None


@registry.get("pad").fast_kernel
def pad_fast(dst, out, a, p0, p1, p2, p3):
    return _pad_into(dst, a, (0, 0, 0, 0))


@registry.get("pad_ext").fast_kernel
def pad_ext_fast(dst, out, a, lp0, rp0, lp1, rp1, lp2, rp2, lp3, rp3):
    return _pad_into(dst, a, (lp3, lp2, lp1, lp0))
