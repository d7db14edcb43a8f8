"""Loading input pages as RGB images, with one-line `ImageError`s for every way that can fail."""

from __future__ import annotations

import os
import struct
import warnings
from typing import IO, Union

import numpy as np
from PIL import Image, ImageOps

from npggml.errors import ImageError

PathOrFile = Union[str, "os.PathLike[str]", IO[bytes]]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _describe(source: object) -> str:
    if isinstance(source, (str, os.PathLike)):
        return f"'{os.fspath(source)}'"
    name = getattr(source, "name", None)
    return f"'{name}'" if isinstance(name, str) else "<file object>"


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _png_size(source: PathOrFile) -> tuple[int, int] | None:
    """(width, height) from a PNG header, or None if `source` does not start like a PNG."""
    try:
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as f:
                head = f.read(24)
        else:
            source.seek(0)
            head = source.read(24)
    except (OSError, AttributeError, ValueError):
        return None
    if len(head) < 24 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", head[16:24])


def _empty_error(what: str, w: int, h: int) -> ImageError:
    return ImageError(f"image {what} is empty ({w}x{h} pixels); expected at least 1x1 pixel")


def to_rgb(img: Image.Image, what: str = "<image>") -> Image.Image:
    """Convert an in-memory PIL image to RGB exactly as `Image.convert('RGB')`, refusing 0 pixels."""
    if img.width <= 0 or img.height <= 0:
        raise _empty_error(what, img.width, img.height)
    if img.mode == "RGB":
        return img
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as e:
        raise ImageError(
            f"image {what} has mode {img.mode!r}, which Pillow cannot convert to RGB: {_one_line(e)}"
        ) from e


def load_image(path_or_file: PathOrFile, exif_transpose: bool = False) -> Image.Image:
    """Decode an image file (path or binary file object) into a fully loaded RGB PIL image.

    Any mode is converted with Pillow's own `.convert('RGB')`: alpha is dropped (not composited),
    palettes are expanded, CMYK/YCbCr/LAB use Pillow's conversions, and 16/32-bit integer modes
    (`I;16`, `I`) are clamped to 0..255 rather than rescaled, as Pillow does. Only the first frame of
    an animated or multi-page file is used. `exif_transpose=True` applies the EXIF orientation first
    (as the official DeepSeek `load_image` does; llama.cpp ignores EXIF, so the default is off).

    Raises `ImageError` with a one-line message for a missing or unreadable file, data Pillow does
    not recognise, a truncated or corrupt file, an image of 0 pixels, and an image larger than
    Pillow's decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`; already the warning level is
    treated as an error).
    """
    what = _describe(path_or_file)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path_or_file) as im:
                im.load()
                page = ImageOps.exif_transpose(im) if exif_transpose else im
                rgb = to_rgb(page, what)
                return rgb.copy() if rgb is im else rgb
    except ImageError:
        raise
    except FileNotFoundError as e:
        raise ImageError(f"cannot read image {what}: no such file") from e
    except IsADirectoryError as e:
        raise ImageError(f"cannot read image {what}: it is a directory, expected an image file") from e
    except PermissionError as e:
        raise ImageError(f"cannot read image {what}: permission denied") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(
            f"cannot read image {what}: it exceeds the decompression-bomb limit of "
            f"{Image.MAX_IMAGE_PIXELS} pixels (PIL.Image.MAX_IMAGE_PIXELS): {_one_line(e)}"
        ) from e
    except Image.UnidentifiedImageError as e:
        size = _png_size(path_or_file)
        if size is not None and 0 in size:
            raise _empty_error(what, *size) from e
        raise ImageError(
            f"cannot read image {what}: not an image format Pillow can decode "
            "(expected PNG, JPEG, WebP, BMP, TIFF, ...)"
        ) from e
    except Exception as e:  # any decoder failure (truncated data, bad chunks, ...) is a bad input file
        raise ImageError(
            f"cannot read image {what}: decoding failed ({type(e).__name__}: {_one_line(e)}); "
            "expected a complete, valid image file"
        ) from e


def as_rgb_array(image: PathOrFile | Image.Image | np.ndarray) -> np.ndarray:
    """The page as a C-contiguous uint8 (H, W, 3) RGB array, from a path, file, PIL image or array."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ImageError(f"expected an RGB uint8 array of shape (H, W, 3), got {image.dtype} {image.shape}")
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise _empty_error("<array>", image.shape[1], image.shape[0])
        return np.ascontiguousarray(image)
    if isinstance(image, Image.Image):
        return np.asarray(to_rgb(image)).copy()
    return np.asarray(load_image(image)).copy()
