"""Model-agnostic chunks and batches (llama.cpp `mtmd_batch_*`, PR #24384), with reserve-once.

A prompt is a list of chunks. A `TextChunk` holds token ids; an `ImageChunk` holds one encoder input (planar
float32 pixels of size nx x ny), its output token count, the model it belongs to and its shape key. Positions run
through the prompt (`assign_positions`): every chunk starts where the previous one ended, and for the position
type these models use (mtmd's `MTMD_POS_TYPE_NORMAL`, the layout of every non-M-RoPE model) an image chunk
advances positions by its token count, exactly as a text chunk does by its token count.

A `Batch` collects image chunks of one model and encodes them as **one graph** with the images in the batch
dimension (ne3 of the pixel input). `add(chunk)` answers like `mtmd_batch_add_chunk`:

- `OK`: added (the first chunk is always accepted);
- `FULL`: adding it would exceed `max_tokens` (output tokens of the whole batch), or the model does not
  support batching and the batch already holds a chunk;
- `INCOMPATIBLE`: another model, another image kind or size, or another positions layout.

Models opt in through the builder interface `BatchSupport` (below); nothing here knows any model. The Encoder
owns the arena: a batch is planned into it, and `worst_case_batch` gives the graph to reserve for a token budget.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from npggml.errors import NpggmlError
from npggml.graph.alloc import plan_graph
from npggml.graph.graph import Graph
from npggml.graph.interp import Interpreter
from npggml.graph.tensor import Tensor

POS_NORMAL = "normal"  # one position per token (mtmd MTMD_POS_TYPE_NORMAL)
DEFAULT_MAX_TOKENS = 1024  # mtmd's default batch_max_tokens


class AddResult(enum.IntEnum):
    """`mtmd_batch_add_chunk` return codes (1, a generic error, is raised as an exception here)."""

    OK = 0
    FULL = 2
    INCOMPATIBLE = 3


class ImageShape(NamedTuple):
    """What makes two image chunks batchable: the builder's image kind, the input size and the token count."""

    kind: str  # builder-defined, e.g. "image", "tile", "tile_row", "global"
    nx: int
    ny: int
    n_tokens: int


def model_key(model) -> str:
    """Identity of a loaded mmproj for chunk compatibility: projector type and absolute file path."""
    return f"{model.projector}:{os.path.abspath(model.path)}"


@dataclass(frozen=True, eq=False)
class TextChunk:
    tokens: tuple[int, ...]
    pos: int = 0  # position of the first token

    def __post_init__(self):
        object.__setattr__(self, "tokens", tuple(int(t) for t in self.tokens))

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def n_pos(self) -> int:
        return len(self.tokens)

    @property
    def positions(self) -> range:
        return range(self.pos, self.pos + self.n_pos)


@dataclass(frozen=True, eq=False)
class ImageChunk:
    """One encoder input. Chunks are compared by identity (like mtmd's chunk pointers)."""

    pixels: np.ndarray  # float32 (3, ny, nx): normalised planar pixels, ggml ne [nx, ny, 3]
    shape: ImageShape
    model: str  # `model_key` of the mmproj it was made for
    pos: int = 0
    pos_type: str = POS_NORMAL
    source: str = ""  # optional id of the source image
    index: int = 0  # chunk index within its source image

    def __post_init__(self):
        want = (3, self.shape.ny, self.shape.nx)
        if tuple(self.pixels.shape) != want:
            raise NpggmlError(f"image chunk {self.shape.kind}: pixels have shape {tuple(self.pixels.shape)}, "
                              f"expected {want} (3, ny, nx)")

    @property
    def size(self) -> tuple[int, int]:
        return self.shape.nx, self.shape.ny

    @property
    def n_tokens(self) -> int:
        return self.shape.n_tokens

    @property
    def n_pos(self) -> int:
        if self.pos_type != POS_NORMAL:
            raise NpggmlError(f"positions layout {self.pos_type!r} is not supported (only {POS_NORMAL!r})")
        return self.shape.n_tokens

    @property
    def positions(self) -> range:
        return range(self.pos, self.pos + self.n_pos)

    def can_batch_with(self, other: ImageChunk) -> bool:
        return (self.model, self.shape, self.pos_type) == (other.model, other.shape, other.pos_type)


