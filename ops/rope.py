"""Rotary position embedding: rope_ext and rope_multi (ggml-semantics §2.14).

a is `[head_dim, n_head, n_tok, batch]` (NumPy `(B, T, H, D)`), F32 or F16; positions b (I32) are indexed by a's
dim 2 (`4 * ne2` of them for the multi-section modes, laid out `[t..., h..., w..., e...]`); c holds optional F32
frequency factors.

Numerics follow the CPU kernel step by step in float32: `theta_scale = powf(base, -2/n_dims)`, theta obtained by
repeated multiplication (one float rounding per pair), divided by the frequency factor, the YaRN mix, then glibc
`cosf`/`sinf` times mscale, then the rotation `x0*cos - x1*sin`, `x0*sin + x1*cos` in float32. The libm calls are
glibc's own (see `npggml.ops._libm`), not NumPy's approximations. Where the C code has `a*b + c` shapes, GCC
(ggml's default -march=native build on FMA hardware, gnu++17, i.e. -ffp-contract=fast) fuses the first product
into an fma; the kernel does the same (`fma32`), which is what makes it bit-exact against such a build.
"""

from __future__ import annotations

import math

import numpy as np

from npggml.ops._libm import cmax, cmin, cosf, fma32, logf, powf, sinf
from npggml.ops.registry import Out, op, require

F32 = np.float32

NORMAL, NEOX, MROPE, VISION, IMROPE = 0, 2, 8, 24, 40
MODES = (NORMAL, NEOX, MROPE, VISION, IMROPE)


def yarn_corr_dims(n_dims: int, n_ctx_orig: int, freq_base: float, beta_fast: float, beta_slow: float):
    """`ggml_rope_yarn_corr_dims` in float32: [max(0, floor(d(beta_fast))), min(n_dims-1, ceil(d(beta_slow)))]."""

    def corr_dim(n_rot):
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = F32(n_ctx_orig) / (F32(n_rot) * F32(2) * F32(math.pi))
            return F32(n_dims) * logf(ratio) / (F32(2) * logf(F32(freq_base)))

    lo = cmax(F32(0), np.floor(corr_dim(beta_fast)))
    hi = cmin(F32(n_dims - 1), np.ceil(corr_dim(beta_slow)))
    return F32(lo), F32(hi)


def _yarn(theta_ext, p: int, freq_scale, ext_factor, attn_factor, corr):
    """`rope_yarn` for pair index p (theta_ext an array over positions): returns (cos, sin) in float32."""
    freq_scale, ext_factor = F32(freq_scale), F32(ext_factor)
    mscale = F32(attn_factor)
    theta_interp = freq_scale * theta_ext
    theta = theta_interp
    if ext_factor != 0:
        y = (F32(p) - corr[0]) / cmax(F32(0.001), corr[1] - corr[0])
        ramp = (F32(1) - cmin(F32(1), cmax(F32(0), y))) * ext_factor
        theta = fma32(theta_interp, F32(1) - ramp, theta_ext * ramp)
        mscale = F32(mscale * fma32(F32(0.1), logf(F32(1) / freq_scale), F32(1)))
    return cosf(theta) * mscale, sinf(theta) * mscale


