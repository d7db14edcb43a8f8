"""Semantic oracles for rope, flash attention, convolution, pooling, resampling and the SAM ops, written from the
spec (ggml-semantics §2.9–§2.23) and from the PyTorch / PIL / SAM formulas, independently of the kernels."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from strategies import STRATEGIES, Case, Src, run_case, src_values, values

import npggml
from npggml.graph.interp import bf16_to_f32, f32_to_bf16
from npggml.ops.interpolate import resize_bicubic_antialias

F32, F64 = np.float32, np.float64


def f16r(x):
    return np.asarray(x, F32).astype(np.float16).astype(F32)


def bf16r(x):
    x = np.asarray(x, F32)
    return bf16_to_f32(f32_to_bf16(x)).reshape(x.shape)


# --- rope ----------------------------------------------------------------------------------------------------


def _corr_dims(n_dims, n_ctx_orig, base, beta_fast, beta_slow):
    def corr_dim(r):
        with np.errstate(divide="ignore"):
            return n_dims * np.log(np.float64(n_ctx_orig) / (r * 2 * math.pi)) / (2 * math.log(base))

    return max(0.0, float(np.floor(corr_dim(beta_fast)))), min(n_dims - 1.0, float(np.ceil(corr_dim(beta_slow))))


def rope_oracle(x, pos, ff, p):
    """Direct per-pair formula (spec §2.14) in float64; x is (B, T, H, D)."""
    n_dims, mode = p["n_dims"], p["mode"]
    base, fs, ext, attn = p["freq_base"], p["freq_scale"], p["ext_factor"], p["attn_factor"]
    lo, hi = _corr_dims(n_dims, p["n_ctx_orig"], base, p["beta_fast"], p["beta_slow"]) if ext else (0, 0)
    sec = p.get("sections", (0, 0, 0, 0))
    T = x.shape[1]
    rows = pos.reshape(4, T) if mode & 8 else pos.reshape(1, T)
    n_pairs = n_dims if mode == 24 else n_dims // 2
    out = x.astype(F64).copy()
    bounds = np.cumsum([0, *sec])
    theta_err = 0.0
    for i in range(n_pairs):
        k, idx = 0, i  # which position row, theta index
        if mode & 8:
            s = i % sum(sec)
            if mode == 40:
                k = 1 if s % 3 == 1 and s < 3 * sec[1] else 2 if s % 3 == 2 and s < 3 * sec[2] else \
                    0 if s % 3 == 0 and s < 3 * sec[0] else 3
            else:
                k = int(np.searchsorted(bounds, s, side="right") - 1)
            if mode == 24:
                idx = s - bounds[k]
        theta_ext = rows[k].astype(F64) * base ** (-2.0 * idx / n_dims)
        if ff is not None:
            theta_ext = theta_ext / ff[i]
        theta, msc = fs * theta_ext, attn
        if ext != 0:
            ramp = (1 - min(1.0, max(0.0, (i - lo) / max(0.001, hi - lo)))) * ext
            theta = theta * (1 - ramp) + theta_ext * ramp
            msc *= 1 + 0.1 * math.log(1 / fs)
        c, s_ = (np.cos(theta) * msc)[None, :, None], (np.sin(theta) * msc)[None, :, None]
        j0, j1 = (2 * i, 2 * i + 1) if mode == 0 else (i, i + n_dims) if mode == 24 else (i, i + n_dims // 2)
        a0, a1 = x[..., j0].astype(F64), x[..., j1].astype(F64)
        out[..., j0], out[..., j1] = a0 * c - a1 * s_, a0 * s_ + a1 * c
        # float32 theta: one rounding per repeated multiplication, plus base**(-2/n), 1/ff, the scale and mix
        theta_err = max(theta_err, float(np.abs(theta).max()) * (idx + 6) * 2.0**-23)
    return out, theta_err


@given(data=st.data())
def test_rope_matches_the_per_pair_formula(data):
    op = data.draw(st.sampled_from(["rope_ext", "rope_multi"]))
    case = data.draw(STRATEGIES[op]())
    if case.params["mode"] == 24:  # VISION in practice: two non-empty sections (row-0 "y", row-1 "x")
        n = case.params["n_dims"]
        a = data.draw(st.integers(1, max(1, n - 1)))
        case.params["sections"] = (a, n - a, 0, 0) if n > 1 else (1, 0, 0, 0)
    node, out = run_case(case)
    x, pos, ff = src_values(case)
    expect, terr = rope_oracle(x, pos.reshape(-1), None if ff is None else ff.reshape(-1), case.params)
    amax = float(np.abs(x.astype(F64)).max())
    atol = 4 * amax * (terr + 2.0**-22) + 1e-7
    if node.dtype == "f16":
        np.testing.assert_allclose(out.astype(F64), expect, rtol=2e-3, atol=atol + 2e-3)
    else:
        np.testing.assert_allclose(out, expect, rtol=0, atol=atol)


def test_rope_neox_pairs_halves_and_normal_pairs_neighbours():
    x = np.zeros((1, 1, 1, 8), F32)
    x[..., 0] = 1.0
    pos = np.array([1], np.int32)
    args = (8, 0, 0, 10000.0, 1.0, 0.0, 1.0, 0.0, 0.0)
    normal = npggml.eval_op("rope_ext", x, pos, None, *args).reshape(-1)
    neox = npggml.eval_op("rope_ext", x, pos, None, 8, 2, *args[2:]).reshape(-1)
    assert normal[1] != 0 and np.all(normal[2:] == 0)  # (x0, x1) rotate together
    assert neox[4] != 0 and np.all(neox[1:4] == 0) and np.all(neox[5:] == 0)  # (x0, x4)
    np.testing.assert_allclose([normal[0], normal[1]], [math.cos(1), math.sin(1)], rtol=1e-6)


# --- flash attention -----------------------------------------------------------------------------------------


def attn_oracle(q, k, v, mask, scale, max_bias, softcap):
    """Softmax attention per (b, h, t) in float64; returns the ggml layout (B, n_q, H, Dv)."""
    B, H, nq, _ = q.shape
    Hk = k.shape[1]
    out = np.zeros((B, H, nq, v.shape[-1]))
    n_log2 = 2 ** math.floor(math.log2(H))
    for b in range(B):
        for h in range(H):
            slope = 1.0
            if max_bias > 0:
                slope = 2 ** (-max_bias / n_log2 * (h + 1)) if h < n_log2 else \
                    2 ** (-(max_bias / 2) / n_log2 * (2 * (h - n_log2) + 1))
            kh = h // (H // Hk)
            for t in range(nq):
                s = k[b, kh].astype(F64) @ q[b, h, t].astype(F64) * scale
                if softcap:
                    s = softcap * np.tanh(s / softcap)
                keep = np.ones(s.shape, bool)
                if mask is not None:
                    m = mask[b % mask.shape[0], h % mask.shape[1], t, : k.shape[2]].astype(F64)
                    keep = m != -np.inf
                    s = s + slope * np.where(keep, m, 0)
                if not keep.any():
                    continue
                e = np.where(keep, np.exp(s - s[keep].max()), 0)
                out[b, h, t] = (e / e.sum()) @ v[b, kh].astype(F64)
    return out.transpose(0, 2, 1, 3)


@given(data=st.data())
def test_flash_attn_ext_is_softmax_attention(data):
    case = data.draw(STRATEGIES["flash_attn_ext"]())
    q, k, v, mask = src_values(case)
    p = case.params
    args = (p["scale"], p["max_bias"], p["logit_softcap"])
    node, exact = run_case(case, "exact")
    assert node.ne == (v.shape[-1], q.shape[1], q.shape[2], q.shape[0])
    np.testing.assert_allclose(exact, attn_oracle(q, k, v, mask, *args), rtol=1e-5, atol=1e-5)
    _, ggml = run_case(case, "ggml")
    f16 = case.srcs[1].dtype == "f16"
    expect = attn_oracle(f16r(q) if f16 else q, k, v, mask, *args)  # one-chunk path: q in k's vec_dot type
    vmax = float(np.abs(v.astype(F64)).max())
    # an F16 V accumulator rounds after every key: a few f16 ulps of the running sum
    np.testing.assert_allclose(ggml, expect, rtol=0, atol=(4e-3 if f16 else 1e-5) * max(vmax, 1) * 2)


def _fa_inputs(seed, B, H, Hk, nq, nkv, d, kt, vt):
    return (values(seed, (d, nq, H, B), "f32"), values(seed + 1, (d, nkv, Hk, B), kt, -2, 2),
            values(seed + 2, (d, nkv, Hk, B), vt, -2, 2))


def test_flash_attn_one_chunk_rounds_q_to_f16_for_f16_keys():
    q, k, v = _fa_inputs(3, 1, 2, 1, 5, 9, 16, "f16", "f32")
    m = np.zeros((1, 1, 5, 9), np.float16)
    got = npggml.eval_op("flash_attn_ext", q, k, v, m, 1.0, 0.0, 0.0)
    rounded = attn_oracle(f16r(q), k, v, m, 1.0, 0.0, 0.0)
    plain = attn_oracle(q, k, v, m, 1.0, 0.0, 0.0)
    assert np.abs(got - rounded).max() < 2e-6 < np.abs(got - plain).max()


def test_flash_attn_tiled_path_keeps_q_and_accumulator_in_f32():
    """n_q >= 64 with f16 k/v takes ggml's tiled path: f32 q, f32 V accumulation."""
    q, k, v = _fa_inputs(5, 1, 2, 1, 66, 70, 8, "f16", "f16")
    m = values(9, (70, 66, 1, 1), "f16")
    m[0, 0, 3, :] = -np.inf
    m[0, 0, :, ::4] = -np.inf
    got = npggml.eval_op("flash_attn_ext", q, k, v, m, 0.3, 0.0, 0.0)
    np.testing.assert_allclose(got, attn_oracle(q, k, v, m, 0.3, 0.0, 0.0), rtol=1e-5, atol=2e-6)
    assert np.all(got[0, 3] == 0)  # a fully masked query row gives 0, not NaN


