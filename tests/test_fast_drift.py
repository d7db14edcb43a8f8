"""No drift: a whole page encoded with the fast kernels equals the reference kernels' encoding (1e-5 relative to
the largest embedding magnitude), for the tiny v1 and v2 fixtures in both modes. Reference mode encodes a tiled
page (3x1 tiles + the global view); llama.cpp mode a page that is the global view alone, because its reference
mul_mat emulates ggml's kernels sum by sum in NumPy and a tiled page would take minutes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from npggml.models.encode import Encoder
from npggml.models.gguf_io import load_mmproj

FIXTURES = Path(__file__).parent / "fixtures"
PAGES = {"reference": "doc_2000x659.png", "llama.cpp": "doc_620x560.png"}  # grid 3x1 / no tiles


@pytest.mark.parametrize("mode", ["reference", "llama.cpp"])
@pytest.mark.parametrize("gguf", ["mmproj-tiny-dsocr-f32.gguf", "mmproj-tiny-dsocr2-f32.gguf"])
def test_fast_equals_reference_kernels(gguf, mode):
    model = load_mmproj(FIXTURES / "models" / gguf)
    image = FIXTURES / "images" / PAGES[mode]
    fast = Encoder(model, mode, fast=True, reserve=False).encode(image)
    ref = Encoder(model, mode, fast=False, reserve=False).encode(image)
    assert fast.grid == ref.grid and (fast.grid is not None) == (mode == "reference")
    used = set(fast.interpreter.kernel_used)
    assert "fast" in used
    assert set(ref.interpreter.kernel_used) <= {"ref", "view"}
    a, b = fast.embeddings, ref.embeddings
    assert a.shape == b.shape
    err = np.abs(a.astype(np.float64) - b).max()
    assert err <= 1e-5 * np.abs(b).max(), f"max |fast - ref| = {err:.3g}"
