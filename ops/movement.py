"""Data movement: copies, views, reshapes, permutes, concat, rows, repeat, pad (ggml-semantics §2.1–§2.6,
§2.10, §2.20). Arrays in kernels are in NumPy order: NumPy axis j is ggml dim 3 - j."""

from __future__ import annotations

import inspect

import numpy as np

from npggml.graph.tensor import Tensor, packed_nb, pad4, row_size, type_info
from npggml.ops.registry import Out, op, require


def _named(t: Tensor, suffix: str) -> str:
    return f"{t.name} ({suffix})"


def _same_count(a: Tensor, ne) -> None:
    n = 1
    for d in ne:
        n *= d
    require(n == a.nelements, f"element count {a.nelements} != {n} for ne {tuple(ne)}")


# --- copies --------------------------------------------------------------------------------------


@op("dup", ggml="DUP")
def dup(a):
    return Out(a.ne, a.dtype)


@dup.kernel
def _dup(out, a):
    return a


@op("cpy", ggml="CPY", srcs=2)
def cpy(a, b):
    """Copy a's elements, in logical order, into b (any shapes of equal size); the result is a view of b."""
    require(a.nelements == b.nelements, f"element counts differ: {a.nelements} vs {b.nelements}")
    name = f"{b.name} (copy of {a.name})" if b.name else f"{a.name} (copy)"
    return Out(b.ne, b.dtype, nb=b.nb, view_of=1, name=name)


@cpy.kernel
def _cpy(out, a, b):
    return np.ascontiguousarray(a).reshape(out.shape)


@op("cast", ggml="CPY")
def cast(a, type):
    type_info(type)
    return Out(a.ne, type, name=f"{a.name} (copy)")


@cast.kernel
def _cast(out, a, type):
    return a


@op("cont", ggml="CONT")
def cont(a):
    return Out(a.ne, a.dtype, name=_named(a, "cont"))


@cont.kernel
def _cont(out, a):
    return np.ascontiguousarray(a)


def _cont_nd(n: int):
    def rule(a, ne0, ne1=1, ne2=1, ne3=1):
        ne = (ne0, ne1, ne2, ne3)
        _same_count(a, ne)
        return Out(ne, a.dtype, name=_named(a, "cont"))

    d = op(f"cont_{n}d", ggml="CONT")(_restrict(rule, n))

    @d.kernel
    def _k(out, a, **_):
        return np.ascontiguousarray(a).reshape(out.shape)

    return d


def _restrict(rule, n: int):
    """`rule` with a signature of exactly n sizes (cont_2d takes a, ne0, ne1), as ggml's C functions."""
    params = [inspect.Parameter(p, inspect.Parameter.POSITIONAL_OR_KEYWORD) for p in ("a", "ne0", "ne1",
                                                                                       "ne2", "ne3")[: n + 1]]

    def sized(a, **ne):
        return rule(a, **ne)

    sized.__signature__ = inspect.Signature(params)
    return sized


cont_1d, cont_2d, cont_3d, cont_4d = (_cont_nd(n) for n in range(1, 5))


# --- views ---------------------------------------------------------------------------------------


def _reshape_nd(n: int):
    def rule(a, ne0, ne1=1, ne2=1, ne3=1):
        require(a.is_contiguous(), "reshape needs a contiguous source (ggml_cont it first)")
        ne = (ne0, ne1, ne2, ne3)
        _same_count(a, ne)
        return Out(ne, a.dtype, nb=packed_nb(a.dtype, pad4(ne)), view_of=0, name=_named(a, "reshaped"))

    return op(f"reshape_{n}d", ggml="RESHAPE", view=True)(_restrict(rule, n))


reshape_1d, reshape_2d, reshape_3d, reshape_4d = (_reshape_nd(n) for n in range(1, 5))


@op("reshape", ggml="RESHAPE", view=True)
def reshape(a, b):
    """Reshape a to b's shape (b is not a source, only its ne is used)."""
    require(a.is_contiguous(), "reshape needs a contiguous source (ggml_cont it first)")
    _same_count(a, b.ne)
    return Out(b.ne, a.dtype, nb=packed_nb(a.dtype, b.ne), view_of=0, name=_named(a, "reshaped"))


def _view_check(a, ne, offset):
    require(offset >= 0, f"negative view offset {offset}")
    need = row_size(a.dtype, ne[0]) * ne[1] * ne[2] * ne[3] + offset
    require(need <= a.root.nbytes, f"view of {need} bytes (offset {offset}) exceeds {a.root.nbytes} bytes")


