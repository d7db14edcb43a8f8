"""LLaVA-1.5 style `mlp` projector: a CLIP ViT (patch-embedding convolution, class token, learned positions,
pre-LN, quick-GELU MLPs) and a two-layer MLP projector `mm.0 -> GELU -> mm.2` (llama.cpp `clip_graph_llava`,
projector type `PROJECTOR_TYPE_MLP`).

The body is the shared `build_vit` with a batch dim, so several same-size images run as one graph
(`support_batch`; llama.cpp's llava graph itself is built for one image at a time).

Mode differences (llama.cpp 0c1e57098 vs the HF LLaVA model the mmproj was converted from):
- class token: HF puts it first (position row 0) and drops it from the features; llama.cpp's graph appends it
  **last** while the position and patch index inputs still assume it first, so patch i gets position row i and
  the selected features are patches 1..N-1 plus the class token (ggml-org/llama.cpp#25814);
- depth: the legacy converter already dropped CLIP's last layer (LLaVA's `vision_feature_layer = -2`) and the
  graph stops one layer earlier again, running `block_count - 1` layers (#25817); reference mode runs them all;
- GELU: reference uses erf GELU in the projector (torch `nn.GELU`), llama.cpp `ggml_gelu` (tanh form);
- the patch-embedding `ggml_conv_2d` rounds the im2col patches to F16 in llama.cpp mode.
Preprocessing follows llama.cpp's fixed-size path in both modes: aspect-preserving bicubic resize into the
square input with ceil sizes, padded with (122, 116, 104) (`mtmd_image_preprocessor_fixed_size`, PAD_CEIL).
"""

from __future__ import annotations

import math

import numpy as np

from npggml.graph.graph import Graph
from npggml.graph.tensor import Tensor
from npggml.models.batch import BatchGraph, BatchSupport, ImageChunk, ImageShape, model_key
from npggml.models.clip import (
    FFN_GELU,
    FFN_GELU_ERF,
    FFN_GELU_QUICK,
    FFN_SILU,
    NORM_NORMAL,
    ClipGraph,
    VitLayer,
    VitSpec,
)
from npggml.preprocess.image_io import as_rgb_array
from npggml.preprocess.views import normalize, resize


def fixed_size_view(img: np.ndarray, size: int, mode: str, color: tuple[int, int, int]) -> np.ndarray:
    """uint8 (size, size, 3): the page resized into the square keeping its aspect (ceil), centred, padded."""
    h, w = img.shape[:2]
    f32 = np.float32
    scale = min(f32(size) / f32(w), f32(size) / f32(h))
    new_w = min(int(math.ceil(f32(w) * scale)), size)
    new_h = min(int(math.ceil(f32(h) * scale)), size)
    out = np.empty((size, size, 3), np.uint8)
    out[...] = np.asarray(color, np.uint8)
    x0, y0 = (size - new_w) // 2, (size - new_h) // 2
    out[y0 : y0 + new_h, x0 : x0 + new_w] = img if (new_w, new_h) == (w, h) else resize(img, (new_w, new_h), mode)
    return out


