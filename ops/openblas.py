"""The thread count and kernel family of the OpenBLAS that NumPy links (its C API, in NumPy's bundled libraries).

Its results are not independent of how a product is cut: on some builds (seen with 0.3.31's Haswell/Zen kernels)
the same row of `x @ y` differs in the last bits with the number of rows, the split of the columns, or the number
of threads. Under ggml numerics that matters (an f16 table lookup turns one ulp into ~5e-4), so the ggml-numerics
products run at a fixed thread count (`ops.linalg.ggml_matmul`). Without a findable OpenBLAS these are no-ops.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os

import numpy as np

_set = None
_get = None
_corename = None
_loaded = False


def _load() -> None:
    global _set, _get, _corename, _loaded
    if _loaded:
        return
    _loaded = True
    libdir = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
    for path in sorted(glob.glob(os.path.join(libdir, "*openblas*.so*"))):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in ("64_", ""):
                try:
                    s = getattr(lib, f"{prefix}_set_num_threads{suffix}")
                    g = getattr(lib, f"{prefix}_get_num_threads{suffix}")
                except AttributeError:
                    continue
                s.argtypes, s.restype = [ctypes.c_int], None
                g.argtypes, g.restype = [], ctypes.c_int
                _set, _get = s, g
                _corename = getattr(lib, f"{prefix}_get_corename{suffix}", None)
                if _corename is not None:
                    _corename.argtypes, _corename.restype = [], ctypes.c_char_p
                return


def get_threads() -> int | None:
    _load()
    return _get() if _get else None


def corename() -> str | None:
    """The kernels OpenBLAS chose when it loaded ("SkylakeX", "Haswell", ...; `OPENBLAS_CORETYPE` sets it)."""
    _load()
    return _corename().decode() if _corename else None


def set_threads(n: int) -> None:
    _load()
    if _set:
        _set(int(n))


@contextlib.contextmanager
def threads(n: int):
    """OpenBLAS with `n` threads inside the block, the previous count restored after it."""
    old = get_threads()
    if old != n:
        set_threads(n)
    try:
        yield
    finally:
        if old is not None and old != n:
            set_threads(old)