def test_flash_attn_fully_masked_rows_give_zero_and_gqa_uses_integer_division():
    q, k, v = _fa_inputs(7, 1, 4, 2, 3, 5, 8, "f32", "f32")
    m = np.zeros((1, 1, 3, 5), np.float16)
    m[0, 0, 1] = -np.inf
    got = npggml.eval_op("flash_attn_ext", q, k, v, m, 0.5, 0.0, 0.0)
    assert np.all(got[0, 1] == 0) and np.all(np.isfinite(got))
    # heads 0, 1 read kv head 0; heads 2, 3 kv head 1 (not h % 2)
    np.testing.assert_allclose(got, attn_oracle(q, k, v, m, 0.5, 0.0, 0.0), rtol=1e-5, atol=1e-6)


# --- im2col, convolutions, pooling ---------------------------------------------------------------------------


def im2col_oracle(kshape, x, s0, s1, p0, p1, d0, d1, oh, ow):
    """x (N, C, H, W) -> (N, OH, OW, C*KH*KW) by the element formula of spec §2.17.1."""
    kh, kw = kshape
    n, c, h, w = x.shape
    out = np.zeros((n, oh, ow, c * kh * kw))
    for b in range(n):
        for oy in range(oh):
            for ox in range(ow):
                for ic in range(c):
                    for ky in range(kh):
                        for kx in range(kw):
                            iy, ix = oy * s1 + ky * d1 - p1, ox * s0 + kx * d0 - p0
                            if 0 <= iy < h and 0 <= ix < w:
                                out[b, oy, ox, ic * kh * kw + ky * kw + kx] = x[b, ic, iy, ix]
    return out


