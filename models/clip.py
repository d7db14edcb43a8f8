"""Shared graph builders, ported from llama.cpp `tools/mtmd/clip.cpp` (`clip_graph`).

`ClipGraph` holds what every model builder needs: the builder context, the loaded mmproj (weights become
constant leaves once each), the numeric mode, and llama.cpp's naming callback `cb(t, name, il)` ("name-il").
`build_vit` takes a batch in ne2 (`[n_embd, n_pos, B]`), runs the body on the flattened `[n_embd, n_pos*B]`
and views Q/K/V as 4-D `[d_head, n_head, n_pos, B]` in attention; for B == 1 it builds the same graph as the
unbatched version.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from npggml.graph.context import Context
from npggml.graph.tensor import Tensor

MODES = ("reference", "llama.cpp")

NORM_NORMAL, NORM_RMS = "normal", "rms"
FFN_GELU, FFN_GELU_ERF, FFN_GELU_QUICK, FFN_SILU = "gelu", "gelu_erf", "gelu_quick", "silu"


@dataclass
class VitLayer:
    """Weight names of one transformer layer (None where the model has no such tensor)."""

    ln_1_w: str | None = None
    ln_1_b: str | None = None
    qkv_w: str | None = None
    qkv_b: str | None = None
    q_w: str | None = None
    q_b: str | None = None
    k_w: str | None = None
    k_b: str | None = None
    v_w: str | None = None
    v_b: str | None = None
    o_w: str | None = None
    o_b: str | None = None
    ln_2_w: str | None = None
    ln_2_b: str | None = None
    ff_up_w: str | None = None
    ff_up_b: str | None = None
    ff_gate_w: str | None = None
    ff_gate_b: str | None = None
    ff_down_w: str | None = None
    ff_down_b: str | None = None

    @classmethod
    def at(cls, il: int, biases: bool | set[str] = True, **stems: str) -> VitLayer:
        """Layer `il`'s tensor names from `field=stem` pairs (`qkv="attn_qkv"` gives
        `v.blk.{il}.attn_qkv.weight`); `biases` says which fields also have a `.bias` (True: all)."""
        names = {}
        for part, stem in stems.items():
            names[f"{part}_w"] = f"v.blk.{il}.{stem}.weight"
            if biases is True or part in biases:
                names[f"{part}_b"] = f"v.blk.{il}.{stem}.bias"
        return cls(**names)


@dataclass
class VitSpec:
    n_embd: int
    n_head: int
    n_head_kv: int
    eps: float
    layers: list[VitLayer]
    pre_ln: tuple[str | None, str | None] = (None, None)
    post_ln: tuple[str | None, str | None] = (None, None)
    kq_scale: float = field(default=0.0)

    def __post_init__(self):
        if not self.kq_scale:
            self.kq_scale = (self.n_embd // self.n_head) ** -0.5


class ClipGraph:
    def __init__(self, model, mode: str = "reference", ctx: Context | None = None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.model = model  # npggml.models.gguf_io.Mmproj
        self.hp = model.hparams
        self.mode = mode
        self.ctx = ctx or Context()
        self._weights: dict[str, Tensor] = {}

    @property
    def llamacpp(self) -> bool:
        return self.mode == "llama.cpp"

    def w(self, name: str | None) -> Tensor | None:
        """The weight `name` as a constant leaf (one leaf per weight, shared by every use)."""
        if name is None:
            return None
        t = self._weights.get(name)
        if t is None:
            wt = self.model.get(name)
            t = self.ctx.constant(wt.data(), name, dtype=wt.ggml_type)
            self._weights[name] = t
        return t

    @staticmethod
    def cb(t: Tensor, name: str, il: int = -1) -> Tensor:
        return t.set_name(f"{name}-{il}" if il >= 0 else name)

    # --- building blocks (clip.cpp build_mm / build_norm / build_ffn / build_attn / build_vit) ---------------
    def build_mm(self, w: Tensor, x: Tensor) -> Tensor:
        return self.ctx.mul_mat(w, x)

    def build_norm(self, cur: Tensor, mw: Tensor | None, mb: Tensor | None, norm_type: str, eps: float,
                   il: int) -> Tensor:
        ctx = self.ctx
        cur = ctx.rms_norm(cur, eps) if norm_type == NORM_RMS else ctx.norm(cur, eps)
        if mw is not None:
            cur = self.cb(ctx.mul(cur, mw), "norm_w", il)
        if mb is not None:
            cur = self.cb(ctx.add(cur, mb), "norm_b", il)
        return cur

    def build_ffn(self, cur: Tensor, up, up_b, gate, gate_b, down, down_b, ffn: str, il: int) -> Tensor:
        ctx = self.ctx
        tmp = self.cb(self.build_mm(up, cur), "ffn_up", il) if up is not None else cur
        if up_b is not None:
            tmp = self.cb(ctx.add(tmp, up_b), "ffn_up_b", il)
        if gate is not None:
            cur = self.cb(self.build_mm(gate, cur), "ffn_gate", il)
            if gate_b is not None:
                cur = self.cb(ctx.add(cur, gate_b), "ffn_gate_b", il)
            glu = {FFN_SILU: "swiglu_split", FFN_GELU: "geglu_split"}[ffn]
            cur = self.cb(getattr(ctx, glu)(cur, tmp), f"ffn_{glu.split('_')[0]}", il)
        else:
            cur = self.cb(getattr(ctx, ffn)(tmp), f"ffn_{ffn}", il)
        if down is not None:
            cur = self.build_mm(down, cur)
        if down_b is not None:
            self.cb(cur, "ffn_down", il)
            cur = ctx.add(cur, down_b)
        return cur

    def build_attn(self, wo, wo_b, q_cur: Tensor, k_cur: Tensor, v_cur: Tensor, kq_mask: Tensor | None,
                   kq_scale: float, il: int) -> Tensor:
        """Q/K/V `[d_head, n_head(_kv), n_pos, B]` -> flat `[n_head*d_head, n_pos*B]` (no flash attention)."""
        ctx = self.ctx
        q = ctx.permute(q_cur, 0, 2, 1, 3)
        k = ctx.permute(k_cur, 0, 2, 1, 3)
        v = ctx.cont(ctx.permute(v_cur, 1, 2, 0, 3))
        kq = ctx.mul_mat(k, q)
        kq = ctx.soft_max_ext(kq, kq_mask, kq_scale, 0.0)
        kqv = ctx.mul_mat(v, kq)
        cur = ctx.permute(kqv, 0, 2, 1, 3)
        cur = self.cb(ctx.cont_2d(cur, cur.ne[0] * cur.ne[1], cur.ne[2] * cur.ne[3]), "kqv_out", il)
        if wo is not None:
            cur = self.build_mm(wo, cur)
        if wo_b is not None:
            cur = ctx.add(cur, wo_b)
        return cur

    def build_vit(self, inp: Tensor, n_pos: int, spec: VitSpec, norm_type: str, ffn: str,
                  learned_pos_embd: Tensor | None = None,
                  add_pos: Callable[[Tensor], Tensor] | None = None,
                  attn_mask: Tensor | None = None) -> Tensor:
        """inp `[n_embd, n_pos, B]` -> `[n_embd, n_pos, B]`."""
        ctx, w = self.ctx, self.w
        n_embd, n_head, n_head_kv = spec.n_embd, spec.n_head, spec.n_head_kv
        d_head = n_embd // n_head
        B = inp.ne[2]
        if learned_pos_embd is not None:
            inp = self.cb(ctx.add(inp, learned_pos_embd), "pos_embed")
        inp = ctx.reshape_2d(inp, n_embd, n_pos * B)
        inpL = inp
        if spec.pre_ln[0] is not None:
            inpL = self.cb(self.build_norm(inpL, w(spec.pre_ln[0]), w(spec.pre_ln[1]), norm_type, spec.eps, -1),
                           "pre_ln")
        for il, layer in enumerate(spec.layers):
            cur = self.build_norm(inpL, w(layer.ln_1_w), w(layer.ln_1_b), norm_type, spec.eps, il)
            self.cb(cur, "layer_inp_normed", il)
            if layer.qkv_w is not None:
                cur = self.build_mm(w(layer.qkv_w), cur)
                if layer.qkv_b is not None:
                    cur = ctx.add(cur, w(layer.qkv_b))
                row = cur.nb[1]
                hd = d_head * 4  # f32 row size of one head
                q = ctx.view_4d(cur, d_head, n_head, n_pos, B, hd, row, row * n_pos, 0)
                k = ctx.view_4d(cur, d_head, n_head, n_pos, B, hd, row, row * n_pos, n_head * hd)
                v = ctx.view_4d(cur, d_head, n_head, n_pos, B, hd, row, row * n_pos, 2 * n_head * hd)
            else:
                q = self.build_mm(w(layer.q_w), cur)
                if layer.q_b is not None:
                    q = ctx.add(q, w(layer.q_b))
                k = self.build_mm(w(layer.k_w), cur)
                if layer.k_b is not None:
                    k = ctx.add(k, w(layer.k_b))
                v = self.build_mm(w(layer.v_w), cur)
                if layer.v_b is not None:
                    v = ctx.add(v, w(layer.v_b))
                q = ctx.reshape_4d(q, d_head, n_head, n_pos, B)
                k = ctx.reshape_4d(k, d_head, n_head_kv, n_pos, B)
                v = ctx.reshape_4d(v, d_head, n_head_kv, n_pos, B)
            self.cb(q, "Qcur", il)
            self.cb(k, "Kcur", il)
            self.cb(v, "Vcur", il)
            if add_pos is not None:
                q = self.cb(add_pos(q), "Qcur_pos", il)
                k = self.cb(add_pos(k), "Kcur_pos", il)
            cur = self.build_attn(w(layer.o_w), w(layer.o_b), q, k, v, attn_mask, spec.kq_scale, il)
            self.cb(cur, "attn_out", il)
            cur = ctx.add(cur, inpL)
            inpL = self.cb(cur, "ffn_inp", il)
            cur = self.build_norm(cur, w(layer.ln_2_w), w(layer.ln_2_b), norm_type, spec.eps, il)
            self.cb(cur, "ffn_inp_normed", il)
            cur = self.build_ffn(cur, w(layer.ff_up_w), w(layer.ff_up_b), w(layer.ff_gate_w), w(layer.ff_gate_b),
                                 w(layer.ff_down_w), w(layer.ff_down_b), ffn, il)
            self.cb(cur, "ffn_out", il)
            inpL = self.cb(ctx.add(inpL, cur), "layer_out", il)
        if spec.post_ln[0] is not None:
            inpL = self.build_norm(inpL, w(spec.post_ln[0]), w(spec.post_ln[1]), norm_type, spec.eps, -1)
        return ctx.reshape_3d(inpL, n_embd, inpL.ne[1] // B, B)
