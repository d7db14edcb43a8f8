"""Token layout: counts equal what the graph produces, batched tiles equal tiles encoded alone, view ranges."""

from pathlib import Path

import numpy as np
import pytest
from fixtures_paths import MODELS
from hypothesis import given, settings
from hypothesis import strategies as st

from npggml import preprocess as pp
from npggml.graph.graph import Graph
from npggml.graph.interp import Interpreter
from npggml.models import deepseekocr, deepseekocr2
from npggml.models.encode import NUMERICS, Encoder
from npggml.models.gguf_io import load_mmproj

MODELS_BY_VERSION = {"v1": "mmproj-tiny-dsocr-f32.gguf", "v2": "mmproj-tiny-dsocr2-f32.gguf"}
_models = {}


def model(version):
    if version not in _models:
        _models[version] = load_mmproj(MODELS / MODELS_BY_VERSION[version])
    return _models[version]


def builder(version, mode="reference"):
    cls = deepseekocr.DeepseekOCR if version == "v1" else deepseekocr2.DeepseekOCR2
    return cls(model(version), mode)


def test_token_count_formulas_match_the_spec_examples():
    assert deepseekocr.n_output_tokens(None) == 273
    assert deepseekocr.n_output_tokens((1, 2)) == 493 and deepseekocr.n_output_tokens((2, 1)) == 483
    assert deepseekocr.n_output_tokens((2, 3)) == 903 and deepseekocr.n_output_tokens((3, 2)) == 893
    assert deepseekocr.n_output_tokens((3, 3)) == 1203
    assert [deepseekocr2.n_output_tokens(g) for g in (None, (1, 2), (2, 2), (2, 3))] == [257, 545, 833, 1121]


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_every_candidate_grid_builds_the_counted_number_of_tokens(version):
    hp = model(version).hparams
    for grid in [None, *pp.candidates(hp.min_tiles, hp.max_tiles, "reference")]:
        b = builder(version)
        page = b.build_page(grid)
        assert page.embeddings.ne[:2] == (hp.proj_dim, b.n_output_tokens(grid))
        assert page.views[-1].tokens[1] == b.n_output_tokens(grid)
        assert page.views[0].tokens[0] == 0
        assert all(a.tokens[1] == nxt.tokens[0] for a, nxt in zip(page.views, page.views[1:]))


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(["v1", "v2"]), st.integers(1, 6000), st.integers(1, 6000),
       st.sampled_from(["reference", "llama.cpp"]))
def test_random_pages_get_a_grid_whose_token_count_the_graph_produces(version, w, h, mode):
    hp = model(version).hparams
    grid = pp.choose_grid(w, h, hp.tile_size, hp.min_tiles, hp.max_tiles, mode)
    if grid is not None:
        assert hp.min_tiles <= grid[0] * grid[1] <= hp.max_tiles
    else:
        assert w <= hp.tile_size and h <= hp.tile_size
    b = builder(version, mode)
    assert b.build_page(grid).embeddings.ne[1] == b.n_output_tokens(grid)


def _run_view(version, pixels, overview, n_cols, n_rows, mode="reference"):
    b = builder(version, mode)
    ctx = b.ctx
    side = pixels.shape[-1]
    inp = ctx.input("f32", (side, side, 3, pixels.shape[0]), "inp_raw")
    out = b.build_view(inp, overview, n_cols, n_rows)
    values = dict(b.inputs)
    values[inp] = pixels
    (res,) = Interpreter(Graph(out), numerics=NUMERICS[mode]).run(values)
    return res.reshape(out.shape)  # (ne3, ne2, ne1, ne0)


@settings(max_examples=3, deadline=None)
@given(st.integers(0, 2**31), st.sampled_from([(2, 1), (1, 2)]))
def test_v1_tile_batch_equals_each_tile_alone(seed, grid):
    """The grid as one batch (newlines woven in the graph) == every tile encoded on its own."""
    gw, gh = grid
    rng = np.random.default_rng(seed)
    tiles = rng.uniform(-1, 1, (gw * gh, 3, 640, 640)).astype(np.float32)
    batched = _run_view("v1", tiles, False, gw, gh)  # (1, gh, (10*gw + 1) * 10, n_embd)
    lines = batched.reshape(gh, 10, 10 * gw + 1, -1)
    for k in range(gw * gh):
        r, c = divmod(k, gw)
        alone = _run_view("v1", tiles[k : k + 1], False, 1, 1).reshape(10, 11, -1)
        np.testing.assert_allclose(lines[r, :, c * 10 : (c + 1) * 10], alone[:, :10], rtol=0, atol=2e-5)
        np.testing.assert_array_equal(lines[r, :, -1], alone[:, -1])  # the newline embedding


