"""Convolutions and pooling: im2col, conv_2d, conv_2d_dw, pool_2d (ggml-semantics §2.17, §2.18).

ggml builds `ggml_conv_2d` and `ggml_conv_2d_dw` from IM2COL + MUL_MAT (+ reshapes, permute, cont); here each is
one node whose value equals that expansion's. Under ggml numerics that includes the expansion's precision: the
im2col buffer is F16 unless the kernel is BF16 (then F32), and mul_mat converts its second operand to the first
operand's vec_dot type. So conv_2d rounds patches and kernel to f16 (F32/F16 kernels), and conv_2d_dw rounds the
patches to f16 (and to bf16 again for a BF16 kernel). The dot products are float32 sums, as mul_mat's.
"""

from __future__ import annotations

import numpy as np

from npggml.ops.linalg import vec_dot_round
from npggml.ops.registry import Out, ggml_numerics, op, require

F32 = np.float32

POOL_MAX, POOL_AVG = 0, 1
_TYPE_IDS = {0: "f32", 1: "f16", 30: "bf16"}


def conv_out(n: int, k: int, s: int, p: int, d: int) -> int:
    """`ggml_calc_conv_output_size` (C integer division truncates toward zero)."""
    num = n + 2 * p - d * (k - 1) - 1
    q = abs(num) // s
    return (q if num >= 0 else -q) + 1


def _type_name(t) -> str:
    return _TYPE_IDS.get(t, t) if isinstance(t, int) else t


def _check_image(b, is_2d: bool) -> None:
    require(b.dtype in ("f32", "f16"), f"data must be f32 or f16, got {b.dtype}")
    require(b.is_contiguous_rows(), "rows of the data must be contiguous")
    if is_2d:
        require(b.ne[1] == 1 or b.nb[1] == b.ne[0] * b.nb[0], "each (W, H) plane of the data must be packed")


def _check_strides(s0, s1, d0, d1, is_2d: bool) -> None:
    require(s0 > 0 and d0 > 0, f"stride {s0} and dilation {d0} must be > 0")
    if is_2d:
        require(s1 > 0 and d1 > 0, f"stride {s1} and dilation {d1} must be > 0")


@op("im2col", ggml="IM2COL", srcs=2)
def im2col(a, b, s0, s1, p0, p1, d0, d1, is_2D, dst_type):
    """Kernel a (only its shape) [KW, KH, IC, OC], data b [W, H, IC, N] -> [IC*KH*KW, OW, OH, N] (1-D: kernel
    [K, IC, OC], data [L, IC, N] -> [IC*K, OL, N, 1])."""
    dst_type = _type_name(dst_type)
    require(dst_type in ("f32", "f16"), f"dst_type must be f32 or f16, got {dst_type}")
    _check_strides(s0, s1, d0, d1, is_2D)
    _check_image(b, is_2D)
    require(dst_type == "f16" or b.dtype == "f32", "an f32 im2col needs f32 data")
    if is_2D:
        require(a.ne[2] == b.ne[2], f"kernel channels a.ne2 = {a.ne[2]} != data channels b.ne2 = {b.ne[2]}")
        oh = conv_out(b.ne[1], a.ne[1], s1, p1, d1)
        require(oh > 0, f"data height {b.ne[1]} too small for kernel height {a.ne[1]}")
    else:
        require(b.ne[1] == a.ne[1], f"kernel channels a.ne1 = {a.ne[1]} != data channels b.ne1 = {b.ne[1]}")
        require(b.ne[3] == 1, f"1-D data must have ne3 == 1, got {b.ne[3]}")
    ow = conv_out(b.ne[0], a.ne[0], s0, p0, d0)
    require(ow > 0, f"data width {b.ne[0]} too small for kernel width {a.ne[0]}")
    if is_2D:
        return Out((a.ne[2] * a.ne[1] * a.ne[0], ow, oh, b.ne[3]), dst_type)
    return Out((a.ne[1] * a.ne[0], ow, b.ne[2], 1), dst_type)


