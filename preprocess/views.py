"""DeepSeek-OCR v1/v2 dynamic-resolution preprocessing: a padded 1024x1024 global view plus tiles.

Two modes produce the uint8 views:

* `reference`: the official DeepSeek code. Pillow's own `Image.resize(..., BICUBIC)` for every
  resize, and the global view is `PIL.ImageOps.pad(page, (1024, 1024), color=(127, 127, 127))`
  (Python's half-to-even `round` for the scaled size and the paste offset).
* `llama.cpp`: mtmd at 0c1e57098. The NumPy port of its Pillow resampler (`resample.resize_u8`,
  always horizontal pass first), float32 scale, `std::round` (half away from zero) for the scaled
  size and the paste offset.

Tiles are the page stretched to (tile*gw, tile*gh) and cut into tile x tile squares, row-major.
v1 (`deepseekocr`) uses 640 tiles, v2 (`deepseekocr2`) 768. `normalize` turns a uint8 view into the
float32 planar encoder input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from npggml.errors import ImageError

from .grid import MODES, choose_grid
from .image_io import PathOrFile, as_rgb_array
from .resample import resize_u8

GLOBAL_SIZE = 1024
PAD_COLOR = (127, 127, 127)
TILE_SIZE = {"deepseekocr": 640, "deepseekocr2": 768}
DEFAULT_TILES = {"deepseekocr": (2, 9), "deepseekocr2": (2, 6)}  # (min, max) when the GGUF has none
FUSES_ROWS = {"deepseekocr": True, "deepseekocr2": False}


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown preprocessing mode {mode!r}; expected one of {MODES}")


def resize(img: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """Bicubic resize of a uint8 HWC image to size = (width, height) in the given mode."""
    _check_mode(mode)
    if mode == "llama.cpp":
        return resize_u8(img, size)
    resized = Image.fromarray(img).resize((int(size[0]), int(size[1])), Image.Resampling.BICUBIC)
    return np.asarray(resized).copy()


def _round_half_away(x: np.float32) -> int:
    # Exact for the non-negative float32 values used here: float32 + 0.5 is exact in double.
    return math.floor(float(x) + 0.5)


def global_box(w: int, h: int, mode: str, size: int = GLOBAL_SIZE) -> tuple[int, int, int, int]:
    """(x0, y0, new_w, new_h): where the aspect-preserving resize of a w x h page sits in the view."""
    _check_mode(mode)
    if mode == "reference":
        # ImageOps.contain, then ImageOps.pad with centering 0.5 (Pillow 13.0).
        new_w, new_h = size, size
        if w != h:
            if w > h:
                new_h = round(h / w * size)
            else:
                new_w = round(w / h * size)
        if new_w != size:
            return round((size - new_w) * 0.5), 0, new_w, new_h
        if new_h != size:
            return 0, round((size - new_h) * 0.5), new_w, new_h
        return 0, 0, size, size
    f32 = np.float32
    scale = min(f32(size) / f32(w), f32(size) / f32(h))
    new_w = min(_round_half_away(f32(w) * scale), size)
    new_h = min(_round_half_away(f32(h) * scale), size)
    x0 = _round_half_away(f32(size - new_w) / f32(2.0))
    y0 = _round_half_away(f32(size - new_h) / f32(2.0))
    return x0, y0, new_w, new_h


def global_view(
    img: np.ndarray, mode: str, size: int = GLOBAL_SIZE, color: tuple[int, int, int] = PAD_COLOR
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The padded size x size global view of a uint8 HWC page, and its `global_box`."""
    h, w = img.shape[:2]
    x0, y0, new_w, new_h = box = global_box(w, h, mode, size)
    out = np.empty((size, size, 3), dtype=np.uint8)
    out[...] = np.asarray(color, dtype=np.uint8)
    if new_w == 0 or new_h == 0:
        if mode == "llama.cpp":
            raise ImageError(
                f"a {w}x{h} page is too elongated: its global view would be {new_w}x{new_h} pixels, "
                "which llama.cpp cannot resize to (it aborts)"
            )
        return out, box  # ImageOps.pad gives a view of pure padding
    out[y0 : y0 + new_h, x0 : x0 + new_w] = resize(img, (new_w, new_h), mode)
    return out, box


