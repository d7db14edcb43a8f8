"""DeepSeek-OCR through the batch API, end to end in one reserved arena (tiny models).

v1 chunks a page as llama.cpp does: one fused chunk per row of tiles, then the global view. The rows of a page
batched as one graph (R rows in ne3, split into tiles in the graph) give the page graph's embeddings, and so does
each row alone; pages of different grids run after one reserve without a new arena allocation.
"""

import json

import numpy as np
from fixtures_paths import FIXTURES, MODELS, fixture_dir

from npggml.models.batch import AddResult, Batch, TextChunk, tokenize
from npggml.models.encode import Encoder

PAGE = FIXTURES / "images" / "doc_700x2100.png"  # grid (1, 3): three rows of one tile


def close(a, b, tol=2e-5):
    np.testing.assert_allclose(a, b, rtol=0, atol=tol * np.abs(b).max())


def test_v1_page_rows_batched_alone_and_in_the_page_graph_agree():
    enc = Encoder(MODELS / "mmproj-tiny-dsocr-f32.gguf", "reference")
    rows = Batch(enc, 1024)  # the first reserve covers the max-tiles page and batches of 1024 tokens at once
    assert set(enc.reservations) == {"page", "batch:1024"} and enc.arena.allocations == 1
    page = enc.encode(PAGE)
    assert page.grid == (1, 3) and enc.arena.allocations == 1

    chunks = tokenize(enc, [TextChunk([1, 2]), PAGE, TextChunk([3])])
    images = chunks[1:-1]
    assert [c.shape.kind for c in images] == ["tile_row"] * 3 + ["global"]
    assert [(c.shape.nx, c.shape.ny) for c in images] == [(640, 640)] * 3 + [(1024, 1024)]
    # chunk token counts and positions follow the page's view layout, shifted by the leading text
    assert [(c.pos - 2, c.pos - 2 + c.n_tokens) for c in images] == [v.tokens for v in page.views]
    assert chunks[-1].pos == 2 + page.embeddings.shape[0]

    assert [rows.add(c) for c in images] == [AddResult.OK] * 3 + [AddResult.INCOMPATIBLE]
    rows.encode()
    assert rows.built.pixels.ne == (640, 640, 3, 3)
    for c, view in zip(images[:3], page.views):
        close(rows.output(c), page.embeddings[slice(*view.tokens)])
    alone = Batch(enc, 1024)
    alone.add(images[1])
    alone.encode()
    close(alone.output(images[1]), rows.output(images[1]))
    overview = Batch(enc, 1024)
    overview.add(images[3])
    overview.encode()
    close(overview.output(images[3]), page.embeddings[slice(*page.views[3].tokens)])
    assert enc.arena.allocations == 1  # page and batches: one reservation


def test_v2_pages_of_different_grids_after_one_reserve_match_llamacpp():
    enc = Encoder(MODELS / "mmproj-tiny-dsocr2-f32.gguf", "llama.cpp")
    reserved = enc.reserve()
    assert enc.arena.allocations == 1
    for name in ("doc_620x560", "doc_2000x659"):
        res = enc.encode(FIXTURES / "images" / f"{name}.png")
        d = fixture_dir("llamacpp", "v2", name)
        meta = json.loads((d / "meta.json").read_text())
        assert (res.grid or (0, 0)) == (meta["grid_x"], meta["grid_y"])
        ref = np.load(d / "embd_all.npy")
        assert np.abs(res.embeddings - ref).max() <= 5e-4 * np.abs(ref).max()
        m = res.meta("tiny-v2", "llama.cpp")["memory"]
        assert m["arena_bytes"] == enc.arena.nbytes == reserved[0].arena_bytes >= m["peak_bytes"] > 0
        assert m["weight_bytes"] > 0 and m["peak_rss_bytes"] > 0
    assert enc.arena.allocations == 1
