"""The batch API and reserve-once: add() results, chunk positions, batched == one by one (tiny LLaVA), planner
invariants on real model graphs, and every DeepSeek grid planned into one reserved arena."""

import types

import numpy as np
import pytest
from fixtures_paths import MODELS
from hypothesis import given, settings
from hypothesis import strategies as st

from npggml.graph.alloc import ArenaError, memory_report, plan_graph
from npggml.models.batch import (
    AddResult,
    Batch,
    ImageChunk,
    ImageShape,
    TextChunk,
    assign_positions,
    encode_chunks,
    model_key,
    tokenize,
)
from npggml.models.encode import Encoder
from npggml.models.gguf_synth import make_mmproj
from npggml.preprocess.grid import candidates

DSOCR = {"v1": MODELS / "mmproj-tiny-dsocr-f32.gguf", "v2": MODELS / "mmproj-tiny-dsocr2-f32.gguf"}
_cache: dict = {}


def llava_path():
    if "path" not in _cache:
        import tempfile
        from pathlib import Path

        _cache["dir"] = tempfile.TemporaryDirectory()
        _cache["path"] = make_mmproj("mlp", "tiny", "f32", 11, Path(_cache["dir"].name) / "mlp.gguf")
    return _cache["path"]


def llava_encoder() -> Encoder:
    """One encoder for the module, reserved once for batches of up to 1024 tokens."""
    if "enc" not in _cache:
        enc = Encoder(llava_path(), "reference", batch_tokens=1024)
        enc.reserve()
        _cache["enc"] = enc
    return _cache["enc"]


# --- add(): OK / FULL / INCOMPATIBLE ------------------------------------------------------------------------

SHAPES = [ImageShape("a", 2, 2, 5), ImageShape("a", 2, 4, 5), ImageShape("b", 2, 2, 5), ImageShape("a", 2, 2, 9)]


def fake_encoder(support_batch: bool):
    model = types.SimpleNamespace(projector="fake", path="/models/fake.gguf")
    builder = types.SimpleNamespace(support_batch=support_batch)
    return types.SimpleNamespace(model=model, new_builder=lambda: builder, reserve_batch=lambda n: None)


chunk_specs = st.tuples(st.sampled_from(SHAPES), st.sampled_from(["normal", "mrope"]), st.booleans())


@settings(max_examples=200, deadline=None)
@given(st.lists(chunk_specs, min_size=1, max_size=12), st.integers(1, 40), st.booleans())
def test_add_accepts_exactly_the_compatible_chunks_that_fit(specs, max_tokens, support_batch):
    enc = fake_encoder(support_batch)
    batch = Batch(enc, max_tokens)
    for shape, pos_type, same_model in specs:
        key = batch.model if same_model else "other:/models/other.gguf"
        c = ImageChunk(np.zeros((3, shape.ny, shape.nx), np.float32), shape, key, pos_type=pos_type)
        before = list(batch.chunks)
        res = batch.add(c)
        assert isinstance(res, AddResult)
        if not same_model:
            assert res is AddResult.INCOMPATIBLE
        elif not before:
            assert res is AddResult.OK  # the first chunk is always taken, whatever its size
        elif not support_batch or sum(x.n_tokens for x in before) + shape.n_tokens > max_tokens:
            assert res is AddResult.FULL
        elif (shape, pos_type) != (before[0].shape, before[0].pos_type):
            assert res is AddResult.INCOMPATIBLE
        else:
            assert res is AddResult.OK
        assert batch.chunks == (before + [c] if res is AddResult.OK else before)
    first = batch.chunks[0] if batch.chunks else None
    assert all(first.can_batch_with(x) for x in batch.chunks)
    assert len(batch) <= 1 or (support_batch and batch.n_tokens <= max_tokens)


def test_add_rejects_text_and_output_needs_encode():
    batch = Batch(fake_encoder(True), 100)
    with pytest.raises(Exception, match="only image chunks"):
        batch.add(TextChunk([1, 2]))
    c = ImageChunk(np.zeros((3, 2, 2), np.float32), SHAPES[0], batch.model)
    batch.add(c)
    with pytest.raises(Exception, match="not been encoded"):
        batch.output(c)


# --- positions ----------------------------------------------------------------------------------------------

