"""User-facing error types.

Every error a user can cause (bad file, bad image, bad option, impossible shape) derives from
`NpggmlError`; the CLI prints it as one line `npggml: error: ...` and exits 2.
"""


class NpggmlError(Exception):
    """Base class of all errors caused by user input."""


class ShapeError(NpggmlError):
    """An op was built with inputs whose shapes or types violate its rule."""


class KernelError(NpggmlError):
    """A kernel raised while computing a node; the message names the node and its builder line."""


class GGUFError(NpggmlError):
    """A GGUF file is unreadable, malformed, or not what the loader expects."""


class ImageError(NpggmlError):
    """An input image cannot be decoded or is unusable."""
