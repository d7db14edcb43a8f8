"""SAM ViT-B image encoder shared by DeepSeek-OCR v1 and v2 (llama.cpp `clip_graph_deepseekocr::build_sam`).

Input `[S, S, 3, B]` planar pixels, output `[S/64, S/64, C, B]` (C = net_3 channels). Window partition and
relative positions are built from pad/reshape/permute and get_rows exactly as llama.cpp does. Mode
differences (deepseekocr-llamacpp.md §8): the absolute position table is resized with ggml's plain bicubic in
llama.cpp mode and with the antialiased (PIL-style) bicubic of the reference; the MLP uses tanh GELU in
llama.cpp mode and erf GELU in reference mode; the patch-embedding im2col is F16 for an F16 kernel only in
llama.cpp mode.
"""

from __future__ import annotations

import numpy as np

from npggml.graph.tensor import Tensor
from npggml.models.clip import FFN_GELU, FFN_GELU_ERF, NORM_NORMAL, ClipGraph

BILINEAR, BICUBIC, ANTIALIAS = 1, 2, 1 << 9
SAM_EPS = 1e-6


def rel_pos_indices(size: int) -> np.ndarray:
    """I32 [size(k), size(q)] in ggml order: element (k, q) = q - k + size - 1."""
    q = np.arange(size)[:, None]
    k = np.arange(size)[None, :]
    return (q - k + size - 1).astype(np.int32)