@op("view_1d", ggml="VIEW", view=True)
def view_1d(a, ne0, offset):
    ne = (ne0, 1, 1, 1)
    _view_check(a, ne, offset)
    return Out(ne, a.dtype, nb=packed_nb(a.dtype, ne), offset=offset, view_of=0, name=_named(a, "view"))


@op("view_2d", ggml="VIEW", view=True)
def view_2d(a, ne0, ne1, nb1, offset):
    ne = (ne0, ne1, 1, 1)
    _view_check(a, ne, offset)
    nb0 = type_info(a.dtype)[2]
    return Out(ne, a.dtype, nb=(nb0, nb1, nb1 * ne1, nb1 * ne1), offset=offset, view_of=0,
               name=_named(a, "view"))


@op("view_3d", ggml="VIEW", view=True)
def view_3d(a, ne0, ne1, ne2, nb1, nb2, offset):
    ne = (ne0, ne1, ne2, 1)
    _view_check(a, ne, offset)
    nb0 = type_info(a.dtype)[2]
    return Out(ne, a.dtype, nb=(nb0, nb1, nb2, nb2 * ne2), offset=offset, view_of=0, name=_named(a, "view"))


@op("view_4d", ggml="VIEW", view=True)
def view_4d(a, ne0, ne1, ne2, ne3, nb1, nb2, nb3, offset):
    ne = (ne0, ne1, ne2, ne3)
    _view_check(a, ne, offset)
    nb0 = type_info(a.dtype)[2]
    return Out(ne, a.dtype, nb=(nb0, nb1, nb2, nb3), offset=offset, view_of=0, name=_named(a, "view"))


@op("permute", ggml="PERMUTE", view=True)
def permute(a, axis0, axis1, axis2, axis3):
    """Source dim i goes to position axis_i."""
    axes = (axis0, axis1, axis2, axis3)
    require(sorted(axes) == [0, 1, 2, 3], f"axes {axes} are not a permutation of 0..3")
    ne, nb = [0] * 4, [0] * 4
    for i, ax in enumerate(axes):
        ne[ax], nb[ax] = a.ne[i], a.nb[i]
    return Out(tuple(ne), a.dtype, nb=tuple(nb), view_of=0, name=_named(a, "permuted"))


@op("transpose", ggml="TRANSPOSE", view=True)
def transpose(a):
    return Out((a.ne[1], a.ne[0], a.ne[2], a.ne[3]), a.dtype, nb=(a.nb[1], a.nb[0], a.nb[2], a.nb[3]),
               view_of=0, name=_named(a, "transposed"))


# --- concat, rows, repeat, pad -------------------------------------------------------------------


@op("concat", ggml="CONCAT", srcs=2)
def concat(a, b, dim):
    require(0 <= dim < 4, f"dim {dim} out of range 0..3")
    require(a.dtype == b.dtype, f"types differ: {a.dtype} vs {b.dtype}")
    for i in range(4):
        require(i == dim or a.ne[i] == b.ne[i], f"ne[{i}] differs: {a.ne[i]} vs {b.ne[i]}")
    ne = list(a.ne)
    ne[dim] += b.ne[dim]
    return Out(tuple(ne), a.dtype)


@concat.kernel
def _concat(out, a, b, dim):
    return np.concatenate([a, b], axis=3 - dim)


@op("get_rows", ggml="GET_ROWS", srcs=2)
def get_rows(a, b):
    """Rows a[:, b[r, i2, i3], i2, i3]; F32 result (I32 for I32 a), F16/quantised rows converted."""
    require(b.dtype == "i32", f"indices must be i32, got {b.dtype}")
    require(a.ne[2] == b.ne[1] and a.ne[3] == b.ne[2] and b.ne[3] == 1,
            "need a.ne2 == b.ne1, a.ne3 == b.ne2, b.ne3 == 1")
    return Out((a.ne[0], b.ne[0], b.ne[1], b.ne[2]), "i32" if a.dtype == "i32" else "f32")


@get_rows.kernel
def _get_rows(out, a, b):
    idx = b[0]  # (ne3, ne2, n_rows)
    if idx.size and (idx.min() < 0 or idx.max() >= a.shape[2]):
        raise IndexError(f"row index out of range [0, {a.shape[2]})")
    return np.take_along_axis(a, idx[..., None].astype(np.intp), axis=2)