def rope_cache(pos: np.ndarray, n_pairs: int, n_dims: int, mode: int, sections, freq_base, freq_scale,
               ff: np.ndarray | None, ext_factor, attn_factor, corr) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin tables `(n_tok, n_pairs)` as `ggml_rope_cache_init` / `ggml_mrope_cache_init` build them.

    `pos` is `(n_tok,)` for single-position modes and `(4, n_tok)` for the multi-section ones."""
    theta_scale = powf(F32(freq_base), F32(-2.0) / F32(n_dims))
    multi = bool(mode & MROPE)
    n_tok = pos.shape[-1]
    cos = np.empty((n_tok, n_pairs), F32)
    sin = np.empty((n_tok, n_pairs), F32)
    if not multi:
        base = (pos.astype(F32),)
    else:
        base = tuple(pos[k].astype(F32) for k in range(4))
    theta = [b.copy() for b in base]  # running t, h, w, e thetas
    s0, s1, s2, s3 = (int(s) for s in sections)
    sect_dims = s0 + s1 + s2 + s3
    sec_w, sec_e = s0 + s1, s0 + s1 + s2
    for p in range(n_pairs):
        if not multi:
            th = theta[0]
        else:
            sector = p % sect_dims
            if mode == VISION:  # independent sections: theta restarts at each section boundary
                if sector == 0:
                    theta[0] = base[0].copy()
                elif sector == s0:
                    theta[1] = base[1].copy()
                elif sector == sec_w:
                    theta[2] = base[2].copy()
                elif sector == sec_e:
                    theta[3] = base[3].copy()
            if mode == IMROPE:
                if sector % 3 == 1 and sector < 3 * s1:
                    k = 1
                elif sector % 3 == 2 and sector < 3 * s2:
                    k = 2
                elif sector % 3 == 0 and sector < 3 * s0:
                    k = 0
                else:
                    k = 3
            else:
                if s0 <= sector < sec_w:
                    k = 1
                elif sec_w <= sector < sec_w + s2:
                    k = 2
                elif sector >= sec_w + s2:
                    k = 3
                else:
                    k = 0
            th = theta[k]
        t_ext = th / ff[p] if ff is not None else th
        cos[:, p], sin[:, p] = _yarn(t_ext, p, freq_scale, ext_factor, attn_factor, corr)
        theta = [t * theta_scale for t in theta]
    return cos, sin


def _check_common(a, b, c, n_dims, mode):
    require(a.dtype in ("f32", "f16"), f"a must be f32 or f16, got {a.dtype}")
    require(a.is_contiguous_rows(), "rows of a must be contiguous (nb0 == type size)")
    require(mode in MODES, f"mode {mode} is not one of NORMAL=0, NEOX=2, MROPE=8, VISION=24, IMROPE=40")
    require(b.dtype == "i32", f"positions must be i32, got {b.dtype}")
    require(b.ne[1] == b.ne[2] == b.ne[3] == 1, f"positions must be a vector, got {b.ne_str()}")
    want = 4 * a.ne[2] if mode & MROPE else a.ne[2]
    require(b.ne[0] == want, f"need {want} positions (a.ne2 = {a.ne[2]}{' x 4' if mode & MROPE else ''}), "
                             f"got {b.ne[0]}")
    require(n_dims > 0 and n_dims % 2 == 0 and n_dims <= a.ne[0],
            f"n_dims = {n_dims} must be even, > 0 and <= ne0 = {a.ne[0]}")
    if mode == VISION:
        require(2 * n_dims == a.ne[0], f"VISION needs n_dims == ne0/2, got n_dims {n_dims}, ne0 {a.ne[0]}")
    if c is not None:
        n_pairs = n_dims if mode == VISION else n_dims // 2
        require(c.dtype == "f32", f"freq factors must be f32, got {c.dtype}")
        require(c.ne[0] >= n_pairs, f"need >= {n_pairs} freq factors, got {c.ne[0]}")
    return Out(a.ne, a.dtype)


def _rope_flops(n) -> float:
    return 6.0 * n.nelements


@op("rope_ext", ggml="ROPE", srcs=3, flops=_rope_flops)
def rope_ext(a, b, c, n_dims, mode, n_ctx_orig, freq_base, freq_scale, ext_factor, attn_factor, beta_fast,
             beta_slow):
    require(not mode & MROPE, f"mode {mode} needs sections: use rope_multi")
    return _check_common(a, b, c, n_dims, mode)


@op("rope_multi", ggml="ROPE", srcs=3, flops=_rope_flops)
def rope_multi(a, b, c, n_dims, sections, mode, n_ctx_orig, freq_base, freq_scale, ext_factor, attn_factor,
               beta_fast, beta_slow):
    sections = tuple(sections)
    require(len(sections) == 4 and all(int(s) >= 0 for s in sections), f"sections {sections} must be 4 ints >= 0")
    if mode & MROPE:
        require(sections[0] > 0 or sections[1] > 0 or sections[2] > 0, "one of sections[0..2] must be > 0")
        require(sum(sections) <= a.ne[0], f"sections {sections} add up to more than ne0 = {a.ne[0]}")
    return _check_common(a, b, c, n_dims, mode)


def rope_apply(a: np.ndarray, pos: np.ndarray, ff, n_dims, mode, sections, n_ctx_orig, freq_base, freq_scale,
               ext_factor, attn_factor, beta_fast, beta_slow) -> np.ndarray:
    """The CPU kernel on a NumPy `(B, T, H, D)` array (float32 result)."""
    x = a.astype(F32, copy=False)
    corr = yarn_corr_dims(n_dims, n_ctx_orig, freq_base, beta_fast, beta_slow)
    n_pairs = n_dims if mode == VISION else n_dims // 2
    ffv = None if ff is None else ff.reshape(-1).astype(F32)
    multi = bool(mode & MROPE)
    cos, sin = rope_cache(pos.reshape(4, -1) if multi else pos.reshape(-1), n_pairs, n_dims, mode,
                          sections if multi else (0, 0, 0, 0), freq_base, freq_scale, ffv, ext_factor,
                          attn_factor, corr)
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]  # broadcast over batch and heads
    if mode == NORMAL:
        i0, i1 = np.arange(0, n_dims, 2), np.arange(1, n_dims, 2)
    elif mode == VISION:
        i0 = np.arange(n_dims)
        i1 = i0 + n_dims
    else:
        i0 = np.arange(n_dims // 2)
        i1 = i0 + n_dims // 2
    out = np.array(x, dtype=F32)
    x0, x1 = x[..., i0], x[..., i1]
    out[..., i0] = fma32(x0, cos, -(x1 * sin))
    out[..., i1] = fma32(x0, sin, x1 * cos)
    if mode == NORMAL and a.dtype == F32:
        # GCC vectorises the f32 NORMAL loop over blocks of 8 and then 4 pairs (contracted to fma); the last
        # n_pairs % 4 pairs run in a scalar epilogue that is not contracted.
        nf = n_pairs // 8 * 8
        nf += 4 if n_pairs - nf >= 4 else 0
        t0, t1, c, s = x0[..., nf:], x1[..., nf:], cos[..., nf:], sin[..., nf:]
        out[..., i0[nf:]] = t0 * c - t1 * s
        out[..., i1[nf:]] = t0 * s + t1 * c
    return out


@rope_ext.kernel
def _rope_ext(out, a, b, c, n_dims, mode, n_ctx_orig, freq_base, freq_scale, ext_factor, attn_factor, beta_fast,
              beta_slow):
    return rope_apply(a, b.reshape(-1), c, n_dims, mode, None, n_ctx_orig, freq_base, freq_scale, ext_factor,
                      attn_factor, beta_fast, beta_slow)


@rope_multi.kernel
def _rope_multi(out, a, b, c, n_dims, sections, mode, n_ctx_orig, freq_base, freq_scale, ext_factor,
                attn_factor, beta_fast, beta_slow):
    return rope_apply(a, b.reshape(-1), c, n_dims, mode, tuple(sections), n_ctx_orig, freq_base, freq_scale,
                      ext_factor, attn_factor, beta_fast, beta_slow)