def image_chunk(shape: ImageShape) -> ImageChunk:
    return ImageChunk(np.zeros((3, shape.ny, shape.nx), np.float32), shape, "m")


prompts = st.lists(st.one_of(st.integers(0, 7).map(lambda n: TextChunk(range(n))),
                             st.sampled_from(SHAPES).map(image_chunk)), max_size=10)


@given(prompts, st.integers(0, 1000))
def test_positions_run_through_the_prompt(chunks, start):
    out = assign_positions(chunks, start)
    pos = start
    for before, c in zip(chunks, out):
        assert c.pos == pos and c.n_tokens == before.n_tokens
        assert c.n_pos == c.n_tokens  # normal layout: an image advances positions by its token count
        assert list(c.positions) == list(range(pos, pos + c.n_tokens))
        pos += c.n_tokens
    assert all(c.pos == 0 for c in chunks)  # the inputs are left as they were


def test_text_image_text_image_prompt_positions():
    enc = llava_encoder()
    rng = np.random.default_rng(0)
    img_a, img_b = rng.integers(0, 256, (40, 70, 3), np.uint8), rng.integers(0, 256, (90, 20, 3), np.uint8)
    chunks = tokenize(enc, [TextChunk([5, 6, 7]), img_a, TextChunk([8]), img_b, TextChunk([9, 10])], start=100)
    assert [(type(c).__name__, c.pos, c.n_pos) for c in chunks] == [
        ("TextChunk", 100, 3), ("ImageChunk", 103, 16), ("TextChunk", 119, 1), ("ImageChunk", 120, 16),
        ("TextChunk", 136, 2)]


# --- batched == one by one (tiny LLaVA), reserve once -------------------------------------------------------

images = st.lists(st.tuples(st.integers(8, 90), st.integers(8, 90), st.integers(0, 2**31)), min_size=1, max_size=5)


@settings(max_examples=8, deadline=None)
@given(images)
def test_batched_equals_one_by_one_without_new_arena_allocations(spec):
    enc = llava_encoder()
    allocations = enc.arena.allocations
    chunks = []
    for w, h, seed in spec:
        img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)
        chunks += enc.chunks(img)
    batch = Batch(enc, 1024)
    assert all(batch.add(c) is AddResult.OK for c in chunks)
    batch.encode()
    assert batch.built.pixels.ne[3] == len(chunks)  # one graph, the images in ne3
    for c in chunks:
        alone = Batch(enc, 1024)
        alone.add(c)
        alone.encode()
        got, want = batch.output(c), alone.output(c)
        assert got.shape == (c.n_tokens, enc.model.hparams.proj_dim)
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * np.abs(want).max())
    assert enc.arena.allocations == allocations == 1


def test_encode_chunks_splits_at_full_batches():
    enc = llava_encoder()
    rng = np.random.default_rng(5)
    chunks = [c for _ in range(5) for c in enc.chunks(rng.integers(0, 256, (56, 56, 3), np.uint8))]
    small = encode_chunks(enc, [TextChunk([1]), *chunks], max_tokens=32)  # two 16-token images per batch
    big = encode_chunks(enc, chunks, max_tokens=1024)
    for c in chunks:
        np.testing.assert_allclose(small[id(c)], big[id(c)], rtol=0, atol=2e-5 * np.abs(big[id(c)]).max())
    assert enc.arena.allocations == 1


def test_a_batch_larger_than_the_reserve_is_refused_or_re_reserved():
    path = llava_path()
    enc = Encoder(path, "reference", batch_tokens=32)  # room for two 16-token images
    enc.reserve()
    chunks = [c for s in range(4) for c in enc.chunks(np.full((56, 56, 3), 40 * s, np.uint8))]
    # an encoder view that skips the batch's own reserve: the batch carries more than the arena was reserved for
    no_reserve = types.SimpleNamespace(model=enc.model, new_builder=enc.new_builder, prepare=enc.prepare,
                                       plan=enc.plan, numerics=enc.numerics, fast=enc.fast,
                                       reserve_batch=lambda n: None)
    batch = Batch(no_reserve, 1024)
    for c in chunks:
        batch.add(c)
    with pytest.raises(ArenaError, match=r"batch of 4 image 56x56 images: graph needs an arena of \d+ bytes but "
                                         r"\d+ bytes were reserved"):
        batch.encode()
    growing = Encoder(path, "reference", batch_tokens=32, grow=True)
    growing.reserve()
    batch.encoder.plan = growing.plan
    batch.encode()
    assert growing.arena.allocations == 2
    # a Batch made through the API reserves its own token budget first
    ok = Batch(enc, 1024)
    for c in chunks:
        ok.add(c)
    ok.encode()
    assert enc.arena.allocations == 2 and "batch:1024" in enc.reservations


