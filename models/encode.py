"""The main job: a page image and an mmproj GGUF -> the embeddings llama.cpp feeds its LLM.

    enc = Encoder("mmproj.gguf", mode="llama.cpp")
    result = enc.encode("page.png")          # result.embeddings: (n_tokens, n_embd), LLM order

Modes: "reference" follows the HF / official model math with exact float32 kernels; "llama.cpp" reproduces
llama.cpp 0c1e57098 including its known deviations and ggml's CPU numerics.

Reserve once (`reserve=True`, the default): at the first encode the Encoder builds the worst-case page graph
(every grid with the model's `max_tiles` tiles), plans it and allocates one arena; every later page (any grid) and
every batch up to the reserved token budget is planned into that arena without a new allocation. A graph that
does not fit raises `ArenaError` naming both sizes, unless `grow=True` (then the arena is re-reserved and
`arena.allocations` counts it). `Encoder(..., batch_tokens=N)` or `reserve(batch_tokens=N)` adds the worst-case
batch of N tokens to the same single reservation.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from npggml import preprocess as pp
from npggml.errors import NpggmlError
from npggml.graph.alloc import Arena, ArenaError, Plan, memory_report, plan_graph
from npggml.graph.fuse import fuse as fuse_graph
from npggml.graph.graph import Graph
from npggml.graph.interp import Interpreter
from npggml.models import batch as mb
from npggml.models.clip import MODES
from npggml.models.gguf_io import Mmproj, load_mmproj
from npggml.models.page import PageBuilder, PageGraph, ViewInfo
from npggml.models.registry import builder_for

NUMERICS = {"reference": "exact", "llama.cpp": "ggml"}
PAGES_KEPT = 4  # built page graphs an Encoder keeps for the next encode of the same grid


@dataclass
class Encoding:
    embeddings: np.ndarray  # (n_tokens, n_embd) float32, LLM order
    grid: tuple[int, int] | None
    views: list[ViewInfo]
    preprocessed: pp.Views
    page: PageGraph
    timings: dict[str, float] = field(default_factory=dict)
    memory: dict[str, int] = field(default_factory=dict)  # MemoryReport.as_dict() + peak_rss_bytes

    def meta(self, model: str, mode: str) -> dict:
        v = self.preprocessed
        return {
            "model": model,
            "mode": mode,
            "image_size": list(v.image_size),
            "grid": list(self.grid) if self.grid else None,
            "n_tokens": int(self.embeddings.shape[0]),
            "n_embd": int(self.embeddings.shape[1]),
            "global_box": list(v.global_box),
            "views": [
                {"index": x.index, "kind": x.kind, "size": list(x.size), "n_images": x.n_images,
                 "tokens": list(x.tokens)}
                for x in self.views
            ],
            "timings": {k: round(s, 4) for k, s in self.timings.items()},
            "memory": dict(self.memory),
        }


def peak_rss_bytes() -> int:
    """The process's peak resident set size so far (getrusage; kilobytes on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


@dataclass(frozen=True)
class Reservation:
    """What the arena was reserved for: the worst-case graph of one workload and its high-water mark."""

    what: str  # "page" | "batch:<max_tokens>"
    detail: str  # the worst case, e.g. "grid 3x3" or "4 tile_row 640x1920 images"
    arena_bytes: int


