"""The op registry: every op is declared once.

An op declaration is its **shape rule** — a function of the source tensors (metadata only) and the op's
parameters, in the argument order of ggml's C constructor — decorated with `@op(...)`. The rule validates its
inputs with `require` and returns an `Out`. The NumPy **reference kernel** is attached with `@OP.kernel`, an
optional Numba kernel with `@OP.fast`.

Kernel contract:
- `ref(out, *srcs, **params) -> ndarray`: `out` is the node being computed (for its ne/dtype), each src is a
  NumPy array in NumPy order (`shape == reversed(ne)`, possibly strided; bf16 arrives as float32). It returns
  an array of shape `out.shape`; the interpreter converts it to `out.dtype` while storing it.
- `fast(dst, out, *srcs, **params) -> None`: writes the result into `dst` (preallocated, `out.shape`), or
  returns `NotImplemented` without writing to decline (the interpreter then runs the reference kernel).
Pure views (`view_*`, `reshape_*`, `permute`, `transpose`) have no kernel: their value is a strided window on
their root's storage.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
from collections.abc import Callable
from dataclasses import dataclass

REGISTRY: dict[str, OpDef] = {}

# Numerics of the CPU kernels. "ggml" reproduces ggml's CPU numerics where they differ from exact float32
# (f16 GELU tables, activation rounding to the weight's vec_dot type); "exact" computes the formulas in f32.
_NUMERICS: contextvars.ContextVar[str] = contextvars.ContextVar("npggml_numerics", default="ggml")


def ggml_numerics() -> bool:
    return _NUMERICS.get() == "ggml"


@contextlib.contextmanager
def numerics(kind: str):
    if kind not in ("ggml", "exact"):
        raise ValueError(f"numerics must be 'ggml' or 'exact', got {kind!r}")
    token = _NUMERICS.set(kind)
    try:
        yield
    finally:
        _NUMERICS.reset(token)


class RuleError(Exception):
    """Raised by a shape rule; the builder turns it into a ShapeError naming op, inputs and line."""


def require(cond: bool, msg: str) -> None:
    if not cond:
        raise RuleError(msg)


def is_row(t, n0: int) -> bool:
    """t is one F32 row of n0 (`[n0, 1, 1, 1]`): a fused op's weight or bias."""
    return t is not None and t.dtype == "f32" and t.ne == (n0, 1, 1, 1)


def require_row(t, n0: int, what: str) -> None:
    got = "none" if t is None else f"{t.dtype} {t.ne_str()}"
    require(is_row(t, n0), f"{what} must be one F32 row of {n0}, got {got}")


@dataclass
class Out:
    """What a shape rule returns.

    `view_of` = i makes the result share storage with source i: a pure view (with `nb` and a byte `offset`
    relative to that source) or, for ops that have a kernel, a write-through into that source (cpy, set_rows).
    """

    ne: tuple
    dtype: str
    nb: tuple | None = None
    offset: int = 0
    view_of: int | None = None
    name: str | None = None  # ggml's automatic name, e.g. "x (view)"


class OpDef:
    def __init__(self, name: str, rule: Callable, *, ggml: str, n_src: int, desc: str | None,
                 view: bool, inplace: bool, flops: Callable | None):
        self.name = name
        self.rule = rule
        self.ggml = ggml  # GGML_OP name, e.g. "MUL_MAT"
        self.desc = desc or ggml  # ggml_op_desc: the unary/glu name for UNARY/GLU
        self.n_src = n_src
        self.view = view  # pure view: no kernel
        self.inplace = inplace  # gallocr may let the result take over a dying source's bytes
        self.flops = flops  # (node) -> float
        self.ref: Callable | None = None
        self.fast: Callable | None = None
        self.signature = inspect.signature(rule)
        names = list(self.signature.parameters)
        self.src_names = tuple(names[:n_src])
        self.param_names = tuple(names[n_src:])
        self.__doc__ = rule.__doc__

    def kernel(self, fn: Callable) -> Callable:
        self.ref = fn
        return fn

    def fast_kernel(self, fn: Callable) -> Callable:
        self.fast = fn
        return fn

    def bind(self, args, kwargs) -> tuple[tuple, dict]:
        try:
            b = self.signature.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{self.name}{self.signature}: {e}") from None
        b.apply_defaults()
        vals = list(b.arguments.values())
        return tuple(vals[: self.n_src]), dict(zip(self.param_names, vals[self.n_src :]))

    def __repr__(self) -> str:
        return f"<op {self.name}{self.signature}>"


def op(name: str, *, ggml: str | None = None, srcs: int = 1, desc: str | None = None, view: bool = False,
       inplace: bool = False, flops: Callable | None = None):
    """Declare an op. The decorated function is its shape rule; its first `srcs` parameters are tensors."""

    def deco(rule: Callable) -> OpDef:
        if name in REGISTRY:
            raise ValueError(f"op {name!r} declared twice")
        d = OpDef(name, rule, ggml=ggml or name.upper(), n_src=srcs, desc=desc, view=view, inplace=inplace,
                  flops=flops)
        REGISTRY[name] = d
        return d

    return deco


def get(name: str) -> OpDef:
    _load_all()
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"no op named {name!r}") from None


def all_ops() -> dict[str, OpDef]:
    _load_all()
    return dict(REGISTRY)


_LOADED = False


def _load_all() -> None:
    global _LOADED
    if not _LOADED:
        _LOADED = True
        import npggml.ops  # noqa: F401  (the package imports every op module)