# --- planner invariants on real model graphs ----------------------------------------------------------------

def assert_no_live_overlap(graph):
    plan = plan_graph(graph)
    for n in graph.nodes:
        if n.is_view:
            assert id(n) not in plan.offsets  # views cost nothing
    keys = list(plan.offsets)
    off = np.array([plan.offsets[k] for k in keys], np.int64)
    size = np.array([plan.sizes[k] for k in keys], np.int64)
    first = np.array([plan.lifetimes[k][0] for k in keys], np.int64)
    last = np.array([plan.lifetimes[k][1] for k in keys], np.int64)
    assert (off % 32 == 0).all() and (off + size <= plan.size).all()
    index = {k: i for i, k in enumerate(keys)}
    shares = {(index[a], index[b]) for a, b in plan.inplace.items()}
    for i in range(len(keys)):
        j = np.arange(i + 1, len(keys))
        same_bytes = (off[i] < off[j] + size[j]) & (off[j] < off[i] + size[i])
        live_together = ~((last[i] < first[j]) | (last[j] < first[i]))
        for k in j[same_bytes & live_together]:
            assert (i, k) in shares or (k, i) in shares, (keys[i], keys[k])
    return plan


@pytest.mark.parametrize("version,grid", [("v1", (2, 1)), ("v2", (1, 2))])
def test_real_page_graphs_keep_live_buffers_apart(version, grid):
    enc = Encoder(DSOCR[version], "llama.cpp", reserve=False)
    assert_no_live_overlap(enc.build(grid).graph)


def test_real_batch_graph_keeps_live_buffers_apart():
    b = llava_encoder().new_builder()
    assert_no_live_overlap(b.build_batch(3, b.image_shape()).graph)


@pytest.mark.parametrize("version,mode", [("v1", "llama.cpp"), ("v1", "reference"), ("v2", "llama.cpp")])
def test_every_grid_plans_into_the_one_reserved_arena(version, mode):
    """Reserve the max-tiles page once; every candidate grid (and no tiles) then fits with no new allocation."""
    enc = Encoder(DSOCR[version], mode)
    (res,) = enc.reserve()
    assert enc.arena.allocations == 1 and enc.arena.nbytes == res.arena_bytes
    hp = enc.model.hparams
    sizes = {}
    for grid in [None, *candidates(hp.min_tiles, hp.max_tiles, mode)]:
        mem = enc.memory(grid)  # builds and plans into the arena: raises ArenaError if it did not fit
        assert mem["peak_bytes"] <= mem["arena_bytes"] == enc.arena.nbytes
        sizes[grid] = mem["peak_bytes"]
    assert enc.arena.allocations == 1
    assert max(sizes.values()) == res.arena_bytes  # the reserved page is the largest
    assert sizes[None] < res.arena_bytes
    with pytest.raises(ArenaError, match=r"grid \(4, 3\): graph needs an arena of \d+ bytes but \d+ bytes"):
        enc.memory((4, 3))  # beyond max_tiles: bigger than the worst case


def test_memory_report_counts_weights_once_in_their_stored_type():
    enc = Encoder(MODELS / "mmproj-tiny-dsocr-f16.gguf", "llama.cpp", reserve=False)
    graph = enc.build(None).graph
    rep = memory_report(graph)
    stored = sum(w.nbytes for w in enc.model.weights.values() if w.used)
    assert rep.weight_bytes == stored  # every used weight is a leaf of the page graph, counted once
    assert rep.weight_resident_bytes > rep.weight_bytes  # f16 weights are held as float32
    assert 0 < rep.input_bytes < rep.peak_bytes == rep.arena_bytes
    assert rep.peak_bytes == plan_graph(graph).size
    assert model_key(enc.model).startswith("deepseekocr:/")