def patches(x: np.ndarray, kh: int, kw: int, s0, s1, p0, p1, d0, d1, oh: int, ow: int) -> np.ndarray:
    """im2col of x `(N, C, H, W)` -> `(N, OH, OW, C*KH*KW)` in float32, zero outside the image."""
    n, c, h, w = x.shape
    iy = np.arange(oh)[:, None] * s1 + np.arange(kh)[None, :] * d1 - p1  # (OH, KH)
    ix = np.arange(ow)[:, None] * s0 + np.arange(kw)[None, :] * d0 - p0  # (OW, KW)
    vy, vx = (iy >= 0) & (iy < h), (ix >= 0) & (ix < w)
    g = x.astype(F32, copy=False)[:, :, np.clip(iy, 0, h - 1)]  # (N, C, OH, KH, W)
    g = g[..., np.clip(ix, 0, w - 1)]  # (N, C, OH, KH, OW, KW)
    g = np.where((vy[:, :, None, None] & vx[None, None]), g, F32(0))
    return np.ascontiguousarray(g.transpose(0, 2, 4, 1, 3, 5)).reshape(n, oh, ow, c * kh * kw)


@im2col.kernel
def _im2col(out, a, b, s0, s1, p0, p1, d0, d1, is_2D, dst_type):
    ka = out.srcs[0]
    if is_2D:
        return patches(b, ka.ne[1], ka.ne[0], s0, s1, p0, p1, d0, d1, out.ne[2], out.ne[1])
    x = b.reshape(b.shape[-3], b.shape[-2], 1, b.shape[-1])  # (N, IC, 1, L)
    res = patches(x, 1, ka.ne[0], s0, 0, p0, p1, d0, 0, 1, out.ne[1])  # (N, 1, OL, IC*K)
    return res.reshape(1, *out.shape[1:])


def _conv_flops(n) -> float:
    a = n.srcs[0]
    return 2.0 * n.nelements * a.ne[0] * a.ne[1] * (a.ne[2] if n.op == "conv_2d" else 1)


@op("conv_2d", ggml="CONV_2D", srcs=2, desc="CONV_2D", flops=_conv_flops)
def conv_2d(a, b, s0, s1, p0, p1, d0, d1):
    """ggml_conv_2d as one node: kernel a [KW, KH, IC, OC], data b [W, H, IC, N] -> F32 [OW, OH, OC, N]."""
    _check_strides(s0, s1, d0, d1, True)
    _check_image(b, True)
    require(a.is_contiguous(), "the kernel must be contiguous")
    require(a.ne[2] == b.ne[2], f"kernel channels a.ne2 = {a.ne[2]} != data channels b.ne2 = {b.ne[2]}")
    require(a.dtype != "bf16" or b.dtype == "f32", "a BF16 kernel needs f32 data (f32 im2col)")
    ow, oh = conv_out(b.ne[0], a.ne[0], s0, p0, d0), conv_out(b.ne[1], a.ne[1], s1, p1, d1)
    require(ow > 0 and oh > 0, f"data {b.ne_str()} too small for kernel {a.ne_str()}")
    return Out((ow, oh, a.ne[3], b.ne[3]), "f32")


def _im2col_type(kernel_type: str) -> str:
    return "f32" if kernel_type == "bf16" else "f16"


def _round_to(x: np.ndarray, dtype: str) -> np.ndarray:
    return x.astype(np.float16).astype(F32) if dtype == "f16" else x


@conv_2d.kernel
def _conv_2d(out, a, b, s0, s1, p0, p1, d0, d1):
    oc, ic, kh, kw = a.shape
    ow, oh = out.ne[0], out.ne[1]
    p = patches(b, kh, kw, s0, s1, p0, p1, d0, d1, oh, ow)  # (N, OH, OW, K)
    w = a.astype(F32).reshape(oc, ic * kh * kw)
    if ggml_numerics():
        ctype = _im2col_type(out.srcs[0].dtype)
        p = _round_to(p, ctype)
        w = vec_dot_round(w, ctype)
    res = np.matmul(p.reshape(p.shape[0], oh * ow, -1), w.T)  # (N, OH*OW, OC)
    return np.ascontiguousarray(res.transpose(0, 2, 1)).reshape(out.shape)


@op("conv_2d_dw", ggml="CONV_2D_DW", srcs=2, desc="CONV_2D_DW", flops=_conv_flops)
def conv_2d_dw(a, b, s0, s1, p0, p1, d0, d1):
    """ggml_conv_2d_dw (depthwise) as one node: kernel a [KW, KH, 1, C], data b [W, H, C, N] -> F32
    [OW, OH, C, N]. With fewer kernel channels Ca = a.ne2*a.ne3 than C, channel c uses kernel c / (C/Ca)."""
    _check_strides(s0, s1, d0, d1, True)
    require(b.dtype in ("f32", "f16"), f"data must be f32 or f16, got {b.dtype}")
    require(a.is_contiguous() and b.is_contiguous(), "kernel and data must be contiguous")
    ca = a.ne[2] * a.ne[3]
    require(b.ne[2] % ca == 0, f"data channels b.ne2 = {b.ne[2]} not a multiple of kernel channels {ca}")
    require(a.dtype != "bf16" or b.dtype == "f32", "a BF16 kernel needs f32 data (f32 im2col)")
    ow, oh = conv_out(b.ne[0], a.ne[0], s0, p0, d0), conv_out(b.ne[1], a.ne[1], s1, p1, d1)
    require(ow > 0 and oh > 0, f"data {b.ne_str()} too small for kernel {a.ne_str()}")
    return Out((ow, oh, b.ne[2], b.ne[3]), "f32")


