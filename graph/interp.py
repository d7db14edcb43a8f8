"""The interpreter: runs a graph node by node, with ggml's eval-callback protocol as hooks.

Storage model (ggml-semantics §1.5): every root (non-view) tensor owns a byte buffer; every tensor, view or
not, is a window `(root, byte offset, ne, nb)` on it, materialised as a NumPy strided array. Constant leaves
(weights) use their `data` array. Buffers come from an arena plan when one is given (one allocation shared by
every graph planned into it), otherwise they are allocated on first write and dropped after their last use.

Hooks follow `ggml_backend_sched_eval_callback`: `ask(node) -> bool` is called before a node is computed
("do you want to see this one?"); when it said yes, `observe(node, value, seconds) -> bool` is called after,
and returning False stops the run. Nodes nobody asked for cost nothing extra.

The debugging ladder (`NPGGML_DEBUG`, `npggml.debug(level)`, see `npggml.graph.debug`) wraps these hooks when
its level is above 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import numpy as np

from npggml.errors import KernelError, NpggmlError
from npggml.graph import debug
from npggml.graph.graph import Graph
from npggml.graph.tensor import OUTPUT, Tensor, type_info
from npggml.ops import registry

ALIGN = 32  # ggml CPU TENSOR_ALIGNMENT


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """Round to nearest even, quiet NaNs: ggml_compute_fp32_to_bf16."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((u + (0x7FFF + ((u >> 16) & 1))) >> 16).astype(np.uint16)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    return np.where(nan, ((u >> 16) | 64).astype(np.uint16), rounded)


def _describe_node(node: Tensor) -> str:
    ins = ", ".join(f"{s.name}{s.ne_str()}" if s is not None else "NULL" for s in node.srcs)
    return f"[{node.name}] = {registry.get(node.op).desc}({ins}) -> {node.ne_str()} {node.dtype}"


