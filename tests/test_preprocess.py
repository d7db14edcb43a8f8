"""DeepSeek-OCR preprocessing: byte-exact views against the llama.cpp and HF fixtures, grids, the
Pillow resampler port, normalisation, and image loading errors."""

import hashlib
import io
import json
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from npggml.errors import ImageError
from npggml.preprocess import (
    Views,
    candidates,
    choose_grid,
    global_box,
    global_view,
    load_image,
    normalize,
    pillow_runs_vertical_first,
    preprocess,
    resize,
    resize_u8,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
IMAGES = FIXTURES / "images"
PREPROC = FIXTURES / "preproc"
EXPECTED = json.loads((PREPROC / "expected.json").read_text())
STEMS = sorted(EXPECTED["pages"])
ARCH = {"v1": "deepseekocr", "v2": "deepseekocr2"}
CASES = [(v, stem) for v in ("v1", "v2") for stem in STEMS]
BOUNDED = settings(max_examples=30, deadline=None)


def sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def digest(a: np.ndarray) -> dict:
    return {"shape": list(a.shape), "sha256": sha(a)}


_VIEWS: dict = {}


def views(v: str, stem: str, mode: str) -> Views:
    key = (v, stem, mode)
    if key not in _VIEWS:
        _VIEWS[key] = preprocess(IMAGES / f"{stem}.png", ARCH[v], mode)
    return _VIEWS[key]


def page(stem: str) -> np.ndarray:
    return np.asarray(Image.open(IMAGES / f"{stem}.png").convert("RGB"))


# --- fixtures: byte-for-byte views -----------------------------------------------------------


def test_fixture_pages_present():
    sizes = ["1280x1280", "1500x1000", "2000x659", "600x800", "620x560", "700x2100"]
    assert STEMS == [f"doc_{s}" for s in sizes]
    assert sorted(p.stem for p in IMAGES.glob("doc_*.png")) == STEMS


@pytest.mark.parametrize("v,stem", CASES)
def test_llamacpp_mode_reproduces_llamacpp_views(v, stem):
    exp = EXPECTED["pages"][stem][v]["llamacpp"]
    got = views(v, stem, "llama.cpp")
    assert got.grid == (tuple(exp["grid"]) if exp["grid"] else None)
    enc = got.encoder_views()
    assert [digest(a) for a in enc] == [{"shape": e["shape"], "sha256": e["sha256"]} for e in exp["views"]]


@pytest.mark.parametrize("v,stem", CASES)
def test_reference_mode_reproduces_hf_tiles_and_grid(v, stem):
    exp = EXPECTED["pages"][stem][v]["hf"]
    got = views(v, stem, "reference")
    assert got.grid == (tuple(exp["grid"]) if exp["grid"] else None)
    assert [digest(t) for t in got.tiles] == exp["tiles"]


@pytest.mark.parametrize("stem", STEMS)
def test_reference_mode_reproduces_hf_v1_global(stem):
    # HF v1 (the official remote code) pads with ImageOps.pad, which reference mode follows.
    got = views("v1", stem, "reference")
    assert digest(got.global_view) == EXPECTED["pages"][stem]["v1"]["hf"]["global"]


@pytest.mark.parametrize("stem", STEMS)
def test_hf_v2_global_is_the_reference_resize_at_a_floor_offset(stem):
    # transformers 5.24's v2 processor pastes at floor((1024 - short) / 2) instead of ImageOps.pad's
    # half-to-even round; with that offset the reference resize reproduces its global view exactly.
    got = views("v2", stem, "reference")
    x0, y0, nw, nh = got.global_box
    img = page(stem)
    fx, fy = (1024 - nw) // 2, (1024 - nh) // 2
    hf = np.full((1024, 1024, 3), 127, np.uint8)
    hf[fy : fy + nh, fx : fx + nw] = resize(img, (nw, nh), "reference")
    assert digest(hf) == EXPECTED["pages"][stem]["v2"]["hf"]["global"]
    assert (digest(got.global_view) == digest(hf)) == ((fx, fy) == (x0, y0))


def test_700x2100_full_views_show_pillow_pass_order():
    full = np.load(PREPROC / "views_700x2100.npz")
    lc, ref = views("v1", "doc_700x2100", "llama.cpp"), views("v1", "doc_700x2100", "reference")
    rows = lc.tile_rows()
    assert [r.shape for r in rows] == [(640, 640, 3)] * 3  # gw = 1: a fused row is one tile
    for k, row in enumerate(rows):
        np.testing.assert_array_equal(row, full[f"llamacpp_view_{k}"])
        np.testing.assert_array_equal(ref.tiles[k], full[f"hf_tile_{k}"])
    np.testing.assert_array_equal(lc.global_view, full["llamacpp_view_3"])
    np.testing.assert_array_equal(ref.global_view, full["hf_global"])
    # Both resizes are vertical-first in Pillow 13, horizontal-first in llama.cpp, so the modes differ
    # even though the boxes agree, and the llama.cpp port run vertical-first gives Pillow's pixels.
    assert pillow_runs_vertical_first(700, 2100, 640, 1920) and pillow_runs_vertical_first(700, 2100, 341, 1024)
    assert lc.global_box == ref.global_box == (342, 0, 341, 1024)
    assert not np.array_equal(lc.tiles[0], ref.tiles[0])
    assert not np.array_equal(lc.global_view, ref.global_view)
    img = page("doc_700x2100")
    stretched = resize_u8(img, (640, 1920), vertical_first=True)
    np.testing.assert_array_equal(stretched[:640], full["hf_tile_0"])


def test_v1_fused_rows_stack_a_rows_tiles_vertically():
    got = views("v1", "doc_1500x1000", "llama.cpp")
    assert got.grid == (3, 2) and got.n_tiles == 6
    rows = got.tile_rows()
    assert [r.shape for r in rows] == [(1920, 640, 3)] * 2
    for r in range(2):
        for c in range(3):
            np.testing.assert_array_equal(rows[r][c * 640 : (c + 1) * 640], got.tiles[r * 3 + c])
    v2 = views("v2", "doc_1500x1000", "llama.cpp")
    assert [a.shape for a in v2.encoder_views()] == [(768, 768, 3)] * 6 + [(1024, 1024, 3)]


# Paste offsets measured on the fixtures (fixture README, section 5 item 1).
@pytest.mark.parametrize(
    "w,h,llama,pil",
    [
        (1500, 1000, (0, 171, 1024, 683), (0, 170, 1024, 683)),
        (2000, 659, (0, 344, 1024, 337), (0, 344, 1024, 337)),
        (620, 560, (0, 50, 1024, 925), (0, 50, 1024, 925)),
        (700, 2100, (342, 0, 341, 1024), (342, 0, 341, 1024)),
        (600, 800, (128, 0, 768, 1024), (128, 0, 768, 1024)),
        (1280, 1280, (0, 0, 1024, 1024), (0, 0, 1024, 1024)),
    ],
)
def test_global_box_rounding(w, h, llama, pil):
    assert global_box(w, h, "llama.cpp") == llama
    assert global_box(w, h, "reference") == pil


@BOUNDED
@given(w=st.integers(1, 1400), h=st.integers(1, 1400), seed=st.integers(0, 2**32 - 1))
def test_reference_global_view_is_imageops_pad(w, h, seed):
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    got, (x0, y0, nw, nh) = global_view(img, "reference")
    want = np.asarray(ImageOps.pad(Image.fromarray(img), (1024, 1024), color=(127, 127, 127)))
    np.testing.assert_array_equal(got, want)
    assert nw == 1024 or nh == 1024


# --- grids -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["reference", "llama.cpp"])
def test_grid_examples_from_reference_spec(mode):
    assert choose_grid(1700, 2200, 640, 2, 9, mode) == (2, 3)
    assert choose_grid(1700, 2200, 768, 2, 6, mode) == (2, 3)
    assert choose_grid(800, 600, 640, 2, 9, mode) == (3, 2)
    assert choose_grid(1920, 1080, 640, 2, 9, mode) == (4, 2)
    assert choose_grid(1920, 1080, 640, 2, 6, mode) == (2, 1)
    assert choose_grid(1920, 1080, 768, 2, 6, mode) == (2, 1)
    assert choose_grid(2000, 2000, 640, 2, 9, mode) == (3, 3)
    assert choose_grid(2000, 2000, 768, 2, 6, mode) == (2, 2)
    assert choose_grid(429, 806, 640, 2, 9, mode) == (1, 2)  # llama.cpp's own OCR test image
    assert choose_grid(640, 640, 640, 2, 9, mode) is None
    assert choose_grid(641, 10, 640, 2, 9, mode) is not None


def test_reference_candidate_order_is_cpython_set_order():
    # As listed in the reference spec, section 3.4.
    assert candidates(2, 6, "reference") == [
        (1, 2), (2, 1), (3, 1), (1, 3), (4, 1), (1, 4), (2, 2), (1, 5), (5, 1), (6, 1), (2, 3), (1, 6), (3, 2),
    ]  # fmt: skip
    assert candidates(2, 9, "reference") == [
        (1, 2), (2, 1), (3, 1), (1, 3), (2, 2), (4, 1), (1, 4), (5, 1), (1, 5), (1, 6), (6, 1), (3, 2), (2, 3),
        (7, 1), (1, 7), (4, 2), (2, 4), (1, 8), (8, 1), (1, 9), (3, 3), (9, 1),
    ]  # fmt: skip


def test_llamacpp_candidate_order_matches_libstdcxx():
    lines = (PREPROC / "libstdcxx_sort_orders.txt").read_text().splitlines()
    assert len(lines) == 225
    for line in lines:
        lo, hi, *grids = line.split()
        want = [tuple(int(x) for x in g.split(",")) for g in grids]
        assert candidates(int(lo), int(hi), "llama.cpp") == want, line


@BOUNDED
@given(
    w=st.integers(1, 20000),
    h=st.integers(1, 20000),
    lo=st.integers(1, 6),
    extra=st.integers(0, 12),
    tile=st.sampled_from([640, 768]),
    mode=st.sampled_from(["reference", "llama.cpp"]),
)
def test_grid_within_tile_range(w, h, lo, extra, tile, mode):
    hi = lo + extra
    grid = choose_grid(w, h, tile, lo, hi, mode)
    if w <= tile and h <= tile:
        assert grid is None
    else:
        assert grid is not None and lo <= grid[0] * grid[1] <= hi


# --- resampler -------------------------------------------------------------------------------


@st.composite
def resize_case(draw):
    w, h = draw(st.integers(1, 260)), draw(st.integers(1, 260))
    kind = draw(st.sampled_from(["both", "width only", "height only"]))
    out_w = w if kind == "height only" else draw(st.integers(1, 260))
    out_h = h if kind == "width only" else draw(st.integers(1, 260))
    return w, h, out_w, out_h, draw(st.integers(0, 2**32 - 1))


@BOUNDED
@given(resize_case())
def test_llamacpp_resampler_equals_pillow(case):
    w, h, out_w, out_h, seed = case
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    pil = np.asarray(Image.fromarray(img).resize((out_w, out_h), Image.Resampling.BICUBIC))
    vertical_first = pillow_runs_vertical_first(w, h, out_w, out_h)
    np.testing.assert_array_equal(resize_u8(img, (out_w, out_h), vertical_first=vertical_first), pil)
    if not vertical_first:  # horizontal-first or a one-axis resize: the llama.cpp order is Pillow's
        np.testing.assert_array_equal(resize_u8(img, (out_w, out_h)), pil)
        np.testing.assert_array_equal(resize(img, (out_w, out_h), "llama.cpp"), pil)


@pytest.mark.parametrize(
    "w,h,out_w,out_h,vertical_first",
    [
        (100, 100, 90, 80, False),  # height shrinks by exactly twice the width's shrink: horizontal first
        (100, 100, 90, 79, True),  # one more row removed: vertical first
        (100, 100, 120, 99, True),  # any height shrink while the width grows
        (100, 100, 120, 101, False),  # height grows
        (700, 2100, 640, 1920, True),
        (1500, 1000, 1920, 1280, False),
    ],
)
def test_pillow_pass_order_rule_at_its_boundary(w, h, out_w, out_h, vertical_first):
    assert pillow_runs_vertical_first(w, h, out_w, out_h) == vertical_first
    img = np.random.default_rng(7).integers(0, 256, (h, w, 3), dtype=np.uint8)
    pil = np.asarray(Image.fromarray(img).resize((out_w, out_h), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(resize_u8(img, (out_w, out_h), vertical_first=vertical_first), pil)
    assert not np.array_equal(resize_u8(img, (out_w, out_h), vertical_first=not vertical_first), pil)


def test_resampler_single_channel_and_identity():
    img = np.random.default_rng(3).integers(0, 256, (61, 47), dtype=np.uint8)
    for size in [(90, 33), (90, 70)]:  # Pillow goes vertical-first for the first, not the second
        pil = np.asarray(Image.fromarray(img, "L").resize(size, Image.Resampling.BICUBIC))
        vertical_first = pillow_runs_vertical_first(47, 61, *size)
        np.testing.assert_array_equal(resize_u8(img, size, vertical_first=vertical_first), pil)
    same = resize_u8(img, (47, 61))
    np.testing.assert_array_equal(same, img)
    assert same is not img


def test_resampler_speed():
    img = page("doc_1500x1000")
    best = min(_timed(resize_u8, img, (1920, 1280)) for _ in range(3))
    assert best < 1.0, f"1500x1000 -> 1920x1280 took {best:.2f} s"


def _timed(fn, *args):
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


# --- normalisation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mean,std",
    [
        ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    ],
)
def test_normalize_is_bit_exact(mean, std):
    rng = np.random.default_rng(0)
    u = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    got = normalize(u, mean, std)
    assert got.dtype == np.float32 and got.shape == (3, 37, 53) and got.flags.c_contiguous
    for c in range(3):
        want = (u[..., c].astype(np.float32) / np.float32(255) - np.float32(mean[c])) / np.float32(std[c])
        assert want.dtype == np.float32
        np.testing.assert_array_equal(got[c], want)
    every = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    x = normalize(every)
    ramp = (np.arange(256, dtype=np.float32) / np.float32(255) - np.float32(0.5)) / np.float32(0.5)
    np.testing.assert_array_equal(x[1].ravel(), ramp)


# --- loading ---------------------------------------------------------------------------------


def _png_header_only(w: int, h: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _mode_images():
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (9, 7, 4), dtype=np.uint8)
    i16 = np.array([[0, 1, 127, 255, 256, 1000, 65535]] * 3, dtype=np.uint16)
    pal = Image.fromarray(rgba[..., :3]).quantize(colors=16)
    pal.info["transparency"] = 3
    return {
        "RGBA": (Image.fromarray(rgba, "RGBA"), "PNG"),
        "LA": (Image.fromarray(rgba[..., :2], "LA"), "PNG"),
        "P": (pal, "PNG"),
        "CMYK": (Image.fromarray(rgba, "CMYK"), "TIFF"),
        "L": (Image.fromarray(rgba[..., 0], "L"), "PNG"),
        "I;16": (Image.fromarray(i16), "PNG"),
    }


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "CMYK", "L", "I;16"])
def test_load_image_converts_like_pillow(tmp_path, mode):
    img, fmt = _mode_images()[mode]
    path = tmp_path / f"page.{fmt.lower()}"
    img.save(path, fmt)
    with Image.open(path) as src:
        assert src.mode == mode
        want = np.asarray(src.convert("RGB"))
    got = load_image(path)
    assert got.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(got), want)
    with open(path, "rb") as f:
        np.testing.assert_array_equal(np.asarray(load_image(f)), want)
    pre = preprocess(path, "deepseekocr", no_tiles=True)
    np.testing.assert_array_equal(pre.global_view, global_view(want, "reference")[0])


