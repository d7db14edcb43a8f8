"""The main job: a page image and an mmproj GGUF -> the embeddings llama.cpp feeds its LLM.

    enc = Encoder("mmproj.gguf", mode="llama.cpp")
    result = enc.encode("page.png")          # result.embeddings: (n_tokens, n_embd), LLM order

Modes: "reference" follows the HF / official model math with exact float32 kernels; "llama.cpp" reproduces
llama.cpp 0c1e57098 including its known deviations and ggml's CPU numerics.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from npggml import preprocess as pp
from npggml.graph.interp import Interpreter
from npggml.models.clip import MODES
from npggml.models.gguf_io import Mmproj, load_mmproj
from npggml.models.page import PageGraph, ViewInfo
from npggml.models.registry import builder_for

NUMERICS = {"reference": "exact", "llama.cpp": "ggml"}


@dataclass
class Encoding:
    embeddings: np.ndarray  # (n_tokens, n_embd) float32, LLM order
    grid: tuple[int, int] | None
    views: list[ViewInfo]
    preprocessed: pp.Views
    page: PageGraph
    timings: dict[str, float] = field(default_factory=dict)

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
        }


class Encoder:
    def __init__(self, mmproj: Mmproj | str | Path, mode: str = "reference", *, fast: bool = True):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.model = mmproj if isinstance(mmproj, Mmproj) else load_mmproj(mmproj)
        self.mode = mode
        self.fast = fast
        self.builder_cls = builder_for(self.model.projector)

    def preprocess(self, image, *, no_tiles: bool = False) -> pp.Views:
        hp = self.model.hparams
        return pp.preprocess(image, self.model.projector, self.mode, hp.min_tiles, hp.max_tiles, no_tiles=no_tiles)

    def build(self, grid: tuple[int, int] | None) -> PageGraph:
        return self.builder_cls(self.model, self.mode).build_page(grid)

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
        page = self.build(views.grid)
        t2 = time.perf_counter()
        interp = Interpreter(page.graph, numerics=NUMERICS[self.mode], fast=self.fast)
        if ask is None and progress is not None:
            ask = _progress_hook(progress, len(page.graph.nodes))
        (emb,) = interp.run(self.pixel_inputs(page, views), ask=ask, observe=observe)
        t3 = time.perf_counter()
        times.update(preprocess=t1 - t0, build=t2 - t1, compute=t3 - t2)
        emb = emb.reshape(page.embeddings.ne[1], page.embeddings.ne[0])
        enc = Encoding(emb, views.grid, page.views, views, page, times)
        enc.interpreter = interp
        return enc


def _progress_hook(progress, n: int):
    count = iter(range(1, n + 1))

    def ask(node) -> bool:
        progress(next(count), n)
        return False

    return ask
