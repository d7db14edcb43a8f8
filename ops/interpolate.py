"""interpolate (GGML_OP_UPSCALE, ggml-semantics §2.19) and the antialiased bicubic resize.

Modes: NEAREST = 0, BILINEAR = 1, BICUBIC = 2; flags ALIGN_CORNERS = 1<<8, ANTIALIAS = 1<<9. Dims 0 and 1 are
resampled; dims 2 and 3 always use nearest (`i02 = (int)(i2 / sf2)`). NEAREST, BILINEAR (with or without
ALIGN_CORNERS / ANTIALIAS) and BICUBIC follow the CPU kernel operation by operation in float32.

**npggml extension:** `BICUBIC | ANTIALIAS` (which ggml rejects) is the PIL / PyTorch antialiased bicubic
(`F.interpolate(mode='bicubic', antialias=True, align_corners=False)`): a = -0.5, support 2*max(in/out, 1) on each
axis, weights normalised to sum to 1 and truncated at the borders, applied separably in float64, cast to float32.
`resize_bicubic_antialias` is the same filter for host arrays.
"""

from __future__ import annotations

import numpy as np

from npggml.ops._libm import fma32
from npggml.ops.registry import Out, op, require

F32 = np.float32

NEAREST, BILINEAR, BICUBIC = 0, 1, 2
ALIGN_CORNERS, ANTIALIAS = 1 << 8, 1 << 9


@op("interpolate", ggml="UPSCALE")
def interpolate(a, ne0, ne1, ne2, ne3, mode):
    base = mode & 0xFF
    require(base in (NEAREST, BILINEAR, BICUBIC), f"mode {base} is not NEAREST=0, BILINEAR=1 or BICUBIC=2")
    if mode & ANTIALIAS:
        require(base in (BILINEAR, BICUBIC), "ANTIALIAS needs BILINEAR (or npggml's BICUBIC extension)")
        require(base != BICUBIC or not mode & ALIGN_CORNERS, "antialiased BICUBIC has no ALIGN_CORNERS form")
    require(a.dtype == "f32", f"interpolate is F32 only, got {a.dtype}")
    require(min(ne0, ne1, ne2, ne3) > 0, f"target sizes must be > 0, got {(ne0, ne1, ne2, ne3)}")
    return Out((ne0, ne1, ne2, ne3), "f32")


def _scale(n_out: int, n_in: int) -> np.float32:
    return F32(F32(n_out) / F32(n_in))


def _nearest_index(n_out: int, sf: np.float32) -> np.ndarray:
    return (np.arange(n_out).astype(F32) / sf).astype(np.int64)


def _src_coord(n_out: int, sf, po) -> np.ndarray:
    return (np.arange(n_out).astype(F32) + po) / sf - po


def _bilinear_axis(n_out: int, n_in: int, sf, po):
    x = _src_coord(n_out, sf, po)
    x0 = np.floor(x).astype(np.int64)
    x1 = np.clip(x0 + 1, 0, n_in - 1)
    x0 = np.clip(x0, 0, n_in - 1)
    d = x - x0.astype(F32)
    d = np.where(F32(1) < d, F32(1), d)  # std::min(d, 1.0f)
    d = np.where(F32(0) < d, d, F32(0))  # std::max(0.0f, d)
    return x0, x1, d.astype(F32)


def _bilinear(x, ne0, ne1, sf0, sf1, po):
    h, w = x.shape[-2:]
    x0, x1, dx = _bilinear_axis(ne0, w, sf0, po)
    y0, y1, dy = _bilinear_axis(ne1, h, sf1, po)
    r0, r1 = x[..., y0, :], x[..., y1, :]
    a, b, c, d = r0[..., x0], r0[..., x1], r1[..., x0], r1[..., x1]
    dx, dy = dx[None, :], dy[:, None]
    ex, ey = F32(1) - dx, F32(1) - dy
    # a*(1-dx)*(1-dy) + b*dx*(1-dy) + c*(1-dx)*dy + d*dx*dy as GCC contracts it
    return fma32(d * dx, dy, fma32(c * ex, dy, fma32(a * ex, ey, (b * dx) * ey)))


def _triangle(t):
    v = F32(1) - np.abs(t)
    return np.where(v < 0, F32(0), v)


def _bilinear_aa(x, ne0, ne1, sf0, sf1, po):
    h, w = x.shape[-2:]
    sup0, sup1 = max(F32(1), F32(F32(1) / sf0)), max(F32(1), F32(F32(1) / sf1))
    inv0, inv1 = F32(F32(1) / sup0), F32(F32(1) / sup1)
    cx = (np.arange(ne0).astype(F32) + po) / sf0
    cy = (np.arange(ne1).astype(F32) + po) / sf1
    x_min = np.maximum(np.trunc(cx - sup0 + po).astype(np.int64), 0)
    x_max = np.minimum(np.trunc(cx + sup0 + po).astype(np.int64), w)
    y_min = np.maximum(np.trunc(cy - sup1 + po).astype(np.int64), 0)
    y_max = np.minimum(np.trunc(cy + sup1 + po).astype(np.int64), h)
    val = np.zeros((*x.shape[:-2], ne1, ne0), F32)
    tot = np.zeros((ne1, ne0), F32)
    for ty in range(int(max((y_max - y_min).max(), 0))):
        sy = y_min + ty
        vy = sy < y_max
        wy = _triangle((sy.astype(F32) - cy + po) * inv1)
        rows = x[..., np.clip(sy, 0, h - 1), :]
        for tx in range(int(max((x_max - x_min).max(), 0))):
            sx = x_min + tx
            vx = sx < x_max
            wx = _triangle((sx.astype(F32) - cx + po) * inv0)
            wgt = wx[None, :] * wy[:, None]
            ok = vy[:, None] & vx[None, :] & (wgt > 0)
            pix = rows[..., np.clip(sx, 0, w - 1)]
            val = np.where(ok, fma32(pix, wgt, val), val)
            tot = np.where(ok, tot + wgt, tot)
    return np.where(tot > 0, val / np.where(tot > 0, tot, F32(1)), val)


