"""DeepSeek-OCR v1 (`deepseekocr`): SAM ViT-B -> CLIP-L on SAM features -> linear projector, with the
newline weave done in the graph (llama.cpp `clip_graph_deepseekocr::build`).

A page is one graph: the whole tile grid as one batch (B = gw*gh, tile index = row*gw + col, llama.cpp's
multi-row batching with R = gh rows of gw tiles), then the 1024 global view; the two outputs are concatenated
in LLM order `[tile rows..., global, view separator]`.
"""

from __future__ import annotations

from npggml.graph.tensor import Tensor
from npggml.models.clip import FFN_GELU_QUICK, NORM_NORMAL, VitLayer, VitSpec
from npggml.models.page import PageBuilder
from npggml.models.sam import ANTIALIAS, BICUBIC

CLIP_EPS = 1e-5  # llama.cpp pins the v1 CLIP body to 1e-5 whatever the GGUF says


def n_output_tokens(grid: tuple[int, int] | None, *, global_side: int = 16, tile_side: int = 10) -> int:
    """Embeddings produced for a page: global rows of (side + newline) + separator, plus per stitched tile
    row (tile_side * gw + newline)."""
    n = global_side * (global_side + 1) + 1
    if grid is not None:
        gw, gh = grid
        n += gh * tile_side * (tile_side * gw + 1)
    return n


class DeepseekOCR(PageBuilder):
    projector = "deepseekocr"
    output_name = "dsocr_output"

    def vit_spec(self) -> VitSpec:
        hp = self.hp
        layers = [VitLayer.at(il, ln_1="ln1", qkv="attn_qkv", o="attn_out", ln_2="ln2", ff_up="ffn_up",
                              ff_down="ffn_down") for il in range(hp.n_layer)]
        return VitSpec(n_embd=hp.n_embd, n_head=hp.n_head, n_head_kv=hp.n_head, eps=CLIP_EPS, layers=layers,
                       pre_ln=("v.pre_ln.weight", "v.pre_ln.bias"))

    def position_table(self, side: int) -> Tensor:
        """The [n_embd, side*side + 1] position rows for a side x side patch grid (row 0 = CLS)."""
        ctx = self.ctx
        table = self.w("v.position_embd.weight")
        n_embd, n_pos = table.ne[0], table.ne[1]
        src = int((n_pos - 1) ** 0.5)
        if side == src:
            return table
        row = table.nb[1]
        if self.llamacpp:  # deepseekocr-llamacpp.md §8.1: reproduced as llama.cpp builds it
            old = ctx.view_2d(table, n_embd, src * src, row, 0)
            cls = ctx.view_2d(table, n_embd, 1, row, src * src)  # byte offset, as upstream passes it
            new = ctx.interpolate(old, side, side, n_embd, 1, BICUBIC)
            new = ctx.reshape_3d(new, n_embd, side * side, 1)
            return ctx.concat(new, cls, 1)
        cls = ctx.view_2d(table, n_embd, 1, row, 0)
        grid = ctx.reshape_3d(ctx.cont(ctx.view_2d(table, n_embd, src * src, row, row)), n_embd, src, src)
        grid = ctx.cont(ctx.permute(grid, 2, 0, 1, 3))
        grid = ctx.interpolate(grid, side, side, n_embd, 1, BICUBIC | ANTIALIAS)
        grid = ctx.cont(ctx.permute(grid, 1, 2, 0, 3))
        return ctx.concat(cls, ctx.reshape_2d(grid, n_embd, side * side), 1)

    def build_view(self, inp_raw: Tensor, overview: bool, n_cols: int, n_rows: int) -> Tensor:
        """inp_raw [S, S, 3, n_cols*n_rows] -> overview [n_embd, 273, B] or tiles [n_embd, (10n+1)*10, R]."""
        ctx, w = self.ctx, self.w
        n_batch = inp_raw.ne[3]
        sam_out = self.build_sam(inp_raw)
        side = sam_out.ne[0]
        n_patches = side * sam_out.ne[1]

        inp = ctx.reshape_3d(sam_out, n_patches, sam_out.ne[2], sam_out.ne[3])
        inp = ctx.cont(ctx.permute(inp, 1, 0, 2, 3))
        n_embd = inp.ne[0]
        pos_table = self.position_table(side)
        n_pos = pos_table.ne[1]
        cls = ctx.repeat_4d(w("v.class_embd"), n_embd, 1, n_batch, 1)
        inp = ctx.concat(cls, inp, 1)
        positions = ctx.cast(ctx.arange(0, n_pos, 1), "i32")
        learned_pos = ctx.get_rows(pos_table, positions)
        clip_out = self.build_vit(inp, n_pos, self.vit_spec(), NORM_NORMAL, FFN_GELU_QUICK, learned_pos)

        sam_feat = ctx.cont(ctx.permute(sam_out, 1, 2, 0, 3))
        sam_feat = ctx.reshape_3d(sam_feat, sam_feat.ne[0], n_patches, n_batch)
        clip_out = ctx.view_3d(clip_out, n_embd, n_patches, n_batch, clip_out.nb[1], clip_out.nb[2],
                               clip_out.nb[1])
        cur = ctx.concat(clip_out, sam_feat, 0)
        cur = ctx.add(ctx.mul_mat(w("mm.model.fc.weight"), cur), w("mm.model.fc.bias"))
        n_dim = cur.ne[0]

        newline = w("v.image_newline")
        if overview:
            h = wd = side
            nl = ctx.repeat_4d(newline, n_dim, 1, h, n_batch)
            cur = ctx.reshape_4d(cur, n_dim, wd, h, n_batch)
            cur = ctx.reshape_3d(ctx.concat(cur, nl, 1), n_dim, (wd + 1) * h, n_batch)
            sep = ctx.repeat_4d(w("v.view_seperator"), n_dim, 1, n_batch, 1)
            cur = ctx.concat(cur, sep, 1)
        else:
            g = side
            cur = ctx.reshape_4d(cur, n_dim * g, g, n_cols, n_rows)
            cur = ctx.cont(ctx.permute(cur, 0, 2, 1, 3))
            cur = ctx.reshape_4d(cur, n_dim, g * n_cols, g, n_rows)
            nl = ctx.repeat_4d(newline, n_dim, 1, g, n_rows)
            cur = ctx.concat(cur, nl, 1)
            cur = ctx.reshape_3d(cur, n_dim, (g * n_cols + 1) * g, n_rows)
        return self.cb(cur, self.output_name)

    def n_output_tokens(self, grid: tuple[int, int] | None) -> int:
        return n_output_tokens(grid, global_side=self.hp.image_size // 64, tile_side=self.hp.tile_size // 64)