@given(data=st.data())
def test_im2col_element_formula(data):
    case = data.draw(STRATEGIES["im2col"]())
    node, out = run_case(case)
    kern, x = src_values(case)
    p = case.params
    if p["is_2D"]:
        expect = im2col_oracle(kern.shape[2:], x.astype(F64), p["s0"], p["s1"], p["p0"], p["p1"], p["d0"], p["d1"],
                               node.ne[2], node.ne[1])
    else:
        x4 = x.reshape(x.shape[1], x.shape[2], 1, x.shape[3])
        expect = im2col_oracle((1, kern.shape[3]), x4.astype(F64), p["s0"], 0, p["p0"], 0, p["d0"], 0, 1,
                               node.ne[1]).reshape(out.shape)
    if node.dtype == "f16":
        expect = f16r(expect)
    np.testing.assert_array_equal(out.astype(F64), expect)


def conv_oracle(kern, x, s0, s1, p0, p1, d0, d1, oh, ow, depthwise=False):
    """Direct cross-correlation loop: kern (OC, IC, KH, KW) or depthwise (Ca, 1, KH, KW); x (N, C, H, W)."""
    n, c, h, w = x.shape
    oc = c if depthwise else kern.shape[0]
    kh, kw = kern.shape[2:]
    out = np.zeros((n, oc, oh, ow))
    for b in range(n):
        for o in range(oc):
            for oy in range(oh):
                for ox in range(ow):
                    acc = 0.0
                    chans = [(o, 0)] if depthwise else [(ic, ic) for ic in range(c)]
                    kidx = o // (c // kern.shape[0]) if depthwise else o
                    for xc, kc in chans:
                        for ky in range(kh):
                            for kx in range(kw):
                                iy, ix = oy * s1 + ky * d1 - p1, ox * s0 + kx * d0 - p0
                                if 0 <= iy < h and 0 <= ix < w:
                                    acc += kern[kidx, kc, ky, kx] * x[b, xc, iy, ix]
                    out[b, o, oy, ox] = acc
    return out