Chunk = TextChunk | ImageChunk


def assign_positions(chunks: Iterable[Chunk], start: int = 0) -> list[Chunk]:
    """Copies of `chunks` whose positions run through the prompt from `start`."""
    out, pos = [], start
    for c in chunks:
        c = dataclasses.replace(c, pos=pos)
        out.append(c)
        pos += c.n_pos
    return out


def tokenize(encoder, parts: Iterable[Any], start: int = 0) -> list[Chunk]:
    """A prompt in order -> chunks with positions. A part is a `TextChunk` (token ids; npggml has no
    tokenizer), an `ImageChunk`, or an image (path, PIL image, uint8 array) that the model splits into chunks."""
    chunks: list[Chunk] = []
    for part in parts:
        if isinstance(part, (TextChunk, ImageChunk)):
            chunks.append(part)
        else:
            chunks.extend(encoder.chunks(part))
    return assign_positions(chunks, start)


@dataclass
class BatchGraph:
    """What a builder returns for a batch: one graph, its pixel input, one output view per image."""

    graph: Graph
    pixels: Tensor  # f32 [nx, ny, 3, n_images]
    outputs: list[Tensor]  # per image: [n_embd, n_tokens] views into the batched output
    inputs: dict[Tensor, np.ndarray]  # other inputs whose values the builder knows


class BatchSupport:
    """The builder interface a model implements to take part in batching (llama.cpp `support_batch()`).

    - `support_batch`: whether several images may share one graph (otherwise a batch holds one chunk);
    - `pos_type`: the positions layout of its image chunks;
    - `batch_shapes()`: every `ImageShape` its chunks can have (the worst-case reserve plans each);
    - `build_batch(n_images, shape)`: a `BatchGraph` for `n_images` images of that shape in ne3;
    - `image_chunks(image, **options)`: an image preprocessed into chunks, in the model's LLM order.
    """

    support_batch = False
    pos_type = POS_NORMAL

    def batch_shapes(self) -> list[ImageShape]:
        raise NotImplementedError(f"{type(self).__name__} does not define batch_shapes()")

    def build_batch(self, n_images: int, shape: ImageShape) -> BatchGraph:
        raise NotImplementedError(f"{type(self).__name__} does not define build_batch()")

    def image_chunks(self, image, **options) -> list[ImageChunk]:
        raise NotImplementedError(f"{type(self).__name__} does not define image_chunks()")

    @staticmethod
    def batch_outputs(out: Tensor, ctx) -> list[Tensor]:
        """Per-image [n_embd, n_tokens] views of a batched [n_embd, n_tokens, n_images] output."""
        return [ctx.view_2d(out, out.ne[0], out.ne[1], out.nb[1], i * out.nb[2]).set_name(f"image_out-{i}")
                for i in range(out.ne[2])]