def test_load_image_i16_clamps_like_pillow(tmp_path):
    Image.fromarray(np.array([[0, 200, 255, 256, 1000, 65535]], dtype=np.uint16)).save(tmp_path / "d.png")
    got = np.asarray(load_image(tmp_path / "d.png"))
    assert got[0, :, 0].tolist() == [0, 200, 255, 255, 255, 255]
    assert (got[..., 0] == got[..., 1]).all() and (got[..., 1] == got[..., 2]).all()


def _one_line_error(fn, *args, match):
    with pytest.raises(ImageError, match=match) as info:
        fn(*args)
    msg = str(info.value)
    assert "\n" not in msg and msg.strip() == msg and len(msg) < 400
    return msg


def test_image_errors(tmp_path):
    (tmp_path / "garbage.png").write_bytes(b"this is not an image, just some text\n" * 10)
    msg = _one_line_error(load_image, tmp_path / "garbage.png", match="not an image format")
    assert "garbage.png" in msg
    msg = _one_line_error(load_image, tmp_path / "missing.png", match="no such file")
    assert "missing.png" in msg
    _one_line_error(load_image, tmp_path, match="directory")
    (tmp_path / "empty.png").write_bytes(_png_header_only(0, 10))
    msg = _one_line_error(load_image, tmp_path / "empty.png", match="empty")
    assert "0x10" in msg and "empty.png" in msg
    _one_line_error(preprocess, Image.new("RGB", (0, 5)), "deepseekocr", match="empty")
    _one_line_error(preprocess, np.zeros((4, 0, 3), np.uint8), "deepseekocr2", match="empty")
    _one_line_error(preprocess, np.zeros((4, 4), np.uint8), "deepseekocr2", match="RGB uint8 array")
    full = (IMAGES / "doc_620x560.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(full[: len(full) // 3])
    msg = _one_line_error(load_image, tmp_path / "cut.png", match="decoding failed")
    assert "cut.png" in msg


@pytest.mark.parametrize("w,h", [(20000, 20000), (10000, 9000)])  # above the error / the warning level
def test_decompression_bomb_is_an_image_error(tmp_path, w, h):
    assert w * h > Image.MAX_IMAGE_PIXELS
    (tmp_path / "bomb.png").write_bytes(_png_header_only(w, h))
    msg = _one_line_error(load_image, tmp_path / "bomb.png", match="decompression-bomb limit")
    assert "bomb.png" in msg
    _one_line_error(load_image, io.BytesIO(_png_header_only(w, h)), match="<file object>")


# --- API -------------------------------------------------------------------------------------


def test_preprocess_api():
    img = page("doc_1500x1000")
    v = preprocess(img, "deepseekocr2", "llama.cpp", min_tiles=2, max_tiles=4, no_tiles=False)
    assert (v.arch, v.mode, v.image_size, v.tile_size) == ("deepseekocr2", "llama.cpp", (1500, 1000), 768)
    # 3:2 is as far from 2:1 as from 1:1 (2x2); the tie goes to the later, larger grid because
    # 1500*1000 > 0.5 * 768**2 * 4.
    assert v.grid == (2, 2) and [t.shape for t in v.tiles] == [(768, 768, 3)] * 4
    assert choose_grid(900, 600, 768, 2, 4, "llama.cpp") == (2, 1)  # same tie, too small for 4 tiles
    assert v.global_view.shape == (1024, 1024, 3) and v.global_view.dtype == np.uint8
    g = preprocess(Image.fromarray(img), "deepseekocr", no_tiles=True)
    assert g.grid is None and g.tiles == [] and g.tile_rows() == [] and len(g.encoder_views()) == 1
    np.testing.assert_array_equal(g.global_view, views("v1", "doc_1500x1000", "reference").global_view)
    assert views("v1", "doc_620x560", "llama.cpp").grid is None
    with pytest.raises(ValueError, match="unknown arch"):
        preprocess(img, "clip")
    with pytest.raises(ValueError, match="unknown preprocessing mode"):
        preprocess(img, "deepseekocr", mode="torch")