@given(data=st.data())
def test_conv_2d_and_depthwise_are_direct_convolutions(data):
    op = data.draw(st.sampled_from(["conv_2d", "conv_2d_dw"]))
    case = data.draw(STRATEGIES[op]())
    kern, x = (v.astype(F64) for v in src_values(case))
    g = case.params
    node, exact = run_case(case, "exact")
    oh, ow = node.ne[1], node.ne[0]
    geo = (g["s0"], g["s1"], g["p0"], g["p1"], g["d0"], g["d1"], oh, ow)
    dw = op == "conv_2d_dw"
    np.testing.assert_allclose(exact, conv_oracle(kern, x, *geo, depthwise=dw), rtol=1e-5, atol=1e-5)
    _, ggml = run_case(case, "ggml")
    ktype = case.srcs[0].dtype
    if ktype != "bf16":  # ggml_conv_2d's F16 im2col; mul_mat then rounds the kernel to f16 too (conv_2d)
        xr, kr = f16r(x), (kern if dw else f16r(kern))
    else:  # F32 im2col; conv_2d_dw's mul_mat rounds the patches to the BF16 kernel's vec_dot type
        xr, kr = (bf16r(x) if dw else x), kern
    np.testing.assert_allclose(ggml, conv_oracle(kr.astype(F64), xr.astype(F64), *geo, depthwise=dw), rtol=1e-5,
                               atol=1e-5)


