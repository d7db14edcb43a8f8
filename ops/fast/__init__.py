"""Fast CPU kernels (Numba, NumPy's BLAS) attached to the ops declared in `npggml.ops`, and fused ops that the
graph rewrite passes in `npggml.graph.fuse` create.

Every kernel here is the `.fast` of an op: `fast(dst, out, *srcs, **params)` writes into the preallocated `dst`
and computes what the op's NumPy reference kernel computes, under the same numerics (`ggml_numerics()`), or
returns `NotImplemented` for a type or layout it does not handle (the interpreter then runs the reference).
Numba kernels are compiled on first use and cached on disk (`cache=True`, in a directory per version of the
sources: `npggml.ops._cache`), so a second process does not compile.
This package is imported last by `npggml.ops`, so every op it attaches to is declared by then.
"""

from npggml.ops.fast import (  # noqa: F401
    attn,
    binary,
    linalg,
    movement,
    norm,
    resize,
    sam_attn,
    sam_attn_rows,
    sam_rel_pos,
    softmax,
    unary,
)
from npggml.ops.registry import REGISTRY

if "rope_ext" in REGISTRY:
    from npggml.ops.fast import rope  # noqa: F401
if "im2col" in REGISTRY:
    from npggml.ops.fast import conv  # noqa: F401
