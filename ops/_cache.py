"""Where Numba caches the compiled kernels: one directory per version of the kernel sources.

Numba checks a cached kernel against its own source file only (its modification time and size). A kernel that
inlines a helper from another file (`exp32`, `v_expf`, the decorators in `ops/fast/_common.py`) would keep its
old machine code after that other file changes: silently stale. So `npggml.ops` points `numba.config.CACHE_DIR`,
before any kernel is declared, at `<base>/<digest>`, the digest over every Python source of `npggml.ops`: any
change to any of them starts a new, empty cache. `<base>` is `NUMBA_CACHE_DIR` when set, else
`$XDG_CACHE_HOME/npggml/numba` (`~/.cache/npggml/numba`). A directory that cannot be created sends Numba to its
next cache locator (next to the sources).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numba

OPS_DIR = Path(__file__).resolve().parent


def sources_digest(root: Path = OPS_DIR) -> str:
    """sha256 (16 hex digits) over the relative paths and contents of every .py file under root, in path order."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def default_base() -> Path:
    user = os.environ.get("NUMBA_CACHE_DIR")
    if user:
        return Path(user)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "npggml" / "numba"


def use_versioned_cache() -> Path:
    """Set Numba's cache directory to this version's; returns it."""
    path = default_base() / sources_digest()
    numba.config.CACHE_DIR = str(path)
    return path
