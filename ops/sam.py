"""SAM helpers: win_part / win_unpart (ggml-semantics §2.21) and get_rel_pos / add_rel_pos (§2.22).

The CPU kernels read their inputs as packed arrays, so the rules require contiguous inputs (ggml would silently
read the wrong elements of a strided one).
"""

from __future__ import annotations

import numpy as np

from npggml.ops.registry import Out, op, require

F32 = np.float32


def _windows(n: int, w: int) -> int:
    return (n + (w - n % w) % w) // w


@op("win_part", ggml="WIN_PART")
def win_part(a, w):
    """[C, W, H, 1] -> [C, w, w, npx*npy], zero padded on the right/bottom, windows row-major (x fastest)."""
    require(w > 0, f"window size {w} must be > 0")
    require(a.dtype == "f32", f"win_part is F32 only, got {a.dtype}")
    require(a.ne[3] == 1, f"a.ne3 must be 1, got {a.ne[3]}")
    require(a.is_contiguous(), "a must be contiguous")
    return Out((a.ne[0], w, w, _windows(a.ne[1], w) * _windows(a.ne[2], w)), "f32")


@win_part.kernel
def _win_part(out, a, w):
    _, h, wd, c = a.shape
    npx, npy = _windows(wd, w), _windows(h, w)
    padded = np.zeros((npy * w, npx * w, c), F32)
    padded[:h, :wd] = a[0]
    # (py, i2, px, i1, c) -> (py, px, i2, i1, c)
    return padded.reshape(npy, w, npx, w, c).transpose(0, 2, 1, 3, 4).reshape(npy * npx, w, w, c)


@op("win_unpart", ggml="WIN_UNPART")
def win_unpart(a, w0, h0, w):
    """[C, w, w, np] -> [C, w0, h0, 1]: the windows put back in place, padding cropped."""
    require(w > 0 and w0 > 0 and h0 > 0, f"sizes must be > 0: w0 {w0}, h0 {h0}, w {w}")
    require(a.dtype == "f32", f"win_unpart is F32 only, got {a.dtype}")
    require(a.is_contiguous(), "a must be contiguous")
    require(a.ne[1] == w and a.ne[2] == w, f"windows must be {w}x{w}, got {a.ne[1]}x{a.ne[2]}")
    need = _windows(w0, w) * _windows(h0, w)
    require(a.ne[3] >= need, f"{w0}x{h0} in {w}x{w} windows needs {need} windows, a has {a.ne[3]}")
    return Out((a.ne[0], w0, h0, 1), "f32")


@win_unpart.kernel
def _win_unpart(out, a, w0, h0, w):
    c = a.shape[-1]
    npx, npy = _windows(w0, w), _windows(h0, w)
    grid = a[: npx * npy].reshape(npy, npx, w, w, c).transpose(0, 2, 1, 3, 4).reshape(npy * w, npx * w, c)
    return grid[None, :h0, :w0]


@op("get_rel_pos", ggml="GET_REL_POS")
def get_rel_pos(a, qh, kh):
    """a [C, 2k-1] (F16; BF16 bits are copied unchanged) -> F16 [C, kh, qh], dst[:, i1, i2] = a[:, kh-1-i1+i2]."""
    require(qh == kh, f"qh {qh} != kh {kh}")
    require(a.dtype in ("f16", "bf16"), f"get_rel_pos needs f16 (or bf16) input, got {a.dtype}")
    require(a.ne[1] == 2 * max(qh, kh) - 1, f"a.ne1 = {a.ne[1]} != 2*max(qh, kh) - 1 = {2 * max(qh, kh) - 1}")
    require(a.is_contiguous(), "a must be contiguous")
    return Out((a.ne[0], kh, qh, 1), "f16")


@get_rel_pos.kernel
def _get_rel_pos(out, a, qh, kh):
    rows = a[0, 0]  # (2k-1, C)
    if out.srcs[0].dtype == "bf16":  # the kernel copies 16-bit patterns: bf16 bits read back as f16
        from npggml.graph.interp import f32_to_bf16

        rows = f32_to_bf16(rows).view(np.float16)
    i1 = np.arange(kh)[None, :]
    i2 = np.arange(qh)[:, None]
    return rows[(kh - 1 - i1) + i2][None]  # (1, qh, kh, C)


@op("add_rel_pos", ggml="ADD_REL_POS", srcs=3)
def add_rel_pos(a, pw, ph):
    """a [K*K, QW*QH, BH] + ph[kh, q, bh] + pw[kw, q, bh] with pw, ph [K, QW, QH, BH]."""
    require(pw.ne == ph.ne, f"pw {pw.ne_str()} and ph {ph.ne_str()} must have the same shape")
    require(a.dtype == "f32" and pw.dtype == "f32" and ph.dtype == "f32", "a, pw and ph must be f32")
    require(a.is_contiguous() and pw.is_contiguous() and ph.is_contiguous(), "a, pw and ph must be contiguous")
    require(pw.ne[3] == a.ne[2], f"pw.ne3 = {pw.ne[3]} != a.ne2 = {a.ne[2]}")
    require(pw.ne[0] * pw.ne[0] == a.ne[0], f"pw.ne0^2 = {pw.ne[0] ** 2} != a.ne0 = {a.ne[0]}")
    require(pw.ne[1] * pw.ne[2] == a.ne[1], f"pw.ne1*pw.ne2 = {pw.ne[1] * pw.ne[2]} != a.ne1 = {a.ne[1]}")
    return Out(a.ne, "f32")


@add_rel_pos.kernel
def _add_rel_pos(out, a, pw, ph):
    k = pw.shape[-1]
    bh, nq = a.shape[1], a.shape[2]
    x = a[0].reshape(bh, nq, k, k).astype(F32)  # (bh, q, kh, kw)
    h = ph.reshape(bh, nq, k)[:, :, :, None]  # ph[kh] broadcast over kw
    w = pw.reshape(bh, nq, k)[:, :, None, :]  # pw[kw] broadcast over kh
    # the kernel adds ph first where kh <= kw and pw first where kh > kw (float addition order)
    first_h = np.arange(k)[:, None] <= np.arange(k)[None, :]
    res = np.where(first_h, (x + h) + w, (x + w) + h)
    return res.reshape(out.shape)
