"""`eval_op`: run one op eagerly on NumPy arrays, in ggml's C argument order.

Array arguments are NumPy arrays in NumPy order (`shape == reversed(ne)`); the remaining arguments are the op's
parameters in the order of the ggml C function of that name:

    eval_op("permute", x, 1, 2, 0, 3)
    eval_op("view_2d", x, ne0, ne1, nb1, offset)
    eval_op("mul_mat", w, x)
    eval_op("soft_max_ext", a, mask, scale, max_bias)

Returns the result as a NumPy array in NumPy order (a copy) with as many dims as the widest array argument
(ops that fix the rank — `view_Nd`, `reshape_Nd`, `cont_Nd`, `argmax` — return that rank), never fewer than
the result's `n_dims`. `numerics="exact"` computes the float32 formulas
instead of reproducing ggml's CPU numerics.
"""

from __future__ import annotations

import numpy as np

from npggml.graph.context import Context
from npggml.graph.graph import Graph
from npggml.graph.interp import Interpreter
from npggml.ops import registry

_DTYPES = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16", np.dtype(np.int32): "i32"}


def eval_op(name: str, *args, numerics: str = "ggml", **params) -> np.ndarray:
    d = registry.get(name)
    ctx = Context()
    bound_srcs, bound_params = d.bind(args, params)
    leaves, values = [], {}
    for i, x in enumerate(bound_srcs):
        if x is None:
            leaves.append(None)
            continue
        x = np.asarray(x)
        if x.dtype not in _DTYPES:
            x = x.astype(np.float32) if x.dtype.kind == "f" else x.astype(np.int32)
        t = ctx.input(_DTYPES[x.dtype], tuple(reversed(x.shape)) or (1,), f"src{i}")
        leaves.append(t)
        values[t] = x
    # tensor-valued params (reshape/repeat take a shape donor) may be given as arrays
    for k, v in bound_params.items():
        if isinstance(v, np.ndarray):
            bound_params[k] = ctx.new_tensor(_DTYPES.get(v.dtype, "f32"), tuple(reversed(v.shape)), k)
    node = ctx.build(d, *leaves, **bound_params)
    g = Graph(node)
    (out,) = Interpreter(g, numerics=numerics, fast=False).run(values)
    rank = _fixed_rank(name)
    if rank is None:
        rank = max((np.ndim(x) for x in bound_srcs if x is not None), default=1)
    rank = max(rank, node.n_dims)
    return out.reshape(node.shape[4 - rank :])


def _fixed_rank(name: str) -> int | None:
    if name[-2:] in ("1d", "2d", "3d", "4d") and name.split("_")[0] in ("view", "reshape", "cont"):
        return int(name[-2])
    return {"argmax": 1}.get(name)