def max_images(shape: ImageShape, max_tokens: int, support_batch: bool = True) -> int:
    """How many images of `shape` a batch of `max_tokens` holds (at least one, as mtmd always takes the first)."""
    if not support_batch:
        return 1
    return max(1, max_tokens // shape.n_tokens)


@dataclass(frozen=True)
class WorstCase:
    shape: ImageShape
    n_images: int
    arena_bytes: int
    graph: Graph


def worst_case_batch(new_builder, max_tokens: int, prepare=None) -> WorstCase:
    """The batch graph with the largest arena among every shape the model produces, each at the most images
    `max_tokens` allows. Graphs are built (and passed through `prepare`, e.g. op fusion) and planned, never run."""
    best = None
    for shape in new_builder().batch_shapes():
        b = new_builder()
        bg = b.build_batch(max_images(shape, max_tokens, b.support_batch), shape)
        graph = prepare(bg.graph) if prepare is not None else bg.graph
        size = plan_graph(graph).size
        if best is None or size > best.arena_bytes:
            best = WorstCase(shape, bg.pixels.ne[3], size, graph)
    if best is None:
        raise NpggmlError("the model declares no batch shapes")
    return best


class Batch:
    """Image chunks of one model encoded as one graph. `encoder` is an `npggml.models.encode.Encoder` (anything
    with `model`, `new_builder()`, `prepare(graph)`, `plan(graph, what)`, `numerics`, `fast` and
    `reserve_batch(max_tokens)`)."""

    def __init__(self, encoder, max_tokens: int = DEFAULT_MAX_TOKENS):
        if max_tokens < 1:
            raise NpggmlError(f"max_tokens must be positive, got {max_tokens}")
        self.encoder = encoder
        self.max_tokens = int(max_tokens)
        self.model = model_key(encoder.model)
        self.support_batch = bool(encoder.new_builder().support_batch)
        self.chunks: list[ImageChunk] = []
        self.built: BatchGraph | None = None
        self.plan = None
        self._outputs: list[np.ndarray] | None = None
        encoder.reserve_batch(self.max_tokens)

    @property
    def n_tokens(self) -> int:
        return sum(c.n_tokens for c in self.chunks)

    def __len__(self) -> int:
        return len(self.chunks)

    def add(self, chunk: ImageChunk) -> AddResult:
        if not isinstance(chunk, ImageChunk):
            raise NpggmlError(f"only image chunks can be batched, got {type(chunk).__name__}")
        if chunk.model != self.model:
            return AddResult.INCOMPATIBLE
        if any(c is chunk for c in self.chunks):
            raise NpggmlError("this chunk is already in the batch")
        if not self.chunks:
            self._append(chunk)
            return AddResult.OK
        if not self.support_batch or self.n_tokens + chunk.n_tokens > self.max_tokens:
            return AddResult.FULL
        if not self.chunks[0].can_batch_with(chunk):
            return AddResult.INCOMPATIBLE
        self._append(chunk)
        return AddResult.OK

    def _append(self, chunk: ImageChunk) -> None:
        self.chunks.append(chunk)
        self._outputs = None

    def encode(self) -> None:
        """Run one graph over every chunk of the batch (pixels in ne3, in the order they were added)."""
        if not self.chunks:
            raise NpggmlError("the batch is empty")
        shape = self.chunks[0].shape
        bg = self.encoder.new_builder().build_batch(len(self.chunks), shape)
        bg.graph = self.encoder.prepare(bg.graph)
        what = f"batch of {len(self.chunks)} {shape.kind} {shape.nx}x{shape.ny} images"
        self.plan = self.encoder.plan(bg.graph, what)
        members = {id(t) for t in bg.graph.leafs}
        values = {t: v for t, v in bg.inputs.items() if id(t) in members}
        values[bg.pixels] = np.stack([c.pixels for c in self.chunks])
        interp = Interpreter(bg.graph, plan=self.plan, numerics=self.encoder.numerics, fast=self.encoder.fast)
        outs = interp.run(values)
        self.built = bg
        self._outputs = [o.reshape(t.ne[1], t.ne[0]) for o, t in zip(outs, bg.outputs)]

    def output(self, chunk: ImageChunk) -> np.ndarray:
        """The chunk's embeddings, (n_tokens, n_embd) float32 (`mtmd_batch_get_output_embd`)."""
        if self._outputs is None:
            raise NpggmlError("the batch has not been encoded yet (call encode())")
        for c, out in zip(self.chunks, self._outputs):
            if c is chunk:
                return out
        raise NpggmlError("this chunk is not in the batch")


def encode_chunks(encoder, chunks: Iterable[Chunk], max_tokens: int = DEFAULT_MAX_TOKENS) -> dict[int, np.ndarray]:
    """Encode every image chunk of a prompt greedily in batches, as llama-server does: a chunk that does not
    fit (FULL or INCOMPATIBLE) closes the current batch. Returns id(chunk) -> embeddings."""
    out: dict[int, np.ndarray] = {}
    batch = Batch(encoder, max_tokens)

    def flush():
        nonlocal batch
        if len(batch):
            batch.encode()
            out.update({id(c): batch.output(c) for c in batch.chunks})
            batch = Batch(encoder, max_tokens)

    for c in chunks:
        if isinstance(c, TextChunk):
            continue
        if batch.add(c) is not AddResult.OK:
            flush()
            if batch.add(c) is not AddResult.OK:
                raise NpggmlError(f"chunk {c.shape} cannot be encoded with this model ({batch.model})")
    flush()
    return out
