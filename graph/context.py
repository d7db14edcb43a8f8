"""Builder context: creates tensors and runs each op's shape rule when the node is built.

`ctx.<op>(...)` exists for every registered op and takes ggml's C argument order (minus the ggml_context):
`ctx.mul_mat(w, x)`, `ctx.permute(x, 1, 2, 0, 3)`, `ctx.view_2d(x, ne0, ne1, nb1, offset)`.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from npggml.errors import ShapeError
from npggml.graph.tensor import INPUT, Tensor, caller_location, packed_nb, pad4
from npggml.ops import registry
from npggml.ops.registry import OpDef, RuleError


def _describe(srcs) -> str:
    parts = []
    for t in srcs:
        if t is None:
            parts.append("NULL")
        else:
            parts.append(f"{t.name or '?'}{t.ne_str()} {t.dtype}")
    return ", ".join(parts)


class Context:
    """Makes leaves and nodes. Nodes are created only through op shape rules."""

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            d = registry.get(name)
        except KeyError:
            raise AttributeError(f"no op or method named {name!r}") from None
        return partial(self.build, d)

    # --- leaves --------------------------------------------------------------------------------
    def new_tensor(self, dtype: str, ne, name: str = "") -> Tensor:
        """An uninitialised leaf (a graph input once flagged with `set_input`)."""
        ne = pad4(ne)
        return Tensor(dtype=dtype, ne=ne, nb=packed_nb(dtype, ne), name=name, created_at=caller_location())

    def input(self, dtype: str, ne, name: str) -> Tensor:
        t = self.new_tensor(dtype, ne, name)
        t.flags |= INPUT
        return t

    def constant(self, data: np.ndarray, name: str, dtype: str | None = None) -> Tensor:
        """A leaf with data, e.g. a weight. `data` is in NumPy order; `dtype` is the stored ggml type
        (a dequantised f16/q8_0 weight keeps its file type so that printers and ggml numerics see it)."""
        if data.ndim > 4:
            raise ValueError(f"{name}: at most 4 dims")
        if dtype is None:
            dtype = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16", np.dtype(np.int32): "i32"}[
                data.dtype
            ]
        ne = pad4(tuple(reversed(data.shape)))
        return Tensor(dtype=dtype, ne=ne, nb=packed_nb(dtype, ne), name=name, data=data,
                      created_at=caller_location())

    # --- nodes ---------------------------------------------------------------------------------
    def build(self, d: OpDef, *args, **kwargs) -> Tensor:
        srcs, params = d.bind(args, kwargs)
        for s in srcs:
            if s is not None and not isinstance(s, Tensor):
                raise TypeError(f"{d.name}: expected a Tensor, got {type(s).__name__}")
        where = caller_location()
        try:
            out = d.rule(*srcs, **params)
        except RuleError as e:
            raise ShapeError(f"{d.name}({_describe(srcs)}) at {where}: {e}") from None
        ne = pad4(out.ne)
        if any(n < 0 for n in ne):
            raise ShapeError(f"{d.name}({_describe(srcs)}) at {where}: negative size {ne}")
        view_src, offs = None, 0
        nb = packed_nb(out.dtype, ne) if out.nb is None else tuple(out.nb)
        if out.view_of is not None:
            base = srcs[out.view_of]
            view_src, offs = base.root, base.view_offs + out.offset
        t = Tensor(dtype=out.dtype, ne=ne, nb=nb, op=d.name, srcs=srcs, params=params,
                   view_src=view_src, view_offs=offs, created_at=where)
        if out.name is not None:
            t.name = out.name[:63]
        return t