@given(data=st.data())
def test_pool_2d_window_semantics(data):
    case = data.draw(STRATEGIES["pool_2d"]())
    node, out = run_case(case)
    (x,) = src_values(case)
    p = case.params
    k0, k1, s0, s1 = p["k0"], p["k1"], p["s0"], p["s1"]
    p0, p1 = int(p["p0"]), int(p["p1"])
    assert node.ne[0] == int((x.shape[3] + 2 * p["p0"] - k0) / s0 + 1)
    expect = np.zeros(out.shape)
    for i3 in range(out.shape[0]):
        for i2 in range(out.shape[1]):
            for oy in range(out.shape[2]):
                for ox in range(out.shape[3]):
                    taps = [float(x[i3, i2, oy * s1 - p1 + ky, ox * s0 - p0 + kx]) for ky in range(k1)
                            for kx in range(k0) if 0 <= oy * s1 - p1 + ky < x.shape[2]
                            and 0 <= ox * s0 - p0 + kx < x.shape[3]]
                    if p["op"] == 0:
                        expect[i3, i2, oy, ox] = max(taps, default=-np.finfo(F32).max)
                    else:
                        expect[i3, i2, oy, ox] = sum(taps) / (k0 * k1)  # padding counts
    if p["op"] == 0:
        np.testing.assert_array_equal(out, expect)
    else:
        np.testing.assert_allclose(out, expect, rtol=1e-6, atol=1e-6)


# --- interpolate -----------------------------------------------------------------------------------------------


def _src_index(n_out, n_in, align):
    """PyTorch source coordinates (float64) for linear/cubic modes."""
    i = np.arange(n_out, dtype=F64)
    if align:
        return i * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(n_out)
    return (i + 0.5) * (n_in / n_out) - 0.5


def _linear_matrix(n_out, n_in, align):
    src = np.maximum(_src_index(n_out, n_in, align), 0)  # PyTorch clamps negative linear sources to 0
    i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = np.clip(src - i0, 0, 1)
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), i0), 1 - lam)
    np.add.at(m, (np.arange(n_out), i1), lam)
    return m


def _cubic_matrix(n_out, n_in, align, a=-0.75):
    def w(t):
        t = abs(t)
        return ((a + 2) * t - (a + 3)) * t * t + 1 if t <= 1 else (((t - 5) * t + 8) * t - 4) * a if t < 2 else 0

    src = _src_index(n_out, n_in, align)
    m = np.zeros((n_out, n_in))
    for o, s in enumerate(src):
        f = math.floor(s)
        t = s - f
        for off, wt in zip(range(-1, 3), (w(t + 1), w(t), w(1 - t), w(2 - t))):
            m[o, min(max(f + off, 0), n_in - 1)] += wt
    return m


def _nearest_planes(x, ne2, ne3):
    # (int)(i / sf) with the division in float (spec §2.19)
    i3 = (np.arange(ne3).astype(F32) / F32(F32(ne3) / F32(x.shape[0]))).astype(int)
    i2 = (np.arange(ne2).astype(F32) / F32(F32(ne2) / F32(x.shape[1]))).astype(int)
    return x[i3][:, i2]


@given(data=st.data())
def test_interpolate_matches_the_pytorch_formulas(data):
    case = data.draw(STRATEGIES["interpolate"]())
    p = case.params
    mode = p["mode"]
    if mode & 512:  # antialias: checked against PIL below
        mode = p["mode"] = mode & ~512 if (mode & 0xFF) == 1 else 2
    _, out = run_case(case)
    (x,) = src_values(case)
    x = _nearest_planes(x.astype(F64), p["ne2"], p["ne3"])
    base, align = mode & 0xFF, bool(mode & 256)
    if base == 0:
        sf0, sf1 = F32(F32(p["ne0"]) / F32(x.shape[3])), F32(F32(p["ne1"]) / F32(x.shape[2]))
        if align and p["ne0"] > 1 and x.shape[3] > 1:
            sf0 = F32(F32(p["ne0"] - 1) / F32(x.shape[3] - 1))
        if align and p["ne1"] > 1 and x.shape[2] > 1:
            sf1 = F32(F32(p["ne1"] - 1) / F32(x.shape[2] - 1))
        iy = (np.arange(p["ne1"]).astype(F32) / sf1).astype(int)
        ix = (np.arange(p["ne0"]).astype(F32) / sf0).astype(int)
        np.testing.assert_array_equal(out, x[:, :, iy][:, :, :, ix])
        return
    mk = _linear_matrix if base == 1 else _cubic_matrix
    my, mx = mk(p["ne1"], x.shape[2], align), mk(p["ne0"], x.shape[3], align)
    expect = np.einsum("yi,abij,xj->abyx", my, x, mx)
    np.testing.assert_allclose(out, expect, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(x).max())))


