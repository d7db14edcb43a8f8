"""The tensor node: ggml's `struct ggml_tensor`, minus the data pointer.

A Tensor describes a value: its element type, its shape `ne` (ne0 fastest) and byte strides `nb`, the op that
produces it with its sources and parameters, and, for views, the root tensor whose storage it shares and the
byte offset into it. Values live elsewhere (the interpreter's buffers, or `data` for constant leaves).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

# flags (ggml.h)
INPUT, OUTPUT, PARAM = 1, 2, 4

# ggml type name -> (numpy dtype of a value held in memory, block size, bytes per block)
_PLAIN = {
    "f32": (np.float32, 1, 4),
    "f16": (np.float16, 1, 2),
    "bf16": (np.uint16, 1, 2),  # raw bfloat16 bits; kernels see float32 (see graph.values)
    "f64": (np.float64, 1, 8),
    "i8": (np.int8, 1, 1),
    "i16": (np.int16, 1, 2),
    "i32": (np.int32, 1, 4),
    "i64": (np.int64, 1, 8),
}


def _quant_types() -> dict[str, tuple[None, int, int]]:
    out = {}
    for t, (blck, size) in GGML_QUANT_SIZES.items():
        if blck > 1:
            name = t.name.lower().replace("_k", "_K")
            out[name] = (None, blck, size)
    return out


TYPES = {**_PLAIN, **_quant_types()}


def type_info(dtype: str) -> tuple[np.dtype | None, int, int]:
    try:
        return TYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown ggml type {dtype!r}") from None


def ggml_type_id(dtype: str) -> int:
    return int(GGMLQuantizationType[dtype.upper()])


def is_quantized(dtype: str) -> bool:
    return type_info(dtype)[1] > 1


def row_size(dtype: str, n: int) -> int:
    _, blck, size = type_info(dtype)
    if n % blck:
        raise ValueError(f"row of {n} elements is not a multiple of the {dtype} block size {blck}")
    return size * n // blck


def packed_nb(dtype: str, ne) -> tuple[int, int, int, int]:
    """Strides of a freshly created (packed) tensor, as `ggml_new_tensor_impl` sets them."""
    _, blck, size = type_info(dtype)
    nb0 = size
    nb1 = nb0 * (ne[0] // blck)
    nb2 = nb1 * ne[1]
    nb3 = nb2 * ne[2]
    return (nb0, nb1, nb2, nb3)


def pad4(ne) -> tuple[int, int, int, int]:
    ne = tuple(int(n) for n in ne)
    if len(ne) > 4:
        raise ValueError(f"at most 4 dims, got {ne}")
    return ne + (1,) * (4 - len(ne))


_PKG_DIRS = tuple(str(Path(__file__).resolve().parent.parent / d) for d in ("graph", "ops"))


def caller_location() -> str:
    """`file:line` of the first frame outside npggml's graph/ops machinery: the builder line."""
    f = sys._getframe(1)
    while f is not None and f.f_code.co_filename.startswith(_PKG_DIRS):
        f = f.f_back
    if f is None:
        return "?"
    return f"{Path(f.f_code.co_filename).name}:{f.f_lineno}"


@dataclass(eq=False)
class Tensor:
    """One node or leaf of a graph. Identity-hashed; compare tensors with `is`."""

    dtype: str
    ne: tuple[int, int, int, int]
    nb: tuple[int, int, int, int]
    op: str = "none"
    srcs: tuple[Tensor | None, ...] = ()
    params: dict = field(default_factory=dict)
    name: str = ""
    flags: int = 0
    view_src: Tensor | None = None  # root (non-view) tensor whose storage this one shares
    view_offs: int = 0  # absolute byte offset into the root
    created_at: str = "?"
    data: np.ndarray | None = None  # constant leaves (weights): the value, NumPy shape == reversed(ne)

    # --- ggml size and shape functions (ggml-semantics §1.3, §1.6) -------------------------------
    @property
    def nelements(self) -> int:
        n = 1
        for d in self.ne:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        if any(d <= 0 for d in self.ne):
            return 0
        _, blck, size = type_info(self.dtype)
        if blck == 1:
            return size + sum((self.ne[i] - 1) * self.nb[i] for i in range(4))
        return self.ne[0] * self.nb[0] // blck + sum((self.ne[i] - 1) * self.nb[i] for i in range(1, 4))

    @property
    def n_dims(self) -> int:
        for i in range(3, 0, -1):
            if self.ne[i] > 1:
                return i + 1
        return 1

    @property
    def shape(self) -> tuple[int, ...]:
        """NumPy shape of the value: reversed ne."""
        return tuple(reversed(self.ne))

    @property
    def root(self) -> Tensor:
        return self.view_src if self.view_src is not None else self

    @property
    def is_view(self) -> bool:
        return self.view_src is not None

    @property
    def is_leaf(self) -> bool:
        return self.op == "none"

    def is_contiguous(self, m: int = 0, n: int = 4) -> bool:
        """`ggml_is_contiguous_m_n`: dims 1..m may have any stride, the rest up to n must be packed."""
        _, blck, size = type_info(self.dtype)
        if self.ne[0] != blck and self.nb[0] != size:
            return False
        nxt = size * self.ne[0] // blck
        for i in range(1, n):
            if i <= m:
                nxt = self.ne[i] * self.nb[i]
            else:
                if self.ne[i] != 1 and self.nb[i] != nxt:
                    return False
                nxt *= self.ne[i]
        return True

    def is_contiguous_rows(self) -> bool:
        _, blck, size = type_info(self.dtype)
        return self.ne[0] == blck or self.nb[0] == size

    def set_name(self, name: str) -> Tensor:
        self.name = name[:63]
        return self

    def set_input(self) -> Tensor:
        self.flags |= INPUT
        return self

    def set_output(self) -> Tensor:
        t = self
        while t is not None:
            t.flags |= OUTPUT
            t = t.view_src
        return self

    def ne_str(self) -> str:
        return "{" + ",".join(str(d) for d in self.ne[: self.n_dims]) + "}"

    def __repr__(self) -> str:
        return f"Tensor({self.name or '?'}: {self.op} {self.ne_str()} {self.dtype})"