class SamBuilder(ClipGraph):
    """Adds `build_sam` to a ClipGraph; `self.inputs` collects the index inputs a graph needs."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.inputs: dict[Tensor, np.ndarray] = {}

    def conv_2d_f32(self, a: Tensor, b: Tensor, s0: int, s1: int, p0: int, p1: int, d0: int = 1,
                    d1: int = 1) -> Tensor:
        """im2col + mul_mat; the im2col is F16 only for an F16 kernel in llama.cpp mode."""
        ctx = self.ctx
        im2col_type = "f16" if (a.dtype == "f16" and self.llamacpp) else "f32"
        im = ctx.im2col(a, b, s0, s1, p0, p1, d0, d1, True, im2col_type)
        res = ctx.mul_mat(ctx.reshape_2d(im, im.ne[0], im.ne[3] * im.ne[2] * im.ne[1]),
                          ctx.reshape_2d(a, a.ne[0] * a.ne[1] * a.ne[2], a.ne[3]))
        res = ctx.reshape_4d(res, im.ne[1], im.ne[2], im.ne[3], a.ne[3])
        return ctx.cont(ctx.permute(res, 0, 1, 3, 2))

    def window_partition(self, x: Tensor, window: int) -> Tensor:
        ctx = self.ctx
        c, w, h, b = x.ne
        px, py = (window - w % window) % window, (window - h % window) % window
        npw, nph = (w + px) // window, (h + py) // window
        if px or py:
            x = ctx.pad(x, 0, px, py, 0)
        x = ctx.reshape_4d(x, c * window, npw, window, nph * b)
        x = ctx.cont(ctx.permute(x, 0, 2, 1, 3))
        return ctx.reshape_4d(x, c, window, window, npw * nph * b)

    def window_unpartition(self, x: Tensor, w: int, h: int, window: int) -> Tensor:
        ctx = self.ctx
        c = x.ne[0]
        px, py = (window - w % window) % window, (window - h % window) % window
        npw, nph = (w + px) // window, (h + py) // window
        b = x.ne[3] // (npw * nph)
        x = ctx.reshape_4d(x, c * window, window, npw, nph * b)
        x = ctx.cont(ctx.permute(x, 0, 2, 1, 3))
        x = ctx.reshape_4d(x, c, w + px, h + py, b)
        x = ctx.view_4d(x, x.ne[0], w, h, x.ne[3], x.nb[1], x.nb[2], x.nb[3], 0)
        return ctx.cont(x)

    def get_rel_pos(self, rel_pos: Tensor, indices: Tensor, q_size: int, k_size: int) -> Tensor:
        """[C, L] table -> [C, k, q] with rows rel_pos[q - k + size - 1], the table resized linearly first
        when its length is not 2*max(q, k) - 1."""
        ctx = self.ctx
        C, L = rel_pos.ne[0], rel_pos.ne[1]
        max_rel = 2 * max(q_size, k_size) - 1
        cur = rel_pos
        if max_rel != L:
            ne0, ne1, ne2, ne3 = cur.ne
            cur = ctx.reshape_3d(ctx.cont(ctx.permute(cur, 1, 0, 2, 3)), ne1, 1, ne0 * ne2 * ne3)
            cur = ctx.interpolate(cur, max_rel, 1, ne0 * ne2 * ne3, 1, BILINEAR)
            cur = ctx.reshape_4d(cur, max_rel, ne0, ne2, ne3)
            cur = ctx.cont(ctx.permute(cur, 1, 0, 2, 3))
        rows = ctx.get_rows(cur, ctx.reshape_1d(indices, q_size * k_size))
        return ctx.reshape_3d(rows, C, k_size, q_size)

    def _index_input(self, size: int, name: str) -> Tensor:
        t = self.ctx.input("i32", (size, size), name)
        self.inputs[t] = rel_pos_indices(size)
        return t

    def build_sam(self, inp_raw: Tensor) -> Tensor:
        ctx, hp, w = self.ctx, self.hp, self.w
        n_embd, n_heads = hp.sam_n_embd, hp.sam_n_head
        d_heads = n_embd // n_heads
        window = hp.window_size

        patch_w = w("v.sam.patch_embd.weight")
        x = self.conv_2d_f32(patch_w, inp_raw, patch_w.ne[0], patch_w.ne[1], 0, 0)
        x = ctx.add(x, ctx.reshape_3d(w("v.sam.patch_embd.bias"), 1, 1, n_embd))
        x = ctx.cont(ctx.permute(x, 1, 2, 0, 3))
        G = x.ne[1]

        idx_local = self._index_input(window, "rel_pos_indices_local")
        idx_global = self._index_input(G, "rel_pos_indices_global")

        pos = w("v.sam.pos_embd.weight")
        if pos.ne[1] != G:
            mode = BICUBIC if self.llamacpp else BICUBIC | ANTIALIAS
            old = ctx.cont(ctx.permute(pos, 2, 0, 1, 3))
            new = ctx.interpolate(old, G, G, n_embd, 1, mode)
            pos = ctx.cont(ctx.permute(new, 1, 2, 0, 3))
        cur = ctx.add(x, pos)

        ffn = FFN_GELU if self.llamacpp else FFN_GELU_ERF
        for il in range(hp.sam_n_layer):
            p = f"v.sam.blk.{il}."
            shortcut = cur
            cur = self.build_norm(cur, w(p + "pre_ln.weight"), w(p + "pre_ln.bias"), NORM_NORMAL, SAM_EPS, il)
            w0, h0 = cur.ne[1], cur.ne[2]
            is_global = il in hp.sam_global_layers
            if is_global:
                indices = idx_global
            else:
                cur = self.window_partition(cur, window)
                indices = idx_local
            W, H, B = cur.ne[1], cur.ne[2], cur.ne[3]

            cur = ctx.add(ctx.mul_mat(w(p + "attn.qkv.weight"), cur), w(p + "attn.qkv.bias"))
            cur = ctx.reshape_4d(cur, n_embd, 3, W * H, B)
            qkv = [
                ctx.reshape_4d(ctx.cont(ctx.view_3d(cur, n_embd, W * H, B, cur.nb[2], cur.nb[3], i * cur.nb[1])),
                               d_heads, n_heads, W * H, B)
                for i in range(3)
            ]
            Q, K, V = qkv

            rw = self.get_rel_pos(w(p + "attn.pos_w.weight"), indices, W, W)
            rh = self.get_rel_pos(w(p + "attn.pos_h.weight"), indices, H, H)
            qr = ctx.reshape_4d(ctx.cont(ctx.permute(Q, 0, 2, 1, 3)), d_heads, W, H, B * n_heads)
            rw = ctx.mul_mat(rw, ctx.cont(ctx.permute(qr, 0, 2, 1, 3)))
            rw = ctx.cont(ctx.permute(rw, 0, 2, 1, 3))
            rw = ctx.reshape_4d(rw, W, 1, W * H, n_heads * B)
            rw = ctx.repeat_4d(rw, W, H, W * H, n_heads * B)
            rh = ctx.mul_mat(rh, qr)
            rh = ctx.reshape_4d(rh, 1, H, W * H, n_heads * B)
            mask = ctx.reshape_4d(ctx.add(rw, rh), W * H, W * H, n_heads, B)

            cur = self.build_attn(w(p + "attn.out.weight"), w(p + "attn.out.bias"), Q, K, V, mask,
                                  d_heads ** -0.5, il)
            cur = ctx.reshape_4d(ctx.cont(cur), n_embd, W, H, B)
            if not is_global:
                cur = self.window_unpartition(cur, w0, h0, window)
            cur = ctx.add(cur, shortcut)
            inp_ff = cur
            cur = self.build_norm(inp_ff, w(p + "post_ln.weight"), w(p + "post_ln.bias"), NORM_NORMAL, SAM_EPS,
                                  il)
            cur = self.build_ffn(cur, w(p + "mlp.lin1.weight"), w(p + "mlp.lin1.bias"), None, None,
                                 w(p + "mlp.lin2.weight"), w(p + "mlp.lin2.bias"), ffn, il)
            cur = self.cb(ctx.add(cur, inp_ff), "sam_layer_out", il)

        cur = ctx.cont(ctx.permute(cur, 2, 0, 1, 3))
        necks = (("v.sam.neck.0.weight", "v.sam.neck.1", 0), ("v.sam.neck.2.weight", "v.sam.neck.3", 1))
        for conv, ln, pad in necks:
            cur = self.conv_2d_f32(w(conv), cur, 1, 1, pad, pad)
            cur = ctx.cont(ctx.permute(cur, 1, 2, 0, 3))
            cur = self.build_norm(cur, w(ln + ".weight"), w(ln + ".bias"), NORM_NORMAL, SAM_EPS, -1)
            cur = ctx.cont(ctx.permute(cur, 2, 0, 1, 3))
        cur = self.conv_2d_f32(w("v.sam.net_2.weight"), cur, 2, 2, 1, 1)
        cur = self.conv_2d_f32(w("v.sam.net_3.weight"), cur, 2, 2, 1, 1)
        return self.cb(cur, "sam_output")