@settings(max_examples=2, deadline=None)
@given(st.integers(0, 2**31))
def test_v2_tile_batch_equals_each_tile_alone(seed):
    rng = np.random.default_rng(seed)
    tiles = rng.uniform(-1, 1, (2, 3, 768, 768)).astype(np.float32)
    batched = _run_view("v2", tiles, False, 2, 1)  # (1, 2, 144, n_embd)
    for k in range(2):
        alone = _run_view("v2", tiles[k : k + 1], False, 1, 1)
        np.testing.assert_allclose(batched[0, k], alone[0, 0], rtol=0, atol=2e-5)


def test_v2_file_without_queries_is_a_clear_error(tmp_path):
    import gguf

    from npggml.errors import GGUFError

    src = gguf.GGUFReader(MODELS / MODELS_BY_VERSION["v2"])
    out = tmp_path / "no-queries.gguf"
    w = gguf.GGUFWriter(out, "clip")
    for f in src.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        vtype = f.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            w.add_array(f.name, list(f.contents()))
        else:
            w.add_key_value(f.name, f.contents(), vtype)
    for t in src.tensors:
        if t.name != "v.resample_query_1024.weight":
            w.add_tensor(t.name, np.array(t.data), raw_shape=tuple(reversed([int(x) for x in t.shape])),
                         raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(GGUFError, match="missing tensor v.resample_query_1024.weight"):
        Encoder(out, "llama.cpp")


def test_encoder_keeps_a_built_page_for_the_next_of_its_grid():
    """A second page of the same grid runs the graph built for the first (no rebuild), and its embeddings are those
    a fresh Encoder gives it; another grid gets its own graph."""
    import dataclasses

    image = Path(__file__).parent / "fixtures" / "images" / "doc_1500x1000.png"
    enc = Encoder(model("v1"), "reference")
    views = enc.preprocess(image)
    first = enc.encode(image, views=views)
    other = dataclasses.replace(views, tiles=[t[::-1].copy() for t in views.tiles],
                                global_view=views.global_view[:, ::-1].copy())
    second = enc.encode(image, views=other)
    assert second.page is first.page
    fresh = Encoder(model("v1"), "reference").encode(image, views=other)
    np.testing.assert_array_equal(second.embeddings, fresh.embeddings)
    assert not np.array_equal(second.embeddings, first.embeddings)
    alone = enc.encode(image, no_tiles=True)
    assert alone.page is not first.page and alone.page.grid is None


def test_encoder_rebuilds_its_page_when_the_mode_changes():
    """The kept page graph belongs to one mode: after `enc.mode` changes, encode builds the other mode's graph and
    gives what a fresh Encoder of that mode gives (it used to reuse the first mode's graph)."""
    image = Path(__file__).parent / "fixtures" / "images" / "doc_1500x1000.png"
    enc = Encoder(model("v1"), "reference")
    first = enc.encode(image)
    enc.mode = "llama.cpp"
    second = enc.encode(image)
    assert second.page is not first.page
    np.testing.assert_array_equal(second.embeddings, Encoder(model("v1"), "llama.cpp").encode(image).embeddings)


def test_encoder_rebuilds_its_page_when_the_kernels_change():
    """The kept page graph belongs to one choice of kernels too (with the reference kernels only the passes that
    keep every value bit for bit run): after `enc.fast` changes, encode gives what a fresh Encoder gives."""
    image = Path(__file__).parent / "fixtures" / "images" / "doc_620x560.png"
    enc = Encoder(model("v1"), "reference")
    first = enc.encode(image, no_tiles=True)
    enc.fast = False
    second = enc.encode(image, no_tiles=True)
    assert second.page is not first.page
    fresh = Encoder(model("v1"), "reference", fast=False).encode(image, no_tiles=True)
    np.testing.assert_array_equal(second.embeddings, fresh.embeddings)
    cropped = [sum(n.op.startswith("mul_mat") and "attn.out" in n.srcs[0].name and n.ne[1:] == (64, 64, 1)
                   for n in r.page.graph.nodes) for r in (first, second)]
    assert cropped == [8, 0]  # the windowed layers' projections, on the 64 x 64 tokens after the crop