def _pil_resize(plane, w, h, flt):
    return np.asarray(Image.fromarray(plane.astype(F32), mode="F").resize((w, h), flt), dtype=F64)


@given(data=st.data(), seed=st.integers(0, 2**31), bicubic=st.booleans())
def test_antialiased_resizes_match_pil_float_images(data, seed, bicubic):
    """BILINEAR|ANTIALIAS (ggml) and npggml's BICUBIC|ANTIALIAS equal PIL's F-mode resize (triangle / a = -0.5
    cubic filters, support scaled by max(in/out, 1), normalised, truncated at the borders)."""
    h, w = data.draw(st.integers(1, 12)), data.draw(st.integers(1, 12))
    oh, ow = data.draw(st.integers(1, 12)), data.draw(st.integers(1, 12))
    x = values(seed, (w, h, 2, 1), "f32")
    mode = (2 if bicubic else 1) | 512
    out = npggml.eval_op("interpolate", x, ow, oh, 2, 1, mode)
    flt = Image.BICUBIC if bicubic else Image.BILINEAR
    for c in range(2):
        # PIL keeps the intermediate (after the first axis) in float32
        np.testing.assert_allclose(out[0, c], _pil_resize(x[0, c], ow, oh, flt), rtol=1e-5, atol=2e-6)
    if bicubic:
        np.testing.assert_array_equal(out, resize_bicubic_antialias(x, oh, ow))


def test_bicubic_antialias_helper_equals_the_64_to_40_filter_and_differs_from_plain_bicubic():
    x = values(1, (64, 64, 3, 1), "f32")
    aa = resize_bicubic_antialias(x, 40, 40)
    for c in range(3):
        np.testing.assert_allclose(aa[0, c], _pil_resize(x[0, c], 40, 40, Image.BICUBIC), rtol=1e-5, atol=2e-6)
    up = resize_bicubic_antialias(x[:, :, :16, :16], 20, 20)  # upsampling: a = -0.5, not ggml's -0.75
    plain = npggml.eval_op("interpolate", x[:, :, :16, :16], 20, 20, 3, 1, 2)
    assert np.abs(up - plain).max() > 1e-3
    np.testing.assert_allclose(up[0, 0], _pil_resize(x[0, 0, :16, :16], 20, 20, Image.BICUBIC), rtol=1e-5,
                               atol=2e-6)


# --- SAM ops, arange, group_norm, argmax -----------------------------------------------------------------------


