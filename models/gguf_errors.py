"""Errors raised while reading an mmproj GGUF file.

Every message has the one-line form `FILE: what is wrong (expected what)`, so the CLI can print it as is.
The classes split the failures by who is at fault, which tests and callers can tell apart:

- `MalformedGGUFError`: the bytes are not a well-formed GGUF container (magic, truncation, tensor extents);
- `UnsupportedGGUFError`: a well-formed file that uses something npggml does not handle (version, dtype);
- `MmprojContentError`: a readable GGUF whose keys or tensors are not a valid mmproj of a known projector;
- `MissingTensorError`: a tensor the caller asked for is not in the file.
"""

from __future__ import annotations

import os

from npggml.errors import GGUFError


class GGUFFileError(GGUFError):
    """A `GGUFError` about one file, carrying the parts of its message separately."""

    def __init__(self, path: str | os.PathLike[str], what: str, expected: str):
        self.path = os.fspath(path)
        self.what = what
        self.expected = expected
        super().__init__(f"{self.path}: {what} (expected {expected})")


class MalformedGGUFError(GGUFFileError):
    """The file is not a well-formed GGUF container."""


class UnsupportedGGUFError(GGUFFileError):
    """The file is valid GGUF but uses a version, byte order or tensor type npggml does not support."""


class MmprojContentError(GGUFFileError):
    """The GGUF is readable but its metadata or tensors do not describe a supported mmproj."""


class MissingTensorError(MmprojContentError):
    """A tensor is absent from the file."""
