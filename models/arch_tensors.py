"""The tensors of DeepSeek-OCR v1 / v2 mmproj files: names, ggml shapes, storage types.

Each table lists, for given `HParams`, every tensor llama.cpp's converter writes, in ggml order (`ne`, as many
dimensions as the converter stores). The loader checks a file against it, and `gguf_synth` writes files from it,
so both agree by construction; the tests compare them with converter-made fixtures.

`store` is the converter's type rule (spec §2.1):
- `f32`: always F32 (1-D tensors, norms, non-`.weight` names, and the names the DeepSeek converter forces:
  embeddings, position tables, SAM neck and downsampling convolutions);
- `patch`: the SAM patch embedding, F16 when the output type is f16 and F32 otherwise;
- `outtype`: 2-D matrices, stored in the requested output type;
- `f16`: always F16 (the legacy llava converter's rule for 4-D tensors and the projector matrices).

`init` says how `gguf_synth` draws random values: `fan_in` (normal / sqrt(fan_in), fan_in = product of all but
the last ne), `one` (norm weights, near 1) or `small` (biases and embeddings, normal * 0.02).
"""

from __future__ import annotations

from dataclasses import dataclass

from npggml.models.hparams import HParams, LlavaHParams

CLIP_PATCH_SIZE = 14  # CLIP-L/14, the patch of v1's unused CLIP patch embedding


@dataclass(frozen=True)
class TensorSpec:
    name: str
    ne: tuple[int | None, ...]  # None: any size (only for tensors the builder does not use)
    store: str = "f32"
    init: str = "small"
    required: bool = True
    used: bool = True
    written_ne: tuple[int, ...] | None = None  # the shape gguf_synth writes where `ne` has wildcards

    @property
    def concrete_ne(self) -> tuple[int, ...]:
        return self.written_ne or self.ne

    def matches(self, ne: tuple[int, ...]) -> bool:
        want = pad4(self.ne)
        return all(w is None or w == n for w, n in zip(want, pad4(ne)))

    def describe(self) -> str:
        return format_ne(self.ne)


def pad4(ne: tuple) -> tuple:
    """A shape padded with 1s to ggml's four dimensions."""
    return tuple(ne) + (1,) * (4 - len(ne))


def format_ne(ne: tuple) -> str:
    return "[" + ", ".join("*" if n is None else str(n) for n in ne) + "]"


def _matrix(name: str, n_in: int, n_out: int, bias: bool = True) -> list[TensorSpec]:
    specs = [TensorSpec(f"{name}.weight", (n_in, n_out), "outtype", "fan_in")]
    if bias:
        specs.append(TensorSpec(f"{name}.bias", (n_out,)))
    return specs


def _norm(name: str, n: int, bias: bool = True) -> list[TensorSpec]:
    specs = [TensorSpec(f"{name}.weight", (n,), init="one")]
    if bias:
        specs.append(TensorSpec(f"{name}.bias", (n,)))
    return specs


def _conv(name: str, k: int, c_in: int, c_out: int) -> TensorSpec:
    return TensorSpec(name, (k, k, c_in, c_out), "f32", "fan_in")


def sam_tensors(hp: HParams) -> list[TensorSpec]:
    """SAM ViT-B image encoder with its neck and the two downsampling convolutions (identical in v1 and v2)."""
    e, grid, hd = hp.sam_n_embd, hp.sam_grid, hp.sam_head_dim
    specs = [
        TensorSpec("v.sam.pos_embd.weight", (e, grid, grid, 1)),
        TensorSpec("v.sam.patch_embd.weight", (hp.patch_size, hp.patch_size, 3, e), "patch", "fan_in"),
        TensorSpec("v.sam.patch_embd.bias", (e,)),
    ]
    for il in range(hp.sam_n_layer):
        blk = f"v.sam.blk.{il}"
        span = 2 * grid - 1 if il in hp.sam_global_layers else 2 * hp.window_size - 1
        specs += _norm(f"{blk}.pre_ln", e)
        specs += [TensorSpec(f"{blk}.attn.pos_h.weight", (hd, span)),
                  TensorSpec(f"{blk}.attn.pos_w.weight", (hd, span))]
        specs += _matrix(f"{blk}.attn.qkv", e, 3 * e)
        specs += _matrix(f"{blk}.attn.out", e, e)
        specs += _norm(f"{blk}.post_ln", e)
        specs += _matrix(f"{blk}.mlp.lin1", e, hp.sam_n_ff)
        specs += _matrix(f"{blk}.mlp.lin2", hp.sam_n_ff, e)
    neck = hp.sam_neck_channels
    specs.append(_conv("v.sam.neck.0.weight", 1, e, neck))
    specs += _norm("v.sam.neck.1", neck)
    specs.append(_conv("v.sam.neck.2.weight", 3, neck, neck))
    specs += _norm("v.sam.neck.3", neck)
    specs.append(_conv("v.sam.net_2.weight", 3, neck, hp.sam_net2_channels))
    specs.append(_conv("v.sam.net_3.weight", 3, hp.sam_net2_channels, hp.sam_out_channels))
    return specs