@given(data=st.data())
def test_win_part_windows_and_round_trip(data):
    case = data.draw(STRATEGIES["win_part"]())
    node, out = run_case(case)
    (x,) = src_values(case)
    w = case.params["w"]
    _, H, W, C = x.shape
    npx = -(-W // w)
    for i in range(out.shape[0]):
        py, px = divmod(i, npx)
        for i2 in range(w):
            for i1 in range(w):
                y, xx = py * w + i2, px * w + i1
                want = x[0, y, xx] if y < H and xx < W else np.zeros(C)
                np.testing.assert_array_equal(out[i, i2, i1], want)
    back = npggml.eval_op("win_unpart", out, W, H, w)
    np.testing.assert_array_equal(back.reshape(x.shape), x)


@given(data=st.data())
def test_win_unpart_element_formula(data):
    case = data.draw(STRATEGIES["win_unpart"]())
    _, out = run_case(case)
    (a,) = src_values(case)
    w, w0, h0 = case.params["w"], case.params["w0"], case.params["h0"]
    npx = -(-w0 // w)
    for y in range(h0):
        for x in range(w0):
            np.testing.assert_array_equal(out[0, y, x], a[(y // w) * npx + x // w, y % w, x % w])


@given(data=st.data())
def test_get_rel_pos_is_sams_relative_table(data):
    case = data.draw(STRATEGIES["get_rel_pos"]())
    node, out = run_case(case)
    (a,) = src_values(case)
    k = case.params["kh"]
    assert node.dtype == "f16"
    table = a[0, 0]
    if case.srcs[0].dtype == "bf16":
        table = f32_to_bf16(table.astype(F32)).view(np.float16)  # 16-bit patterns copied as they are
    for q in range(k):
        for kk in range(k):
            np.testing.assert_array_equal(out[0, q, kk].view(np.uint16), table[q - kk + k - 1].view(np.uint16))


@given(data=st.data())
def test_add_rel_pos_is_sams_decomposed_bias(data):
    case = data.draw(STRATEGIES["add_rel_pos"]())
    _, out = run_case(case)
    a, pw, ph = (v.astype(F64) for v in src_values(case))
    K = pw.shape[-1]
    bh, qh, qw = pw.shape[:3]
    attn = a[0].reshape(bh, qh, qw, K, K)
    expect = attn + ph[:, :, :, :, None] + pw[:, :, :, None, :]  # rel_h[..., None], rel_w[..., None, :]
    np.testing.assert_allclose(out.reshape(expect.shape), expect, rtol=1e-6, atol=1e-6)


@given(data=st.data())
def test_arange(data):
    case = data.draw(STRATEGIES["arange"]())
    node, out = run_case(case)
    p = {k: F64(F32(v)) for k, v in case.params.items()}
    n = math.ceil(F32((p["stop"] - p["start"]) / p["step"]))
    assert node.ne == (n, 1, 1, 1) and node.dtype == "f32"
    np.testing.assert_allclose(out.reshape(-1), p["start"] + np.arange(n) * p["step"], rtol=2e-7, atol=2e-6)


@given(data=st.data())
def test_group_norm_matches_float64(data):
    case = data.draw(STRATEGIES["group_norm"]())
    _, out = run_case(case)
    (x,) = src_values(case)
    x = x.astype(F64)
    g, eps = case.params["n_groups"], case.params["eps"]
    c = x.shape[1]
    cpg = -(-c // g)
    expect = np.empty_like(x)
    for lo in range(0, c, cpg):
        blk = x[:, lo:lo + cpg]
        mu = blk.mean(axis=(1, 2, 3), keepdims=True)
        var = ((blk - mu) ** 2).mean(axis=(1, 2, 3), keepdims=True)
        expect[:, lo:lo + cpg] = (blk - mu) / np.sqrt(var + eps)
    np.testing.assert_allclose(out, expect, rtol=1e-5, atol=1e-5)


@given(data=st.data())
def test_argmax_ties_resolve_to_the_last_index(data):
    case = data.draw(STRATEGIES["argmax"]())
    node, out = run_case(case)
    (x,) = src_values(case)
    rows = x[0, 0]
    expect = [max(i for i in range(len(r)) if r[i] == r.max()) for r in rows]
    assert node.dtype == "i32" and node.ne == (rows.shape[0], 1, 1, 1)
    np.testing.assert_array_equal(out.reshape(-1), expect)


def test_argmax_example():
    x = np.array([[1, 3, 3, 0], [2, 2, 2, 2], [-np.inf, -np.inf, 5, -1]], np.float32)
    np.testing.assert_array_equal(npggml.eval_op("argmax", x), [2, 3, 2])


@pytest.mark.parametrize("mode", [1, 2])
def test_interpolate_identity_size_is_identity(mode):
    x = values(4, (5, 4, 2, 1), "f32")
    np.testing.assert_allclose(npggml.eval_op("interpolate", x, 5, 4, 2, 1, mode), x, rtol=1e-6, atol=1e-6)


def test_case_repr_is_compact():
    c = Case("add", [Src(np.zeros((2, 3), F32), "f32"), None], {})
    assert repr(c) == "Case(add(f32[3, 2, 1, 1], None), {})"