class Interpreter:
    def __init__(self, graph: Graph, *, plan=None, numerics: str = "ggml", fast: bool = True):
        self.graph = graph
        self.plan = plan  # npggml.graph.alloc.Plan or None
        self.numerics = numerics
        self.fast = fast
        self.buffers: dict[int, np.ndarray] = {}
        self.times: list[float] = [0.0] * len(graph.nodes)
        self.kernel_used: list[str] = [""] * len(graph.nodes)
        self._last_use = self._last_uses()

    # --- storage -------------------------------------------------------------------------------
    def _last_uses(self) -> dict[int, int]:
        last: dict[int, int] = {}
        for i, n in enumerate(self.graph.nodes):
            last[id(n.root)] = max(last.get(id(n.root), -1), i)
            for s in n.srcs:
                if s is not None:
                    last[id(s.root)] = i
        return last

    def _buffer(self, root: Tensor) -> np.ndarray:
        buf = self.buffers.get(id(root))
        if buf is None:
            if self.plan is not None:
                buf = self.plan.buffer_for(root)
            else:
                buf = np.empty(max(root.nbytes, 1), dtype=np.uint8)
            self.buffers[id(root)] = buf
        return buf

    def array(self, t: Tensor) -> np.ndarray:
        """The value of `t` as a NumPy array in NumPy order (a view of its storage; bf16 stays raw bits)."""
        root = t.root
        if root.data is not None:
            return _data_window(t, root)
        np_dtype = type_info(t.dtype)[0]
        if np_dtype is None:
            raise NpggmlError(f"{t.name}: quantised activations ({t.dtype}) are not supported")
        return np.ndarray(t.shape, np_dtype, buffer=self._buffer(root), offset=t.view_offs,
                          strides=tuple(reversed(t.nb)))

    def value(self, t: Tensor) -> np.ndarray:
        """The value as kernels see it: bf16 converted to float32."""
        a = self.array(t)
        return bf16_to_f32(a) if t.dtype == "bf16" else a

    def set_input(self, t: Tensor, value: np.ndarray) -> None:
        value = np.asarray(value)
        if value.shape != t.shape and value.size == t.nelements:
            value = value.reshape(t.shape)
        if value.shape != t.shape:
            raise NpggmlError(f"input {t.name}: got shape {value.shape}, expected {t.shape} (ne {t.ne_str()})")
        self._store(t, value)

    def _store(self, t: Tensor, value: np.ndarray) -> None:
        dst = self.array(t)
        if t.dtype == "bf16":
            value = f32_to_bf16(np.asarray(value, dtype=np.float32))
        with np.errstate(over="ignore"):  # f32 -> f16 beyond 65504 is inf, as the CPU's conversion gives
            np.copyto(dst, value, casting="unsafe")

    # --- execution -----------------------------------------------------------------------------
    def run(self, inputs: Mapping[Tensor | str, np.ndarray] | None = None, *,
            ask: Callable[[Tensor], bool] | None = None,
            observe: Callable[[Tensor, np.ndarray, float], bool] | None = None) -> list[np.ndarray]:
        """Compute the graph; returns a copy of each output's value, in the order of `graph.outputs`."""
        g = self.graph
        members = {id(t) for t in g.leafs} | {id(t) for t in g.nodes}
        for key, val in (inputs or {}).items():
            t = g.find(key) if isinstance(key, str) else key
            if id(t) not in members:
                raise NpggmlError(f"input {t.name!r} is not part of this graph")
            self.set_input(t, val)
        for leaf in g.leafs:
            if leaf.data is None and id(leaf) not in self.buffers:
                raise NpggmlError(f"graph input {leaf.name!r} {leaf.ne_str()} was not set")
        setting, finish = debug.current(), None
        if setting.level:
            ask, observe, finish = debug.attach(self, ask, observe, setting)
        with registry.numerics(self.numerics):
            for i, node in enumerate(g.nodes):
                wanted = ask(node) if ask is not None else False
                t0 = time.perf_counter()
                self._compute(i, node)
                self.times[i] = time.perf_counter() - t0
                if wanted and observe is not None:
                    if observe(node, self.value(node), self.times[i]) is False:
                        break
                self._release(i)
        if finish is not None:
            finish()
        return [np.array(self.value(o)) for o in g.outputs]

    def _compute(self, i: int, node: Tensor) -> None:
        d = registry.get(node.op)
        if d.view:
            self.kernel_used[i] = "view"
            return
        try:
            srcs = [self.value(s) if s is not None else None for s in node.srcs]
            if self.fast and d.fast is not None:
                # a fast kernel returns NotImplemented to decline (a type or layout it does not handle)
                if d.fast(self.array(node), node, *srcs, **node.params) is not NotImplemented:
                    self.kernel_used[i] = "fast"
                    return
            self.kernel_used[i] = "ref"
            result = d.ref(node, *srcs, **node.params)
            result = np.asarray(result)
            if result.shape != node.shape:
                raise ValueError(f"kernel returned shape {result.shape}, expected {node.shape}")
            self._store(node, result)
        except NpggmlError:
            raise
        except Exception as e:
            raise KernelError(f"{_describe_node(node)} built at {node.created_at}: "
                              f"{type(e).__name__}: {e}") from e

    def _release(self, i: int) -> None:
        if self.plan is not None:
            return  # the arena lives on
        for s in self.graph.nodes[i].srcs:
            if s is None:
                continue
            r = s.root
            if self._last_use.get(id(r)) == i and not (r.flags & OUTPUT) and r.data is None:
                self.buffers.pop(id(r), None)


def _data_window(t: Tensor, root: Tensor) -> np.ndarray:
    """A window on a constant leaf. Byte offsets/strides are in the stored ggml type; `data` may hold the
    dequantised float32 values, so they are rescaled from stored bytes to bytes of `data`."""
    data = root.data
    if t is root:
        return data.reshape(t.shape)
    if not data.flags.c_contiguous:
        data = root.data = np.ascontiguousarray(data)
    _, blck, tsize = type_info(root.dtype)
    item = data.dtype.itemsize

    def conv(b: int) -> int:
        q, r = divmod(b * blck, tsize)
        if r:
            raise NpggmlError(f"{t.name}: view of {root.name} ({root.dtype}) is not block-aligned")
        return q * item

    return np.ndarray(t.shape, data.dtype, buffer=data, offset=conv(t.view_offs),
                      strides=tuple(conv(b) for b in reversed(t.nb)))