_A = F32(-0.75)


def _w1(t):
    """((a+2)t - (a+3)) t t + 1, fused as GCC does."""
    return fma32(fma32(_A + F32(2), t, -(_A + F32(3))) * t, t, F32(1))


def _w2(t):
    """((a t - 5a) t + 8a) t - 4a, fused as GCC does."""
    return fma32(fma32(fma32(_A, t, -(F32(5) * _A)), t, F32(8) * _A), t, -(F32(4) * _A))


def _dot4(p, w):
    """p0*w0 + p1*w1 + p2*w2 + p3*w3 with GCC's contraction."""
    return fma32(p[3], w[3], fma32(p[2], w[2], fma32(p[0], w[0], p[1] * w[1])))


def _bicubic(x, ne0, ne1, sf0, sf1, po):
    h, w = x.shape[-2:]
    cx, cy = _src_coord(ne0, sf0, po), _src_coord(ne1, sf1, po)
    x0, y0 = np.floor(cx).astype(np.int64), np.floor(cy).astype(np.int64)
    dx, dy = cx - x0.astype(F32), cy - y0.astype(F32)
    one, two = F32(1), F32(2)
    wx = (_w2(dx + one), _w1(dx), _w1(one - dx), _w2(two - dx))
    wy = (_w2(dy + one), _w1(dy), _w1(one - dy), _w2(two - dy))
    rows = []
    for oy in range(-1, 3):
        r = x[..., np.clip(y0 + oy, 0, h - 1), :]
        rows.append(_dot4([r[..., np.clip(x0 + ox, 0, w - 1)] for ox in range(-1, 3)], wx))
    return _dot4(rows, [wy[i][:, None] for i in range(4)])


def _aa_cubic(t: np.ndarray, a: float = -0.5) -> np.ndarray:
    t = np.abs(t)
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = (((t - 5) * t + 8) * t - 4) * a
    return np.where(t < 1, near, np.where(t < 2, far, 0.0))


def bicubic_aa_weights(n_in: int, n_out: int) -> np.ndarray:
    """`(n_out, n_in)` float64 matrix of the antialiased bicubic (PIL `precompute_coeffs` / PyTorch
    `_compute_weights_aa`): centre (i + 0.5)*scale, support 2*max(scale, 1), taps truncated to the image,
    weights divided by their sum."""
    scale = n_in / n_out
    fscale = max(scale, 1.0)
    support = 2.0 * fscale
    mat = np.zeros((n_out, n_in))
    for i in range(n_out):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        j = np.arange(lo, hi)
        wts = _aa_cubic((j - center + 0.5) / fscale)
        tot = wts.sum()
        mat[i, lo:hi] = wts / tot if tot != 0 else wts
    return mat


def resize_bicubic_antialias(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Resize the last two axes `(..., H, W)` of a host array to `(out_h, out_w)` with the antialiased bicubic
    filter (float64 arithmetic, float32 result). Equals PyTorch `F.interpolate(x, (out_h, out_w),
    mode='bicubic', antialias=True, align_corners=False)` to float32 rounding."""
    x = np.asarray(x, dtype=np.float64)
    wh = bicubic_aa_weights(x.shape[-2], out_h)
    ww = bicubic_aa_weights(x.shape[-1], out_w)
    return np.matmul(np.matmul(wh, x), ww.T).astype(F32)


@interpolate.kernel
def _interpolate(out, a, ne0, ne1, ne2, ne3, mode):
    x = a.astype(F32, copy=False)
    n3, n2, n1, n0 = x.shape
    sf0, sf1, sf2, sf3 = _scale(ne0, n0), _scale(ne1, n1), _scale(ne2, n2), _scale(ne3, n3)
    base = mode & 0xFF
    po = F32(0.5)
    if mode & ALIGN_CORNERS:
        po = F32(0)
        if ne0 > 1 and n0 > 1:
            sf0 = F32(F32(ne0 - 1) / F32(n0 - 1))
        if ne1 > 1 and n1 > 1:
            sf1 = F32(F32(ne1 - 1) / F32(n1 - 1))
    x = x[_nearest_index(ne3, sf3)][:, _nearest_index(ne2, sf2)]  # dims 3 and 2: nearest
    with np.errstate(invalid="ignore", over="ignore"):
        if base == NEAREST:
            return x[..., _nearest_index(ne1, sf1)[:, None], _nearest_index(ne0, sf0)[None, :]]
        if base == BILINEAR and mode & ANTIALIAS:
            return _bilinear_aa(x, ne0, ne1, sf0, sf1, po)
        if base == BILINEAR:
            return _bilinear(x, ne0, ne1, sf0, sf1, po)
        if mode & ANTIALIAS:
            return resize_bicubic_antialias(x, ne1, ne0)
        return _bicubic(x, ne0, ne1, sf0, sf1, po)