@conv_2d_dw.kernel
def _conv_2d_dw(out, a, b, s0, s1, p0, p1, d0, d1):
    kh, kw = a.shape[-2], a.shape[-1]
    n, c, h, w = b.shape
    ow, oh = out.ne[0], out.ne[1]
    p = patches(b.reshape(n * c, 1, h, w), kh, kw, s0, s1, p0, p1, d0, d1, oh, ow)  # (N*C, OH, OW, KH*KW)
    p = p.reshape(n, c, oh * ow, kh * kw)
    k = a.astype(F32).reshape(-1, kh * kw)  # (Ca, KH*KW)
    if ggml_numerics():
        p = vec_dot_round(_round_to(p, _im2col_type(out.srcs[0].dtype)), out.srcs[0].dtype)
    k = np.repeat(k, c // k.shape[0], axis=0)  # channel c -> kernel c // (C / Ca)
    res = np.matmul(p, k[None, :, :, None])[..., 0]  # (N, C, OH*OW)
    return res.reshape(out.shape)


# --- pool_2d -------------------------------------------------------------------------------------------------


def pool_out(n: int, k: int, s: int, p: float) -> int:
    """`ggml_calc_pool_output_size`: computed in float, truncated."""
    return int(F32((F32(n) + F32(2) * F32(p) - F32(k)) / F32(s)) + F32(1))


@op("pool_2d", ggml="POOL_2D")
def pool_2d(a, op, k0, k1, s0, s1, p0, p1):
    """op 0 = MAX, 1 = AVG; float paddings (truncated to int by the kernel). -> F32 [OW, OH, ne2, ne3]."""
    require(op in (POOL_MAX, POOL_AVG), f"op must be 0 (MAX) or 1 (AVG), got {op}")
    require(a.dtype in ("f32", "f16"), f"pool_2d input must be f32 or f16, got {a.dtype}")
    require(k0 > 0 and k1 > 0 and s0 > 0 and s1 > 0, "kernel sizes and strides must be > 0")
    require(a.is_contiguous_rows() and (a.ne[3] == 1 or a.nb[3] == a.nb[2] * a.ne[2]),
            "rows must be contiguous and planes evenly spaced (the kernel walks planes by nb2)")
    ne0, ne1 = pool_out(a.ne[0], k0, s0, p0), pool_out(a.ne[1], k1, s1, p1)
    require(ne0 > 0 and ne1 > 0, f"input {a.ne_str()} too small for a {k0}x{k1} window")
    return Out((ne0, ne1, a.ne[2], a.ne[3]), "f32")


@pool_2d.kernel
def _pool_2d(out, a, op, k0, k1, s0, s1, p0, p1):
    x = a.astype(F32, copy=False)
    h, w = x.shape[-2:]
    pi0, pi1 = int(p0), int(p1)  # op_params are int32: the float padding is truncated
    ow, oh = out.ne[0], out.ne[1]
    iy0 = np.arange(oh) * s1 - pi1
    ix0 = np.arange(ow) * s0 - pi0
    res = np.full(out.shape, -np.finfo(F32).max if op == POOL_MAX else 0, F32)
    for ky in range(k1):  # taps in the kernel's order: ky outer, kx inner, each a float32 update
        iy = iy0 + ky
        vy = (iy >= 0) & (iy < h)
        for kx in range(k0):
            ix = ix0 + kx
            vx = (ix >= 0) & (ix < w)
            v = x[..., np.clip(iy, 0, h - 1)[:, None], np.clip(ix, 0, w - 1)[None, :]]
            ok = vy[:, None] & vx[None, :]
            if op == POOL_MAX:
                res = np.where(ok & ~(v < res), v, res)
            else:
                res = np.where(ok, res + v, res)
    if op == POOL_AVG:
        res = res / F32(k0 * k1)
    return res.astype(F32)
