"""Pillow's 8-bit fixed-point bicubic resampler, as llama.cpp's `resize_pillow` implements it.

Each axis is filtered separately. For an axis of `n_in` pixels resized to `n_out`:

* `scale = n_in / n_out`; the filter is widened to `support = 2 * max(scale, 1)` when shrinking;
* output pixel `i` is centred at `(i + 0.5) * scale` and reads the input pixels
  `[int(centre - support + 0.5), int(centre + support + 0.5))`, clipped to the image;
* the bicubic kernel (a = -0.5) is evaluated in double precision, the weights of each output pixel
  are normalised to sum to one and then stored as int32 with 22 fractional bits (add +-0.5, truncate);
* a pass accumulates `pixel * weight` in integers starting from `1 << 21`, shifts right by 22
  (an arithmetic shift, i.e. floor) and clamps to 0..255, so each pass yields uint8 again.

llama.cpp always runs the horizontal pass first, then the vertical one, and skips a pass whose
dimension does not change. Pillow 13 sometimes runs the vertical pass first (see
`pillow_runs_vertical_first`); `resize_u8(..., vertical_first=True)` reproduces that order, so
`resize_u8(img, size, pillow_runs_vertical_first(...))` equals Pillow 13's `Image.resize(BICUBIC)`.

Everything is vectorised over the output pixels; the loops below run over kernel taps only.
"""

from __future__ import annotations

import numpy as np

PRECISION_BITS = 22  # 32 bits - 8 bits of pixel - 2 bits of headroom, as in Pillow
_ONE = 1 << PRECISION_BITS
_HALF = 1 << (PRECISION_BITS - 1)
_SUPPORT = 2.0  # bicubic filter radius at scale 1
_A = -0.5  # Pillow's bicubic parameter (PyTorch and ggml use -0.75)


def _bicubic(x: np.ndarray) -> np.ndarray:
    """The a = -0.5 cubic convolution kernel, evaluated in float64 with Pillow's operation order."""
    x = np.abs(x)
    near = ((_A + 2.0) * x - (_A + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * _A
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def axis_coefficients(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed-point filter for resizing one axis from `n_in` to `n_out` pixels.

    Returns `(first, count, weights)`: output pixel i reads input pixels
    `first[i] .. first[i] + count[i] - 1` with int32 weights `weights[i, :count[i]]`;
    `weights[i, count[i]:]` are zero. `weights` has shape (n_out, ksize).
    """
    if n_in <= 0 or n_out <= 0:
        raise ValueError(f"cannot resample an axis of {n_in} pixels to {n_out}")
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = _SUPPORT * filterscale
    ksize = int(np.ceil(support)) * 2 + 1

    centre = (np.arange(n_out, dtype=np.float64) + 0.5) * scale
    # int() in C truncates toward zero; a negative start is clamped to 0 right after, so floor is
    # equivalent for the start, and the end is always positive.
    first = np.maximum(np.floor(centre - support + 0.5), 0).astype(np.int64)
    last = np.minimum(np.floor(centre + support + 0.5), n_in).astype(np.int64)
    count = last - first

    taps = np.arange(ksize, dtype=np.int64)
    used = taps[None, :] < count[:, None]
    dist = ((first[:, None] + taps[None, :]).astype(np.float64) - centre[:, None] + 0.5) * (1.0 / filterscale)
    w = np.where(used, _bicubic(dist), 0.0)

    # Sum the taps one after the other, like the C loop (np.sum would pair them differently).
    total = np.zeros(n_out, dtype=np.float64)
    for k in range(ksize):
        total += w[:, k]
    safe = np.where(total != 0.0, total, 1.0)
    w = np.where(total[:, None] != 0.0, w / safe[:, None], w)

    fixed = np.trunc(w * _ONE + np.where(w < 0, -0.5, 0.5)).astype(np.int32)
    fixed[~used] = 0
    return first, count, fixed


def pillow_runs_vertical_first(in_w: int, in_h: int, out_w: int, out_h: int) -> bool:
    """Whether Pillow 13.0's `Image.resize` filters rows (the vertical pass) before columns.

    Read from the installed Pillow 13.0.0 `_imaging` binary (`ImagingResample`) and confirmed on
    random sizes: when both axes change, Pillow goes vertical-first iff the height shrinks by more
    pixels than twice the width shrinks, i.e. `in_h - out_h > 0` and
    `in_h - out_h > 2 * (in_w - out_w)`. 700x2100 -> 640x1920 (180 > 120) is such a case.
    """
    if in_w == out_w or in_h == out_h:
        return False
    shrink_h = in_h - out_h
    return shrink_h > 0 and shrink_h > 2 * (in_w - out_w)


def _filter_rows(img: np.ndarray, n_out: int) -> np.ndarray:
    """One uint8 -> uint8 filtering pass along axis 0 of a C-contiguous array."""
    n_in = img.shape[0]
    first, _, weights = axis_coefficients(n_in, n_out)
    out = np.empty((n_out, *img.shape[1:]), dtype=np.uint8)
    row = img[0].size
    # Blocks of output rows bound the int32 scratch memory (about 8 MB per buffer) for large pages.
    step = max(1, (1 << 21) // max(row, 1))
    for lo in range(0, n_out, step):
        hi = min(lo + step, n_out)
        acc = np.full((hi - lo, *img.shape[1:]), _HALF, dtype=np.int32)
        term = np.empty_like(acc)
        taps = np.empty(acc.shape, dtype=np.uint8)
        wcol = weights[lo:hi].reshape((hi - lo, weights.shape[1]) + (1,) * (img.ndim - 1))
        for k in range(weights.shape[1]):
            # Taps beyond a pixel's count have weight 0; clamp their index to stay in bounds.
            np.take(img, np.minimum(first[lo:hi] + k, n_in - 1), axis=0, out=taps)
            np.multiply(taps, wcol[:, k], out=term)
            acc += term
        np.right_shift(acc, PRECISION_BITS, out=acc)  # arithmetic shift: floor, as in C
        np.clip(acc, 0, 255, out=acc)
        out[lo:hi] = acc
    return out


def _filter_columns(img: np.ndarray, n_out: int) -> np.ndarray:
    # Filtering whole rows of a transposed copy is much faster than gathering columns in place.
    flipped = np.ascontiguousarray(np.swapaxes(img, 0, 1))
    return np.ascontiguousarray(np.swapaxes(_filter_rows(flipped, n_out), 0, 1))


def resize_u8(img: np.ndarray, size: tuple[int, int], vertical_first: bool = False) -> np.ndarray:
    """Resize a uint8 image (H, W) or (H, W, C) to `size = (width, height)`.

    Horizontal pass first (llama.cpp), unless `vertical_first`. An axis whose size does not change
    is not filtered at all; when neither changes a copy is returned.
    """
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim not in (2, 3):
        raise ValueError(f"resize_u8 expects a uint8 (H, W) or (H, W, C) array, got {img.dtype} {img.shape}")
    out_w, out_h = (int(v) for v in size)
    if out_w <= 0 or out_h <= 0:
        raise ValueError(f"cannot resize to {out_w}x{out_h}")
    passes = [(1, out_w, _filter_columns), (0, out_h, _filter_rows)]
    if vertical_first:
        passes.reverse()
    out = np.ascontiguousarray(img)
    for axis, n_out, run in passes:
        if out.shape[axis] != n_out:
            out = run(out, n_out)
    return out.copy() if out is img else out