def make_tiles(img: np.ndarray, grid: tuple[int, int], tile: int, mode: str) -> list[np.ndarray]:
    """Stretch the page to (tile*gw, tile*gh) and cut it into tile x tile squares, row-major."""
    gw, gh = grid
    refined = resize(img, (tile * gw, tile * gh), mode)
    return [
        np.ascontiguousarray(refined[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile])
        for r in range(gh)
        for c in range(gw)
    ]


def normalize(
    u8_hwc: np.ndarray, mean: tuple[float, ...] = (0.5, 0.5, 0.5), std: tuple[float, ...] = (0.5, 0.5, 0.5)
) -> np.ndarray:
    """float32 planar (3, H, W) encoder input: `(u / 255 - mean[c]) / std[c]`, every step in float32.

    NumPy shape (3, H, W) is ggml ne [W, H, 3]. Bit-exact with llama.cpp's `normalize` and with
    torchvision's ToTensor + Normalize on the same pixels.
    """
    u = np.asarray(u8_hwc)
    if u.dtype != np.uint8 or u.ndim != 3 or u.shape[2] != 3:
        raise ValueError(f"normalize expects a uint8 (H, W, 3) array, got {u.dtype} {u.shape}")
    m = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    x = u.transpose(2, 0, 1).astype(np.float32) / np.float32(255)
    return np.ascontiguousarray((x - m) / s)


@dataclass
class Views:
    """The uint8 views of one page, before normalisation."""

    arch: str
    mode: str
    image_size: tuple[int, int]  # (w, h) of the original page
    grid: tuple[int, int] | None  # (gw, gh); None when the page is not tiled
    tile_size: int
    tiles: list[np.ndarray] = field(repr=False)  # uint8 (tile, tile, 3), row-major
    global_view: np.ndarray = field(repr=False)  # uint8 (1024, 1024, 3)
    global_box: tuple[int, int, int, int] = (0, 0, GLOBAL_SIZE, GLOBAL_SIZE)  # (x0, y0, new_w, new_h)

    @property
    def n_tiles(self) -> int:
        return len(self.tiles)

    def tile_rows(self) -> list[np.ndarray]:
        """One image per grid row: its gw tiles stacked vertically, (tile*gw, tile, 3).

        This is the fused layout llama.cpp feeds the v1 encoder (tile column c at rows c*tile...).
        """
        if self.grid is None:
            return []
        gw, gh = self.grid
        return [np.concatenate(self.tiles[r * gw : (r + 1) * gw], axis=0) for r in range(gh)]

    def encoder_views(self) -> list[np.ndarray]:
        """The uint8 images in llama.cpp's encoding order: tile rows (v1) or tiles (v2), then global."""
        local = self.tile_rows() if FUSES_ROWS[self.arch] else list(self.tiles)
        return [*local, self.global_view]


def preprocess(
    image: PathOrFile | Image.Image | np.ndarray,
    arch: str,
    mode: str = "reference",
    min_tiles: int | None = None,
    max_tiles: int | None = None,
    no_tiles: bool = False,
) -> Views:
    """Build the global view and the tiles of a page for `arch` ('deepseekocr' or 'deepseekocr2').

    `image` is a path, a binary file object, a PIL image (converted as `.convert('RGB')`) or a uint8
    (H, W, 3) RGB array. `min_tiles` / `max_tiles` default to 2/9 (v1) and 2/6 (v2); pass the
    GGUF's values when it has them. `no_tiles=True` gives the global view only.
    """
    if arch not in TILE_SIZE:
        raise ValueError(f"unknown arch {arch!r}; expected one of {tuple(TILE_SIZE)}")
    _check_mode(mode)
    lo, hi = DEFAULT_TILES[arch]
    min_tiles = lo if min_tiles is None else int(min_tiles)
    max_tiles = hi if max_tiles is None else int(max_tiles)
    tile = TILE_SIZE[arch]

    page = as_rgb_array(image)
    h, w = page.shape[:2]
    view, box = global_view(page, mode)
    grid = None if no_tiles else choose_grid(w, h, tile, min_tiles, max_tiles, mode)
    tiles = make_tiles(page, grid, tile, mode) if grid is not None else []
    return Views(arch, mode, (w, h), grid, tile, tiles, view, box)
