"""npggml.preprocess: DeepSeek-OCR v1/v2 image preprocessing (pure NumPy + Pillow).

Modes: `reference` (official DeepSeek code, Pillow resizes, `ImageOps.pad`) and `llama.cpp`
(bit-exact port of mtmd 0c1e57098's preprocessing). See `views.py` for the pipeline.
"""

from .grid import MODES, candidates, choose_grid, libstdcxx_sort
from .image_io import as_rgb_array, load_image
from .resample import axis_coefficients, pillow_runs_vertical_first, resize_u8
from .views import (
    DEFAULT_TILES,
    FUSES_ROWS,
    GLOBAL_SIZE,
    PAD_COLOR,
    TILE_SIZE,
    Views,
    global_box,
    global_view,
    make_tiles,
    normalize,
    preprocess,
    resize,
)

__all__ = [
    "DEFAULT_TILES",
    "FUSES_ROWS",
    "GLOBAL_SIZE",
    "MODES",
    "PAD_COLOR",
    "TILE_SIZE",
    "Views",
    "as_rgb_array",
    "axis_coefficients",
    "candidates",
    "choose_grid",
    "global_box",
    "global_view",
    "libstdcxx_sort",
    "load_image",
    "make_tiles",
    "normalize",
    "pillow_runs_vertical_first",
    "preprocess",
    "resize",
    "resize_u8",
]