class Encoder:
    def __init__(self, mmproj: Mmproj | str | Path, mode: str = "reference", *, fast: bool = True,
                 fuse: bool = True, reserve: bool = True, grow: bool = False, batch_tokens: int | None = None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.model = mmproj if isinstance(mmproj, Mmproj) else load_mmproj(mmproj)
        self.mode = mode
        self.fast = fast
        self.fuse = fuse
        self.whole = False  # True: no pass that computes a named value for some rows only (`npggml trace`)
        self.builder_cls = builder_for(self.model.projector)
        self.arena: Arena | None = Arena(grow=grow) if reserve else None
        self.batch_tokens = batch_tokens
        self.reservations: dict[str, Reservation] = {}
        self._pages: dict[tuple, PageGraph] = {}  # encode's built graphs, by (grid, mode, fuse, whole, fast)

    @property
    def numerics(self) -> str:
        return NUMERICS[self.mode]

    @property
    def pages(self) -> bool:
        """Whether the model encodes whole pages (DeepSeek-OCR: tile grid + global view in one graph)."""
        return issubclass(self.builder_cls, PageBuilder)

    def new_builder(self):
        return self.builder_cls(self.model, self.mode)

    def prepare(self, graph: Graph) -> Graph:
        """The graph as it will run: with fused ops unless `fuse=False`. With the reference kernels, or under ggml
        numerics (whose fast products are the reference's bits, as GELU's f16 table turns a last-bit change into
        an f16 step), only the passes that keep every value bit for bit."""
        if not self.fuse:
            return graph
        return fuse_graph(graph, same_bits=not self.fast or self.numerics == "ggml", whole=self.whole)

    # --- reserve once ------------------------------------------------------------------------------------------
    def worst_case_page(self) -> tuple[tuple[int, int] | None, Graph, int]:
        """(grid, graph, arena bytes) of the largest page: every grid with the most tiles is planned."""
        best = None
        for grid in self.new_builder().worst_case_grids():
            graph = self.build(grid).graph
            size = plan_graph(graph).size
            if best is None or size > best[2]:
                best = (grid, graph, size)
        return best

    def reserve(self, *, pages: bool | None = None, batch_tokens: int | None = None) -> list[Reservation]:
        """Plan the worst-case graphs and allocate the arena once for the largest of them: the max-tiles page
        (page models, unless `pages=False`) and the largest batch for each token budget (`batch_tokens` and the
        Encoder's own). Workloads reserved before are skipped; the arena only grows if a new one needs more."""
        if self.arena is None:
            raise NpggmlError("this Encoder was made with reserve=False: it has no arena")
        pages = self.pages and (pages is None or pages)
        todo: list[tuple[Reservation, Graph]] = []
        if pages and "page" not in self.reservations:
            grid, graph, size = self.worst_case_page()
            detail = f"grid {grid[0]}x{grid[1]}" if grid else "no tiles"
            todo.append((Reservation("page", detail, size), graph))
        for tokens in sorted({t for t in (self.batch_tokens, batch_tokens) if t is not None}):
            if f"batch:{tokens}" not in self.reservations:
                wc = mb.worst_case_batch(self.new_builder, tokens, self.prepare)
                detail = f"{wc.n_images} {wc.shape.kind} {wc.shape.nx}x{wc.shape.ny} images"
                todo.append((Reservation(f"batch:{tokens}", detail, wc.arena_bytes), wc.graph))
        if todo:
            _, worst = max(todo, key=lambda rg: rg[0].arena_bytes)
            self.arena.reserve(worst)  # one allocation for the largest (none if the arena is already larger)
            self.reservations.update({r.what: r for r, _ in todo})
        return list(self.reservations.values())

    def reserve_batch(self, max_tokens: int) -> None:
        """Called by `Batch`: make sure the arena holds the worst-case batch of `max_tokens` (the first reserve
        also covers pages and the Encoder's own `batch_tokens`, in the same single allocation)."""
        if self.arena is not None:
            self.reserve(pages=None if not self.reservations else False, batch_tokens=max_tokens)

    def plan(self, graph: Graph, what: str = "graph") -> Plan | None:
        """Plan `graph` into the reserved arena (None without one: buffers are then allocated per tensor)."""
        if self.arena is None:
            return None
        if not self.reservations:
            self.reserve()
        if not self.reservations:  # nothing to reserve for (no pages, no batch budget): the first graph is it
            self.arena.reserve(graph)
            self.reservations["first"] = Reservation("first", what, self.arena.nbytes)
        try:
            return self.arena.plan(graph)
        except ArenaError as e:
            reserved = ", ".join(f"{r.what} ({r.detail})" for r in self.reservations.values())
            raise ArenaError(f"{what}: {e}; the arena was reserved for {reserved}") from None

    def memory(self, grid: tuple[int, int] | None) -> dict[str, int]:
        """Arena / peak / weight bytes of the page graph for `grid`, planned without running it."""
        if not self.pages:
            raise NpggmlError(f"{self.model.projector} has no page graphs; use worst_case_batch for batches")
        graph = self.build(grid).graph
        plan = self.plan(graph, f"grid {grid}") if self.arena is not None else None
        return memory_report(graph, plan, self.arena).as_dict()

    # --- chunks and batches -----------------------------------------------------------------------------------
    def chunks(self, image, **options) -> list[mb.ImageChunk]:
        """An image preprocessed into the model's chunks, in LLM order (positions start at 0)."""
        return self.new_builder().image_chunks(image, **options)

    def batch(self, max_tokens: int = mb.DEFAULT_MAX_TOKENS) -> mb.Batch:
        return mb.Batch(self, max_tokens)

    def _need_pages(self) -> None:
        if not self.pages:
            raise NpggmlError(f"projector {self.model.projector!r} has no page pipeline: encode its images with "
                              "Encoder.chunks() and a Batch (npggml.models.batch)")

    def preprocess(self, image, *, no_tiles: bool = False) -> pp.Views:
        self._need_pages()
        hp = self.model.hparams
        return pp.preprocess(image, self.model.projector, self.mode, hp.min_tiles, hp.max_tiles, no_tiles=no_tiles)

    def build(self, grid: tuple[int, int] | None) -> PageGraph:
        self._need_pages()
        page = self.new_builder().build_page(grid)
        page.graph = self.prepare(page.graph)
        return page

    def _page(self, grid: tuple[int, int] | None) -> PageGraph:
        """`build(grid)` for encode, kept for the next page of the same grid (building and fusing a full-size page
        takes ~0.1 s); the last PAGES_KEPT grids are kept, keyed by what the graph depends on (`mode`, `fuse`,
        `whole` and `fast` are public attributes a caller may change between encodes)."""
        key = (grid, self.mode, self.fuse, self.whole, self.fast)
        page = self._pages.pop(key, None) or self.build(grid)
        self._pages[key] = page
        while len(self._pages) > PAGES_KEPT:
            self._pages.pop(next(iter(self._pages)))
        return page

    def pixel_inputs(self, page: PageGraph, views: pp.Views) -> dict:
        hp = self.model.hparams
        values = dict(page.inputs)

        def planar(u8):
            return pp.normalize(u8, hp.image_mean, hp.image_std)

        if "tiles" in page.pixels:
            values[page.pixels["tiles"]] = np.stack([planar(t) for t in views.tiles])
        values[page.pixels["global"]] = planar(views.global_view)[None]
        return values

    def encode(self, image, *, no_tiles: bool = False, ask=None, observe=None,
               views: pp.Views | None = None, progress=None) -> Encoding:
        """`ask`/`observe` are the interpreter's eval-callback hooks; `progress(i, n)` is called before each
        node when no `ask` hook is given."""
        times = {}
        t0 = time.perf_counter()
        if views is None:
            views = self.preprocess(image, no_tiles=no_tiles)
        t1 = time.perf_counter()
        page = self._page(views.grid)
        tb = time.perf_counter()
        plan = self.plan(page.graph, f"page with grid {views.grid}")  # the first call reserves the arena
        t2 = time.perf_counter()
        interp = Interpreter(page.graph, plan=plan, numerics=self.numerics, fast=self.fast)
        if ask is None and progress is not None:
            ask = _progress_hook(progress, len(page.graph.nodes))
        (emb,) = interp.run(self.pixel_inputs(page, views), ask=ask, observe=observe)
        t3 = time.perf_counter()
        times.update(preprocess=t1 - t0, build=tb - t1, plan=t2 - tb, compute=t3 - t2)
        emb = emb.reshape(page.embeddings.ne[1], page.embeddings.ne[0])
        memory = memory_report(page.graph, plan, self.arena).as_dict()
        memory["peak_rss_bytes"] = peak_rss_bytes()
        enc = Encoding(emb, views.grid, page.views, views, page, times, memory)
        enc.interpreter = interp
        return enc


def _progress_hook(progress, n: int):
    count = iter(range(1, n + 1))

    def ask(node) -> bool:
        progress(next(count), n)
        return False

    return ask