class Llava(ClipGraph, BatchSupport):
    projector = "mlp"
    output_name = "llava_output"
    support_batch = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.inputs: dict[Tensor, np.ndarray] = {}

    @property
    def n_vit_layers(self) -> int:
        return self.hp.n_layer - 1 if self.llamacpp else self.hp.n_layer

    def ffn_op(self) -> str:
        hp = self.hp
        if hp.use_silu:
            return FFN_SILU
        if hp.use_gelu:
            return FFN_GELU if self.llamacpp else FFN_GELU_ERF
        return FFN_GELU_QUICK

    def vit_spec(self) -> VitSpec:
        hp = self.hp
        up, down = ("ffn_down", "ffn_up") if hp.ffn_swapped else ("ffn_up", "ffn_down")
        layers = [VitLayer.at(il, ln_1="ln1", q="attn_q", k="attn_k", v="attn_v", o="attn_out", ln_2="ln2",
                              ff_up=up, ff_down=down) for il in range(self.n_vit_layers)]
        pre = ("v.pre_ln.weight", "v.pre_ln.bias") if hp.has_pre_ln else (None, None)
        post = ("v.post_ln.weight", "v.post_ln.bias") if hp.has_post_ln else (None, None)
        return VitSpec(n_embd=hp.n_embd, n_head=hp.n_head, n_head_kv=hp.n_head, eps=hp.eps, layers=layers,
                       pre_ln=pre, post_ln=post)

    def conv_2d(self, a: Tensor, b: Tensor, s: int) -> Tensor:
        """ggml_conv_2d(a, b, s, s, 0, 0, 1, 1): im2col + mul_mat -> [OW, OH, OC, N]."""
        ctx = self.ctx
        im2col_type = "f16" if (self.llamacpp and a.dtype != "bf16") else "f32"
        im = ctx.im2col(a, b, s, s, 0, 0, 1, 1, True, im2col_type)
        res = ctx.mul_mat(ctx.reshape_2d(im, im.ne[0], im.ne[3] * im.ne[2] * im.ne[1]),
                          ctx.reshape_2d(a, a.ne[0] * a.ne[1] * a.ne[2], a.ne[3]))
        res = ctx.reshape_4d(res, im.ne[1], im.ne[2], im.ne[3], a.ne[3])
        return ctx.cont(ctx.permute(res, 0, 1, 3, 2))

    def build_images(self, inp_raw: Tensor) -> Tensor:
        """inp_raw [S, S, 3, B] -> [proj_dim, n_patches, B]."""
        ctx, w, hp = self.ctx, self.w, self.hp
        n_batch, n_embd, n_patches, n_pos = inp_raw.ne[3], hp.n_embd, hp.n_patches, hp.n_pos
        inp = self.conv_2d(w("v.patch_embd.weight"), inp_raw, hp.patch_size)
        inp = ctx.cont(ctx.transpose(ctx.reshape_3d(inp, n_patches, n_embd, n_batch)))
        if hp.has_patch_bias:
            inp = self.cb(ctx.add(inp, w("v.patch_embd.bias")), "patch_bias")
        cls = ctx.repeat_4d(w("v.class_embd"), n_embd, 1, n_batch, 1)
        inp = ctx.concat(inp, cls, 1) if self.llamacpp else ctx.concat(cls, inp, 1)

        positions = ctx.input("i32", (n_pos,), "positions")
        self.inputs[positions] = np.arange(n_pos, dtype=np.int32)
        learned_pos = ctx.get_rows(w("v.position_embd.weight"), positions)
        cur = self.build_vit(inp, n_pos, self.vit_spec(), NORM_NORMAL, self.ffn_op(), learned_pos)

        # the patch features: rows 1..n_patches (with the class token first, these are exactly the patches)
        patches = ctx.input("i32", (n_patches, n_batch), "patches")
        self.inputs[patches] = np.tile(np.arange(1, n_patches + 1, dtype=np.int32), (n_batch, 1))
        cur = ctx.get_rows(cur, patches)

        cur = ctx.add(self.build_mm(w("mm.0.weight"), cur), w("mm.0.bias"))
        cur = ctx.gelu(cur) if self.llamacpp else ctx.gelu_erf(cur)
        cur = ctx.add(self.build_mm(w("mm.2.weight"), cur), w("mm.2.bias"))
        return self.cb(cur, self.output_name)

    def n_output_tokens(self) -> int:
        return self.hp.n_patches

    # --- batch API --------------------------------------------------------------------------------------------
    def image_shape(self) -> ImageShape:
        s = self.hp.image_size
        return ImageShape("image", s, s, self.n_output_tokens())

    def batch_shapes(self) -> list[ImageShape]:
        return [self.image_shape()]

    def build_batch(self, n_images: int, shape: ImageShape) -> BatchGraph:
        if shape != self.image_shape():
            raise ValueError(f"{self.projector} makes no chunks of shape {shape}")
        inp = self.ctx.input("f32", (shape.nx, shape.ny, 3, n_images), "inp_raw")
        outputs = self.batch_outputs(self.build_images(inp), self.ctx)
        return BatchGraph(Graph(outputs), inp, outputs, dict(self.inputs))

    def preprocess(self, image) -> np.ndarray:
        hp = self.hp
        return fixed_size_view(as_rgb_array(image), hp.image_size, self.mode, hp.pad_color)

    def image_chunks(self, image, *, source: str = "") -> list[ImageChunk]:
        """One chunk per image: the fixed-size view, normalised."""
        hp = self.hp
        pixels = normalize(self.preprocess(image), hp.image_mean, hp.image_std)
        return [ImageChunk(pixels, self.image_shape(), model_key(self.model), source=source)]
