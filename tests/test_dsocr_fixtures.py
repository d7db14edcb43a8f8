"""End to end against the fixtures: llama.cpp 0c1e57098 and the HF reference on the tiny models.

Tolerances are relative to the largest |value| of the reference embeddings, per view (fixtures README §6):
mode llama.cpp vs llama.cpp's outputs <= 5e-4, mode reference vs the HF outputs <= 1e-4.
"""

import json

import numpy as np
import pytest
from fixtures_paths import FIXTURES, MODELS, PAGES, fixture_dir

from npggml import preprocess as pp
from npggml.models.encode import Encoder

LLAMA_TOL, HF_TOL = 5e-4, 1e-4
ARCH = {"v1": "deepseekocr", "v2": "deepseekocr2"}
GGUF = {"v1": "mmproj-tiny-dsocr-f32.gguf", "v2": "mmproj-tiny-dsocr2-f32.gguf"}

_encoders: dict = {}


def encoder(version: str, mode: str, gguf: str | None = None) -> Encoder:
    key = (version, mode, gguf)
    if key not in _encoders:
        _encoders[key] = Encoder(MODELS / (gguf or GGUF[version]), mode)
    return _encoders[key]


def per_view_error(ours: np.ndarray, ref: np.ndarray, views) -> list[tuple[str, float]]:
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    scale = float(np.abs(ref).max())
    return [(f"{v.kind}{v.index}", float(np.abs(ours[slice(*v.tokens)] - ref[slice(*v.tokens)]).max()) / scale)
            for v in views]


def assert_views_close(ours, ref, views, tol):
    errs = per_view_error(ours, ref, views)
    bad = [(k, e) for k, e in errs if not e <= tol]
    assert not bad, f"views over {tol:g} (max|Δ|/max|ref|): {bad}; all: {errs}"


def test_fixture_copies_are_present():
    assert len(PAGES) == 6 and all((FIXTURES / "images" / f"{p}.png").exists() for p in PAGES)


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("page", PAGES)
def test_llamacpp_mode_matches_llamacpp(version, page):
    enc = encoder(version, "llama.cpp")
    res = enc.encode(FIXTURES / "images" / f"{page}.png")
    d = fixture_dir("llamacpp", version, page)
    meta = json.loads((d / "meta.json").read_text())
    grid = (meta["tile_grid_w"], meta["tile_grid_h"]) if version == "v1" else (meta["grid_x"], meta["grid_y"])
    assert (res.grid or (0, 0)) == grid
    assert res.embeddings.shape[0] == sum(v["n_tokens"] for v in meta["views"])
    assert_views_close(res.embeddings, np.load(d / "embd_all.npy"), res.views, LLAMA_TOL)


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("page", PAGES)
def test_reference_mode_matches_hf_on_the_same_pixels(version, page):
    """The HF model fed llama.cpp's pixels isolates the encoder from the known preprocessing differences."""
    enc = encoder(version, "reference")
    hp = enc.model.hparams
    views = pp.preprocess(FIXTURES / "images" / f"{page}.png", ARCH[version], "llama.cpp", hp.min_tiles,
                          hp.max_tiles)
    res = enc.encode(None, views=views)
    ref = np.load(fixture_dir("hf", version, page) / "embd_all_on_llamacpp_pixels.npy")
    assert_views_close(res.embeddings, ref, res.views, HF_TOL)


@pytest.mark.parametrize("page", PAGES)
def test_reference_mode_end_to_end_matches_hf_v1(page):
    """v1's HF pipeline preprocesses with PIL (ImageOps.pad), as reference mode does: compare end to end."""
    res = encoder("v1", "reference").encode(FIXTURES / "images" / f"{page}.png")
    ref = np.load(fixture_dir("hf", "v1", page) / "embd_all.npy")
    assert_views_close(res.embeddings, ref, res.views, HF_TOL)


Q8_0_GAP = ("known gap: Q8_0 activations are quantised as ggml does, but ggml's float32 sums (tinyBLAS lanes, "
            "AVX hsum) decide which side of a Q8_0 rounding boundary an activation falls on, and those one-code "
            "steps compound over the layers: npggml is ~1e-2 from llama.cpp's q8_0 output (llama.cpp's own q8_0 "
            "vs f32 spread is 2-3e-2)")


@pytest.mark.parametrize("version,dtype,tol", [
    ("v1", "f16", 5e-4),
    pytest.param("v1", "q8_0", 5e-4, marks=pytest.mark.xfail(strict=True, reason=Q8_0_GAP)),
    ("v2", "f16", 5e-4),
    pytest.param("v2", "q8_0", 5e-4, marks=pytest.mark.xfail(strict=True, reason=Q8_0_GAP)),
])
def test_quantised_gguf_llamacpp_mode_tracks_llamacpp(version, dtype, tol):
    """ggml numerics convert activations to the weight's vec_dot type; without that emulation the spread vs
    llama.cpp's own quantised output would be 1.5e-3 (f16) .. 3e-2 (q8_0)."""
    name = GGUF[version].replace("f32", dtype)
    enc = encoder(version, "llama.cpp", name)
    for page in ("doc_1500x1000", "doc_620x560"):
        res = enc.encode(FIXTURES / "images" / f"{page}.png")
        ref = np.load(fixture_dir("llamacpp", f"{version}-{dtype}", page) / "embd_all.npy")
        assert_views_close(res.embeddings, ref, res.views, tol)
