"""projector_type -> graph builder: the one switch between model families."""

from __future__ import annotations

import importlib

from npggml.errors import NpggmlError

BUILDERS = {
    "deepseekocr": ("npggml.models.deepseekocr", "DeepseekOCR"),
    "deepseekocr2": ("npggml.models.deepseekocr2", "DeepseekOCR2"),
    "mlp": ("npggml.models.llava", "Llava"),
}


def builder_for(projector: str):
    try:
        module, cls = BUILDERS[projector]
    except KeyError:
        raise NpggmlError(f"no graph builder for projector type {projector!r} "
                          f"(supported: {', '.join(sorted(BUILDERS))})") from None
    return getattr(importlib.import_module(module), cls)