def deepseekocr_tensors(hp: HParams) -> list[TensorSpec]:
    """v1: SAM, CLIP-L body fed with SAM features, linear projector over [CLIP | SAM] features."""
    n = hp.n_embd
    specs = sam_tensors(hp)
    specs += [
        TensorSpec("v.class_embd", (n,)),
        TensorSpec("v.position_embd.weight", (n, hp.n_pos_global + 1)),
        # CLIP's own patch embedding: llama.cpp loads it but the graph feeds SAM features instead.
        TensorSpec("v.patch_embd.weight", (None, None, 3, n), "f32", "fan_in", required=False, used=False,
                   written_ne=(CLIP_PATCH_SIZE, CLIP_PATCH_SIZE, 3, n)),
    ]
    specs += _norm("v.pre_ln", n)
    for il in range(hp.n_layer):
        blk = f"v.blk.{il}"
        specs += _norm(f"{blk}.ln1", n)
        specs += _matrix(f"{blk}.attn_qkv", n, 3 * n)
        specs += _matrix(f"{blk}.attn_out", n, n)
        specs += _norm(f"{blk}.ln2", n)
        specs += _matrix(f"{blk}.ffn_up", n, hp.n_ff)
        specs += _matrix(f"{blk}.ffn_down", hp.n_ff, n)
    specs += _matrix("mm.model.fc", n + hp.sam_out_channels, hp.proj_dim)
    specs += [TensorSpec("v.image_newline", (hp.proj_dim,)),
              TensorSpec("v.view_seperator", (hp.proj_dim, 1))]
    return specs


def deepseekocr2_tensors(hp: HParams) -> list[TensorSpec]:
    """v2: SAM, Qwen2 encoder over [SAM tokens | learned queries], linear projector over the queries."""
    n, kv = hp.n_embd, hp.n_head_kv * hp.head_dim
    specs = sam_tensors(hp)
    for il in range(hp.n_layer):
        blk = f"v.blk.{il}"
        specs += _norm(f"{blk}.ln1", n, bias=False)
        specs += _matrix(f"{blk}.attn_q", n, n)
        specs += _matrix(f"{blk}.attn_k", n, kv)
        specs += _matrix(f"{blk}.attn_v", n, kv)
        specs += _matrix(f"{blk}.attn_out", n, n, bias=False)
        specs += _norm(f"{blk}.ln2", n, bias=False)
        specs += _matrix(f"{blk}.ffn_gate", n, hp.n_ff, bias=False)
        specs += _matrix(f"{blk}.ffn_up", n, hp.n_ff, bias=False)
        specs += _matrix(f"{blk}.ffn_down", hp.n_ff, n, bias=False)
    specs += _norm("v.post_ln", n, bias=False)
    specs += [TensorSpec("v.resample_query_768.weight", (n, hp.n_queries_tile), "outtype"),
              TensorSpec("v.resample_query_1024.weight", (n, hp.n_queries_global), "outtype")]
    specs += _matrix("mm.model.fc", n, hp.proj_dim)
    specs += [TensorSpec("v.view_seperator", (hp.proj_dim, 1)),
              # Optional in llama.cpp and unused by the v2 graph; converter output has it when the checkpoint does.
              TensorSpec("v.image_newline", (hp.proj_dim,), required=False, used=False)]
    return specs


def llava_tensors(hp: LlavaHParams) -> list[TensorSpec]:
    """LLaVA `mlp`: the projector first, then the CLIP vision tower, in the legacy llava converter's order
    (`tools/mtmd/legacy-models/convert_image_encoder_to_gguf.py`: no post-LN, fc1 named ffn_down)."""
    n, ff = hp.n_embd, hp.n_ff
    specs = [
        TensorSpec("mm.0.weight", (n, hp.mm_hidden), "f16", "fan_in"),
        TensorSpec("mm.0.bias", (hp.mm_hidden,)),
        TensorSpec("mm.2.weight", (hp.mm_hidden, hp.proj_dim), "f16", "fan_in"),
        TensorSpec("mm.2.bias", (hp.proj_dim,)),
        TensorSpec("v.class_embd", (n,)),
        TensorSpec("v.patch_embd.weight", (hp.patch_size, hp.patch_size, 3, n), "f16", "fan_in"),
        # 2-D ".weight": F16 in an f16 file, F32 with --use-f32 (the `patch` rule)
        TensorSpec("v.position_embd.weight", (n, hp.n_pos), "patch"),
    ]
    if hp.has_patch_bias:
        specs.append(TensorSpec("v.patch_embd.bias", (n,)))
    if hp.has_pre_ln:
        specs += _norm("v.pre_ln", n)
    for il in range(hp.n_layer):
        blk = f"v.blk.{il}"
        for m in ("attn_k", "attn_v", "attn_q", "attn_out"):
            specs += _matrix(f"{blk}.{m}", n, n)
        specs += _norm(f"{blk}.ln1", n)
        if hp.ffn_swapped:  # fc1 stored as ffn_down, fc2 as ffn_up
            specs += _matrix(f"{blk}.ffn_down", n, ff) + _matrix(f"{blk}.ffn_up", ff, n)
        else:
            specs += _matrix(f"{blk}.ffn_up", n, ff) + _matrix(f"{blk}.ffn_down", ff, n)
        specs += _norm(f"{blk}.ln2", n)
    if hp.has_post_ln:
        specs += _norm("v.post_ln", n)
    return specs