@op("set_rows", ggml="SET_ROWS", srcs=3)
def set_rows(a, b, c):
    """Write b's rows into a at rows c (broadcast over dims 2/3 by modulo); the result is a view of a."""
    require(c.dtype in ("i32", "i64"), f"indices must be i32 or i64, got {c.dtype}")
    require(b.dtype in ("f32", "f16"), f"source must be f32 or f16, got {b.dtype}")
    require(a.ne[0] == b.ne[0], f"row lengths differ: {a.ne[0]} vs {b.ne[0]}")
    require(a.ne[2] == b.ne[2] and a.ne[3] == b.ne[3], "a and b must agree in dims 2 and 3")
    require(c.ne[0] == b.ne[1] and c.ne[3] == 1, "need c.ne0 == b.ne1 and c.ne3 == 1")
    require(b.ne[2] % c.ne[1] == 0 and b.ne[3] % c.ne[2] == 0, "c must broadcast over b's dims 2 and 3")
    require(a.is_contiguous_rows() and b.is_contiguous_rows(), "rows must be contiguous")
    return Out(a.ne, a.dtype, nb=a.nb, view_of=0, name=_named(a, "view"))


@set_rows.kernel
def _set_rows(out, a, b, c):
    res = np.array(a, dtype=np.float32 if a.dtype == np.float16 else a.dtype)
    n3, n2, nr = b.shape[0], b.shape[1], b.shape[2]
    idx = c[0]
    if idx.size and (idx.min() < 0 or idx.max() >= a.shape[2]):
        raise IndexError(f"row index out of range [0, {a.shape[2]})")
    for i3 in range(n3):
        for i2 in range(n2):
            rows = idx[i3 % idx.shape[0], i2 % idx.shape[1]]
            res[i3, i2, rows[:nr]] = b[i3, i2]
    return res


def _can_repeat(a: Tensor, ne) -> bool:
    if any(d == 0 for d in a.ne):
        return all(d == 0 for d in ne) or any(d == 0 for d in ne)
    return all(ne[i] % a.ne[i] == 0 for i in range(4))


@op("repeat", ggml="REPEAT")
def repeat(a, b):
    """Tile a to b's shape (b is not a source, only its ne is used)."""
    require(_can_repeat(a, b.ne), f"{a.ne_str()} cannot be tiled to {b.ne_str()}")
    return Out(b.ne, a.dtype)


@repeat.kernel
def _repeat(out, a, b):
    return np.tile(a, tuple(o // i for o, i in zip(out.shape, a.shape)))


@op("repeat_4d", ggml="REPEAT")
def repeat_4d(a, ne0, ne1, ne2, ne3):
    ne = (ne0, ne1, ne2, ne3)
    require(_can_repeat(a, ne), f"{a.ne_str()} cannot be tiled to {ne}")
    return Out(ne, a.dtype)


@repeat_4d.kernel
def _repeat_4d(out, a, **_):
    return np.tile(a, tuple(o // i for o, i in zip(out.shape, a.shape)))


@op("pad", ggml="PAD")
def pad(a, p0, p1, p2, p3):
    """Zeros appended at the end of each dim."""
    require(min(p0, p1, p2, p3) >= 0, "padding must be >= 0")
    require(a.dtype == "f32", f"pad is F32 only, got {a.dtype}")
    return Out((a.ne[0] + p0, a.ne[1] + p1, a.ne[2] + p2, a.ne[3] + p3), a.dtype)


@pad.kernel
def _pad(out, a, p0, p1, p2, p3):
    return np.pad(a, [(0, p3), (0, p2), (0, p1), (0, p0)])


@op("pad_ext", ggml="PAD")
def pad_ext(a, lp0, rp0, lp1, rp1, lp2, rp2, lp3, rp3):
    ps = (lp0, rp0, lp1, rp1, lp2, rp2, lp3, rp3)
    require(min(ps) >= 0, "padding must be >= 0")
    require(a.dtype == "f32", f"pad is F32 only, got {a.dtype}")
    return Out(tuple(a.ne[i] + ps[2 * i] + ps[2 * i + 1] for i in range(4)), a.dtype)


@pad_ext.kernel
def _pad_ext(out, a, lp0, rp0, lp1, rp1, lp2, rp2, lp3, rp3):
    return np.pad(a, [(lp3, rp3), (lp2, rp2), (lp1, rp1), (lp0, rp0)])
