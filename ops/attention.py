"""soft_max_ext (ggml-semantics §2.13) and flash_attn_ext (§2.15)."""

from __future__ import annotations

import math

import numpy as np

from npggml.ops._libm import expf, fma32, gemm_fma, powf, tanhf, vec_dot, vec_soft_max_f32
from npggml.ops.elementwise import tile_to
from npggml.ops.linalg import vec_dot_round
from npggml.ops.registry import Out, ggml_numerics, op, require

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
    """exp(w - max) scaled by 1/sum, the sum accumulated in double (ggml_vec_soft_max_f32). Under ggml numerics
    the exponentials are ggml's SIMD exp and the sum follows its block order (see `_libm.vec_soft_max_f32`)."""
    mx = w.max(axis=-1, keepdims=True)
    if ggml_numerics():
        e, s = vec_soft_max_f32(w, mx)
        s = s[..., None]
    else:
        with np.errstate(invalid="ignore"):
            e = np.exp(w - mx)
        s = e.sum(axis=-1, keepdims=True, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return e * (1.0 / s).astype(F32)


# --- flash_attn_ext --------------------------------------------------------------------------------------------

FA_TILE = 64  # GGML_FA_TILE_Q == GGML_FA_TILE_KV


def _fa_flops(n) -> float:
    q, k, v = n.srcs[0], n.srcs[1], n.srcs[2]
    return 2.0 * q.ne[1] * q.ne[2] * q.ne[3] * k.ne[1] * (k.ne[0] + v.ne[0])


@op("flash_attn_ext", ggml="FLASH_ATTN_EXT", srcs=4, flops=_fa_flops)
def flash_attn_ext(q, k, v, mask, scale, max_bias=0.0, logit_softcap=0.0):
    """q [Dk, n_q, H, B], k [Dk, n_kv, H_kv, B], v [Dv, n_kv, H_kv, B] -> F32 [Dv, H, n_q, B]."""
    require(q.dtype == "f32", f"q must be f32, got {q.dtype}")
    require(k.ne[0] == q.ne[0], f"k.ne0 = {k.ne[0]} != q.ne0 = {q.ne[0]}")
    require(q.ne[2] % k.ne[2] == 0 and q.ne[2] % v.ne[2] == 0, "k/v heads must divide q heads")
    require(q.ne[3] == k.ne[3] == v.ne[3], "q, k and v must have the same ne3")
    require(v.ne[1] == k.ne[1], f"k has {k.ne[1]} keys, v has {v.ne[1]}")
    require(q.is_contiguous_rows() and k.is_contiguous_rows() and v.is_contiguous_rows(),
            "rows of q, k and v must be contiguous")
    require(v.dtype in ("f32", "f16", "bf16") and k.dtype != "i32", f"unsupported k/v types {k.dtype}/{v.dtype}")
    if mask is not None:
        require(mask.dtype == "f16", f"mask must be f16, got {mask.dtype}")
        require(mask.is_contiguous(), "mask must be contiguous")
        require(mask.ne[0] >= k.ne[1] and mask.ne[1] >= q.ne[1],
                f"mask {mask.ne_str()} must cover n_kv = {k.ne[1]} keys and n_q = {q.ne[1]} queries")
        require(q.ne[2] % mask.ne[2] == 0 and q.ne[3] % mask.ne[3] == 0, "mask must broadcast over dims 2/3")
    require(max_bias == 0 or mask is not None, "max_bias > 0 needs a mask")
    return Out((v.ne[0], q.ne[2], q.ne[1], q.ne[3]), "f32")


def fa_slopes(n_head: int, max_bias: float) -> np.ndarray:
    """ALiBi slopes exactly as the flash-attn kernel computes them (powf in float32)."""
    if not max_bias > 0:
        return np.ones(n_head, F32)
    n_log2 = 1 << int(math.floor(math.log2(n_head)))
    m0 = powf(F32(2), F32(-max_bias) / F32(n_log2))
    m1 = powf(F32(2), F32(-(F32(max_bias) / F32(2))) / F32(n_log2))
    h = np.arange(n_head)
    return np.where(h < n_log2, powf(m0, (h + 1).astype(F32)), powf(m1, (2 * (h - n_log2) + 1).astype(F32)))


def _fa_inputs(q, k, v, mask, max_bias):
    """k/v broadcast to q's heads (integer division) and the mask term `slope * mask` per (B, H, n_q, n_kv)."""
    B, H, nq, _ = q.shape
    nkv = k.shape[2]
    kh = np.arange(H) // (H // k.shape[1])
    vh = np.arange(H) // (H // v.shape[1])
    kb, vb = k[:, kh], v[:, vh]
    mv = None
    if mask is not None:
        m = mask[:, :, :nq, :nkv].astype(F32)
        m = m[np.arange(B) % m.shape[0]][:, np.arange(H) % m.shape[1]]
        mv = fa_slopes(H, max_bias)[None, :, None, None] * m
    return kb, vb, mv


def _scores(qr, kb, scale, softcap, dot: str | None = None):
    """q.k, scaled and softcapped: by ggml's vec_dot (`dot` = "f32"/"f16") or by its simd_gemm (dot None)."""
    if dot is not None:
        s = vec_dot(qr[..., :, None, :], kb[..., None, :, :], dot)
    else:  # simd_gemm of the tiled path
        s = gemm_fma(np.zeros((*qr.shape[:-1], kb.shape[-2]), F32), qr, kb.swapaxes(-1, -2))
    scale = F32(scale)
    if softcap != 0:
        scale = F32(scale / F32(softcap))
    s = s * scale
    if softcap != 0:
        s = F32(softcap) * tanhf(s)
    return s


def _fa_one_chunk(q, kb, vb, mv, k_type, v_type, scale, softcap):
    """ggml_compute_forward_flash_attn_ext_f16_one_chunk: q rounded to k's vec_dot type, online softmax key by
    key with expf, V accumulated with fused multiply-adds in an F16 accumulator when v is F16 (f32 otherwise)."""
    qr = vec_dot_round(q, k_type)
    s = _scores(qr, kb, scale, softcap, {"f32": "f32", "f16": "f16"}.get(k_type))
    if mv is not None:
        s = s + mv
    skip = np.zeros(s.shape, bool) if mv is None else (mv == -np.inf)
    shape = q.shape[:-1]
    M = np.full(shape, -np.inf, F32)
    S = np.zeros(shape, F32)
    f16 = v_type == "f16"
    acc = np.zeros((*shape, vb.shape[-1]), np.float16 if f16 else F32)
    with np.errstate(invalid="ignore", over="ignore"):
        for j in range(s.shape[-1]):
            sj, live = s[..., j], ~skip[..., j]
            new = live & (sj > M)
            ms = np.where(new, expf(M - sj), F32(1))
            vs = np.where(new | ~live, F32(1), expf(sj - M))
            M = np.where(new, sj, M)
            if f16:
                scaled = (acc.astype(F32) * ms[..., None]).astype(np.float16)
                acc = np.where(new[..., None], scaled, acc)
                mad = fma32(vb[:, :, j, None, :], vs[..., None], acc).astype(np.float16)
                acc = np.where(live[..., None], mad, acc)
            else:
                acc = np.where(new[..., None], acc * ms[..., None], acc)
                acc = np.where(live[..., None], fma32(vb[:, :, j, None, :], vs[..., None], acc), acc)
            S = np.where(live, fma32(S, ms, vs), S)
    with np.errstate(divide="ignore"):
        s_inv = np.where(S == 0, F32(0), F32(1) / S).astype(F32)
    return acc.astype(F32) * s_inv[..., None]


def _fa_tiled(q, kb, vb, mv, scale, softcap):
    """ggml_compute_forward_flash_attn_ext_tiled (n_q >= 64, f32/f16 k and v of one type): f32 q, keys in tiles
    of 64: tile max, rescale, ggml's SIMD soft_max of the tile, V accumulated in float32 (simd_gemm)."""
    shape = q.shape[:-1]
    nkv = kb.shape[2]
    M = np.full(shape, -np.inf, F32)
    S = np.zeros(shape, F32)
    acc = np.zeros((*shape, vb.shape[-1]), F32)
    with np.errstate(invalid="ignore", over="ignore"):
        for ic in range(0, nkv, FA_TILE):
            n = min(FA_TILE, nkv - ic)
            kq = np.full((*shape, FA_TILE), -np.inf, F32)
            kq[..., :n] = _scores(q, kb[:, :, ic:ic + n], scale, softcap)
            if mv is not None:
                kq[..., :n] = kq[..., :n] + mv[..., ic:ic + n]
            tmax = kq.max(axis=-1)
            live = tmax != -np.inf
            mnew = np.where(live, np.fmax(M, tmax), M)
            up = live & (mnew > M)
            ms = np.where(up, expf(M - mnew), F32(1))
            acc = np.where(up[..., None], acc * ms[..., None], acc)
            S = np.where(up, S * ms, S)
            M = mnew
            p, psum = vec_soft_max_f32(kq, M[..., None])
            S = np.where(live, (S.astype(np.float64) + psum).astype(F32), S)
            p = np.where(live[..., None], p, F32(0))[..., :n]
            acc = gemm_fma(acc, p, vb[:, :, ic:ic + n])
    with np.errstate(divide="ignore"):
        s_inv = np.where(S == 0, F32(0), F32(1) / S).astype(F32)
    return acc * s_inv[..., None]


def _fa_exact(q, kb, vb, mv, scale, softcap):
    """Plain softmax attention in float32; keys with a -inf mask are dropped, a fully masked row gives 0."""
    s = np.matmul(q, kb.swapaxes(-1, -2)) * F32(scale)
    if softcap != 0:
        s = F32(softcap) * np.tanh(s / F32(softcap))
    if mv is not None:
        s = s + mv
    mx = s.max(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore"):
        e = np.where(s == -np.inf, F32(0), np.exp(s - np.where(np.isfinite(mx), mx, F32(0))))
    tot = e.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.matmul(e, vb) / tot
    return np.where(tot == 0, F32(0), out).astype(F32)


@flash_attn_ext.kernel
def _flash_attn_ext(out, q, k, v, mask, scale, max_bias=0.0, logit_softcap=0.0):
    k_type, v_type = out.srcs[1].dtype, out.srcs[2].dtype
    q = q.astype(F32, copy=False)
    kb, vb, mv = _fa_inputs(q, k.astype(F32, copy=False), v.astype(F32, copy=False), mask, max_bias)
    if not ggml_numerics():
        res = _fa_exact(q, kb, vb, mv, scale, logit_softcap)
    elif k_type in ("f32", "f16") and k_type == v_type and q.shape[2] >= FA_TILE:
        res = _fa_tiled(q, kb, vb, mv, scale, logit_softcap)
    else:
        res = _fa_one_chunk(q, kb, vb, mv, k_type, v_type, scale, logit_softcap)
    return res.swapaxes(1, 2)  # (B, H, n_q, Dv) -> (B, n_q, H, Dv): the permute(0, 2, 1, 3) of the result
