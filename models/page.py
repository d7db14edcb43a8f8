"""A page as one graph: the tile grid as one batch in ne3, then the global view, outputs in LLM order.

Model builders (v1, v2) subclass `PageBuilder` and provide `build_view(inp_raw, overview, n_cols, n_rows)`
and `n_output_tokens(grid)`; everything about how a page is laid out lives here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from npggml.graph.graph import Graph
from npggml.graph.tensor import Tensor
from npggml.models.sam import SamBuilder


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


class PageBuilder(SamBuilder):
    projector = ""
    fuse_rows = True  # v1 chunks tiles by row (llama.cpp fuse_row); v2 by tile

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
