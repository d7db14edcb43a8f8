"""DeepSeek-OCR 2 (`deepseekocr2`): SAM ViT-B -> Qwen2-style encoder with learned queries -> linear projector
(llama.cpp `clip_graph_deepseekocr2::build`).

The image tokens are followed by as many learned queries (144 for a 768 tile, 256 for the 1024 global view);
positions run 0..2n-1; the hybrid mask lets image tokens see all image tokens and query i see all image tokens
and queries 0..i. Only the query outputs are kept. Tiles are a batch of B = gw*gh; no newlines anywhere.
"""

from __future__ import annotations

import numpy as np

from npggml.errors import GGUFError
from npggml.graph.tensor import Tensor
from npggml.models.clip import FFN_SILU, NORM_RMS, VitLayer, VitSpec
from npggml.models.page import PageBuilder

ROPE_NEOX = 2
ROPE_THETA, ROPE_CTX_ORIG = 1_000_000.0, 131072
MASKED = -1e9  # llama.cpp's value; exp underflows to 0 as for -inf


def hybrid_mask(n_img: int, n_query: int) -> np.ndarray:
    """F32 [S, S] in ggml order (NumPy [query row i, key column j]): 0 where i may attend to j."""
    s = n_img + n_query
    i = np.arange(s)[:, None]
    j = np.arange(s)[None, :]
    allowed = (j < n_img) | ((i >= n_img) & (j <= i))
    return np.where(allowed, 0.0, MASKED).astype(np.float32)


def n_output_tokens(grid: tuple[int, int] | None, *, n_tile: int = 144, n_global: int = 256) -> int:
    return n_global + 1 + (grid[0] * grid[1] * n_tile if grid is not None else 0)


class DeepseekOCR2(PageBuilder):
    projector = "deepseekocr2"
    output_name = "dsocr2_output"
    fuse_rows = False

    def vit_spec(self) -> VitSpec:
        hp = self.hp
        layers = [VitLayer.at(il, {"q", "k", "v"}, ln_1="ln1", q="attn_q", k="attn_k", v="attn_v", o="attn_out",
                              ln_2="ln2", ff_gate="ffn_gate", ff_up="ffn_up", ff_down="ffn_down")
                  for il in range(hp.n_layer)]
        return VitSpec(n_embd=hp.n_embd, n_head=hp.n_head, n_head_kv=hp.n_head_kv, eps=hp.eps, layers=layers,
                       post_ln=("v.post_ln.weight", None))

    def queries(self, n_img: int) -> Tensor:
        hp = self.hp
        by_count = {hp.n_queries_tile: "v.resample_query_768.weight",
                    hp.n_queries_global: "v.resample_query_1024.weight"}
        if n_img not in by_count:
            raise GGUFError(f"{self.model.path}: DeepSeek-OCR 2 has learned queries for {sorted(by_count)} image "
                            f"tokens only, got {n_img}")
        return self.w(by_count[n_img])

    def build_view(self, inp_raw: Tensor, overview: bool, n_cols: int, n_rows: int) -> Tensor:
        ctx, w = self.ctx, self.w
        sam_out = self.build_sam(inp_raw)
        inp = ctx.reshape_3d(sam_out, sam_out.ne[0] * sam_out.ne[1], sam_out.ne[2], sam_out.ne[3])
        inp = ctx.cont(ctx.permute(inp, 1, 0, 2, 3))
        n_img, n_batch = inp.ne[1], inp.ne[2]

        query = ctx.cast(self.queries(n_img), "f32")
        n_query = query.ne[1]
        query = ctx.repeat_4d(query, query.ne[0], n_query, n_batch, 1)
        inp = ctx.concat(inp, query, 1)
        seq = inp.ne[1]

        mask = ctx.input("f32", (seq, seq), "qwen2_attn_mask")
        self.inputs[mask] = hybrid_mask(n_img, n_query)
        pos = ctx.cast(ctx.arange(0, seq, 1), "i32")
        spec = self.vit_spec()
        d_head = spec.n_embd // spec.n_head

        def add_rope(x: Tensor) -> Tensor:
            return ctx.rope_ext(x, pos, None, d_head, ROPE_NEOX, ROPE_CTX_ORIG, ROPE_THETA, 1.0, 0.0, 1.0, 0.0,
                                0.0)

        cur = self.build_vit(inp, seq, spec, NORM_RMS, FFN_SILU, None, add_rope, mask)
        cur = ctx.cont(ctx.view_3d(cur, cur.ne[0], n_query, cur.ne[2], cur.nb[1], cur.nb[2],
                                   cur.nb[1] * (cur.ne[1] - n_query)))
        cur = ctx.add(ctx.mul_mat(w("mm.model.fc.weight"), cur), w("mm.model.fc.bias"))
        if overview:
            sep = w("v.view_seperator")
            cur = ctx.concat(cur, ctx.repeat_4d(sep, sep.ne[0], 1, cur.ne[2], 1), 1)
        return self.cb(cur, self.output_name)

    def n_output_tokens(self, grid: tuple[int, int] | None) -> int:
        return n_output_tokens(grid, n_tile=self.hp.n_queries_tile, n_global=self.hp.n_queries_global)
