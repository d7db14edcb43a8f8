"""A page as one graph: the tile grid as one batch in ne3, then the global view, outputs in LLM order.

Model builders (v1, v2) subclass `PageBuilder` and provide `build_view(inp_raw, overview, n_cols, n_rows)`
and `n_output_tokens(grid)`; everything about how a page is laid out lives here.

Chunks (the batch API of `npggml.models.batch`), as llama.cpp's mtmd makes them:
- v1 (`fuse_rows`): one chunk per **row of tiles**, a fused image of width `tile` and height `tile * n_cols`
  (tile column c at rows c*tile..). The newline weave runs along a whole row, so a single tile is not a
  self-contained chunk; a row is (llama.cpp #24717). A batch of R rows with the same column count is the input
  `[tile, tile*n, 3, R]`, split in the graph into the `n*R` tiles (§3.2.1) and woven back per row.
- v2: one chunk per tile (no newlines: every tile is independent).
- both: the global view is its own chunk (the view separator closes it), after the tiles. Global views of
  several pages batch together; they never batch with tiles (another size and kind).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from npggml import preprocess as pp
from npggml.graph.graph import Graph
from npggml.graph.tensor import Tensor
from npggml.models.batch import BatchGraph, BatchSupport, ImageChunk, ImageShape, model_key
from npggml.models.sam import SamBuilder
from npggml.preprocess.grid import candidates


@dataclass
class ViewInfo:
    """One view as llama.cpp chunks it: a v1 tile row, a v2 tile, or the global view."""

    index: int
    kind: str  # "tile_row" | "tile" | "global"
    size: tuple[int, int]  # (w, h) of each image in the view
    n_images: int
    tokens: tuple[int, int]  # [start, end) in the page's embeddings
    group: str  # subgraph it is computed in: "tiles" | "global"
    batch: tuple[int, int]  # [start, end) of its images along that subgraph's batch dim


@dataclass
class PageGraph:
    graph: Graph
    embeddings: Tensor  # [n_embd, n_tokens]
    pixels: dict[str, Tensor]  # "tiles" -> [T, T, 3, gw*gh], "global" -> [S, S, 3, 1]
    inputs: dict[Tensor, np.ndarray]  # inputs whose values the builder knows (indices, masks)
    grid: tuple[int, int] | None
    views: list[ViewInfo] = field(default_factory=list)
    groups: dict[int, str] = field(default_factory=dict)  # id(node) -> "tiles" | "global" | "page"


class PageBuilder(SamBuilder, BatchSupport):
    projector = ""
    fuse_rows = True  # v1 chunks tiles by row (llama.cpp fuse_row); v2 by tile
    support_batch = True  # llama.cpp: clip_graph_deepseekocr(2)::support_batch()

    def build_view(self, inp_raw: Tensor, overview: bool, n_cols: int, n_rows: int) -> Tensor:
        raise NotImplementedError

    def n_output_tokens(self, grid: tuple[int, int] | None) -> int:
        raise NotImplementedError

    def build_page(self, grid: tuple[int, int] | None) -> PageGraph:
        ctx, hp = self.ctx, self.hp
        pixels, parts, groups = {}, [], {}
        if grid is not None:
            gw, gh = grid
            t = hp.tile_size
            pixels["tiles"] = ctx.input("f32", (t, t, 3, gw * gh), "inp_raw")
            out = self.build_view(pixels["tiles"], False, gw, gh)
            groups.update({id(n): "tiles" for n in Graph(out).nodes})
            parts.append(ctx.reshape_2d(out, out.ne[0], out.ne[1] * out.ne[2]))
        s = hp.image_size
        pixels["global"] = ctx.input("f32", (s, s, 3, 1), "inp_raw")
        out = self.build_view(pixels["global"], True, 1, 1)
        groups.update({id(n): "global" for n in Graph(out).nodes})
        parts.append(ctx.reshape_2d(out, out.ne[0], out.ne[1] * out.ne[2]))
        emb = self.cb(parts[0] if len(parts) == 1 else ctx.concat(parts[0], parts[1], 1), "embeddings")
        graph = Graph(emb)
        for n in graph.nodes:
            groups.setdefault(id(n), "page")
        page = PageGraph(graph, emb, pixels, dict(self.inputs), grid, self.view_layout(grid), groups)
        assert emb.ne[1] == self.n_output_tokens(grid), (emb.ne, self.n_output_tokens(grid))
        return page

    def view_layout(self, grid: tuple[int, int] | None) -> list[ViewInfo]:
        views, start = [], 0
        hp = self.hp
        if grid is not None:
            gw, gh = grid
            per_tile = self.n_output_tokens((1, 1)) - self.n_output_tokens(None)
            if self.fuse_rows:
                row_tokens = (self.n_output_tokens((gw, 1)) - self.n_output_tokens(None))
                for r in range(gh):
                    views.append(ViewInfo(r, "tile_row", (hp.tile_size, hp.tile_size), gw,
                                          (start, start + row_tokens), "tiles", (r * gw, (r + 1) * gw)))
                    start += row_tokens
            else:
                for k in range(gw * gh):
                    views.append(ViewInfo(k, "tile", (hp.tile_size, hp.tile_size), 1,
                                          (start, start + per_tile), "tiles", (k, k + 1)))
                    start += per_tile
        n_global = self.n_output_tokens(None)
        views.append(ViewInfo(len(views), "global", (hp.image_size, hp.image_size), 1,
                              (start, start + n_global), "global", (0, 1)))
        return views

    # --- reserve once: the worst-case page ------------------------------------------------------------------
    def worst_case_grids(self) -> list[tuple[int, int]]:
        """The candidate grids with the most tiles (max_tiles): the pages the arena is reserved for."""
        grids = candidates(self.hp.min_tiles, self.hp.max_tiles, self.mode)
        most = max(gw * gh for gw, gh in grids)
        return [g for g in grids if g[0] * g[1] == most]

    # --- batch API -------------------------------------------------------------------------------------------
    def global_shape(self) -> ImageShape:
        s = self.hp.image_size
        return ImageShape("global", s, s, self.n_output_tokens(None))

    def tile_shape(self, n_cols: int = 1) -> ImageShape:
        """A v1 tile row of `n_cols` tiles (fused, tile x tile*n_cols) or a v2 tile."""
        t = self.hp.tile_size
        if self.fuse_rows:
            n_tokens = self.n_output_tokens((n_cols, 1)) - self.n_output_tokens(None)
            return ImageShape("tile_row", t, t * n_cols, n_tokens)
        return ImageShape("tile", t, t, self.n_output_tokens((1, 1)) - self.n_output_tokens(None))

    def batch_shapes(self) -> list[ImageShape]:
        if self.fuse_rows:
            return [*(self.tile_shape(n) for n in range(1, self.hp.max_tiles + 1)), self.global_shape()]
        return [self.tile_shape(), self.global_shape()]

    def build_batch(self, n_images: int, shape: ImageShape) -> BatchGraph:
        ctx, t = self.ctx, self.hp.tile_size
        if shape not in self.batch_shapes():
            raise ValueError(f"{self.projector} makes no chunks of shape {shape}")
        inp = ctx.input("f32", (shape.nx, shape.ny, 3, n_images), "inp_raw")
        if shape.kind == "global":
            out = self.build_view(inp, True, 1, 1)
        elif shape.kind == "tile_row":  # [t, t*n, 3, R] -> [t, t, 3, n*R], tile index = row*n + col
            n = shape.ny // shape.nx
            x = ctx.reshape_4d(inp, t * t, n, 3, n_images)
            x = ctx.cont(ctx.permute(x, 0, 2, 1, 3))
            out = self.build_view(ctx.reshape_4d(x, t, t, 3, n * n_images), False, n, n_images)
        else:
            out = self.build_view(inp, False, 1, n_images)
        outputs = self.batch_outputs(out, ctx)
        return BatchGraph(Graph(outputs), inp, outputs, dict(self.inputs))

    def image_chunks(self, image, *, no_tiles: bool = False, views: pp.Views | None = None,
                     source: str = "") -> list[ImageChunk]:
        """A page as llama.cpp chunks it: tile rows (v1) or tiles (v2), row-major, then the global view."""
        hp = self.hp
        if views is None:
            views = pp.preprocess(image, self.projector, self.mode, hp.min_tiles, hp.max_tiles, no_tiles=no_tiles)
        key = model_key(self.model)
        local = views.tile_rows() if self.fuse_rows else list(views.tiles)
        shape = self.tile_shape(views.grid[0]) if (views.grid and self.fuse_rows) else self.tile_shape()
        shapes = [shape] * len(local) + [self.global_shape()]
        return [ImageChunk(pp.normalize(u8, hp.image_mean, hp.image_std), sh, key, source=source, index=i)
                for i, (u8, sh) in enumerate(zip([*local, views.global_view], shapes))]
