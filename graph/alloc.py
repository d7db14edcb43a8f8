"""Arena planning as ggml's graph allocator does it (ggml-semantics §4), and reserve-once.

`plan_graph(graph)` simulates gallocr: inputs first at distinct offsets, then nodes in order; a node whose op
may run in place takes over a dying source's bytes (same type, ne and nb; last consumer; not an output);
otherwise it gets the best-fitting free block (ties: the later block), or the tail. A source is freed after
its last consumer; views cost nothing and keep their root alive; outputs are never freed. Sizes are
`ggml_nbytes` rounded up to 32 bytes.

`Arena.reserve(worst_graph)` allocates one buffer of the worst case's high-water mark; every later graph is
planned into it (`Arena.plan`). A graph that does not fit raises `ArenaError` naming both sizes, unless the
arena was made with `grow=True`, in which case it re-reserves (counted in `allocations`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from npggml.errors import NpggmlError
from npggml.graph.graph import Graph
from npggml.graph.tensor import INPUT, OUTPUT, Tensor
from npggml.ops import registry

ALIGN = 32  # ggml CPU TENSOR_ALIGNMENT
_TAIL = 1 << 62  # the last free block is unbounded: one CPU chunk without max size


class ArenaError(NpggmlError):
    pass


def aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


class _Blocks:
    """ggml_dyn_tallocr for one chunk: free blocks sorted by offset, the last one the unbounded tail."""

    def __init__(self):
        self.free: list[list[int]] = [[0, _TAIL]]
        self.high = 0

    def alloc(self, size: int) -> int:
        best = None
        for i in range(len(self.free) - 1):
            if self.free[i][1] >= size and (best is None or self.free[i][1] <= self.free[best][1]):
                best = i
        if best is None:
            best = len(self.free) - 1
        off, avail = self.free[best]
        if avail == size:
            del self.free[best]
        else:
            self.free[best] = [off + size, avail - size]
        self.high = max(self.high, off + size)
        return off

    def release(self, off: int, size: int) -> None:
        i = 0
        while i < len(self.free) and self.free[i][0] < off:
            i += 1
        self.free.insert(i, [off, size])
        if i + 1 < len(self.free) and off + size == self.free[i + 1][0]:  # merge with the next block
            self.free[i][1] += self.free.pop(i + 1)[1]
        if i > 0 and self.free[i - 1][0] + self.free[i - 1][1] == off:  # and with the previous one
            self.free[i - 1][1] += self.free.pop(i)[1]


@dataclass
class Plan:
    offsets: dict[int, int] = field(default_factory=dict)  # id(root tensor) -> byte offset
    sizes: dict[int, int] = field(default_factory=dict)  # id(root tensor) -> aligned bytes
    size: int = 0  # high-water mark
    inplace: dict[int, int] = field(default_factory=dict)  # id(node) -> id(source whose bytes it took)
    lifetimes: dict[int, tuple[int, int]] = field(default_factory=dict)  # id -> (first step, last step)
    arena: Arena | None = None

    def buffer_for(self, root: Tensor) -> np.ndarray:
        off, size = self.offsets[id(root)], self.sizes[id(root)]
        return self.arena.buffer[off : off + size]


def _owned(t: Tensor) -> bool:
    return t.data is None


def _same_layout(a: Tensor, b: Tensor) -> bool:
    return a.dtype == b.dtype and a.ne == b.ne and a.nb == b.nb


def plan_graph(graph: Graph) -> Plan:
    plan, blocks = Plan(), _Blocks()
    children: dict[int, int] = {}
    views: dict[int, int] = {}
    for n in graph.nodes:
        for s in n.srcs:
            if s is not None:
                children[id(s)] = children.get(id(s), 0) + 1
        if n.is_view:
            views[id(n.view_src)] = views.get(id(n.view_src), 0) + 1
    step = 0
    released: set[int] = set()
    transferred: set[int] = set()  # taken over in place: freed by their successor, not by themselves

    def allocate(t: Tensor) -> None:
        if id(t) in plan.offsets or t.is_view or not _owned(t):
            return
        size = aligned(max(t.nbytes, 1))
        plan.offsets[id(t)], plan.sizes[id(t)] = blocks.alloc(size), size
        plan.lifetimes[id(t)] = (step, step)

    def release(t: Tensor) -> None:
        if id(t) in plan.offsets and not (t.flags & OUTPUT) and id(t) not in transferred:
            blocks.release(plan.offsets[id(t)], plan.sizes[id(t)])
            first, _ = plan.lifetimes[id(t)]
            plan.lifetimes[id(t)] = (first, step)
            released.add(id(t))

    for leaf in graph.leafs:
        allocate(leaf)
    for n in graph.nodes:
        if n.flags & INPUT:
            allocate(n)
        for s in n.srcs:
            if s is not None and s.flags & INPUT:
                allocate(s)

    for step, node in enumerate(graph.nodes, start=1):
        for s in node.srcs:
            if s is not None:
                allocate(s)
        if not _try_inplace(node, plan, children, views, step, transferred):
            allocate(node)
        for s in node.srcs:
            if s is None:
                continue
            children[id(s)] -= 1
            if children[id(s)] == 0 and views.get(id(s), 0) == 0:
                if s.is_view:
                    root = s.view_src
                    views[id(root)] -= 1
                    if views[id(root)] == 0 and children.get(id(root), 0) == 0:
                        release(root)
                else:
                    release(s)
    end = len(graph.nodes) + 1
    for key, (first, _) in plan.lifetimes.items():
        if key not in released and key not in transferred:
            plan.lifetimes[key] = (first, end)  # outputs (and anything never freed) live to the end
    plan.size = blocks.high
    return plan


def _try_inplace(node: Tensor, plan: Plan, children: dict, views: dict, step: int, transferred: set) -> bool:
    if node.is_view or not registry.get(node.op).inplace:
        return False
    for p in node.srcs:
        if p is None or not _owned(p.root) or (p.flags & OUTPUT) or (p.root.flags & OUTPUT):
            continue
        if not _same_layout(node, p) or children.get(id(p)) != 1 or views.get(id(p), 0) != 0:
            continue
        if p.is_view:
            root = p.view_src
            if views.get(id(root)) != 1 or children.get(id(root), 0) != 0 or p.view_offs != 0:
                continue
            taken = root
        else:
            taken = p
        if id(taken) not in plan.offsets:
            continue
        # the node takes over the block: both keep their address, only the node will free it (ggml clears
        # the parent's `allocated` flag)
        plan.offsets[id(node)] = plan.offsets[id(taken)]
        plan.sizes[id(node)] = plan.sizes[id(taken)]
        plan.lifetimes[id(taken)] = (plan.lifetimes[id(taken)][0], step)
        plan.lifetimes[id(node)] = (step, step)
        plan.inplace[id(node)] = id(taken)
        transferred.add(id(taken))
        return True
    return False


class Arena:
    """One buffer, reserved for the worst case; later graphs are planned into it."""

    def __init__(self, *, grow: bool = False):
        self.grow = grow
        self.buffer = np.empty(0, dtype=np.uint8)
        self.allocations = 0  # how many times a buffer was allocated

    @property
    def nbytes(self) -> int:
        return self.buffer.nbytes

    def reserve(self, graph: Graph) -> Plan:
        plan = plan_graph(graph)
        if plan.size > self.nbytes:
            self.buffer = np.empty(plan.size, dtype=np.uint8)
            self.allocations += 1
        plan.arena = self
        return plan

    def plan(self, graph: Graph) -> Plan:
        plan = plan_graph(graph)
        if plan.size > self.nbytes:
            if not self.grow:
                raise ArenaError(f"graph needs an arena of {plan.size} bytes but {self.nbytes} bytes were "
                                 "reserved (reserve the larger graph first, or allow re-reserving)")
            return self.reserve(graph)
        plan.arena = self
        return plan


@dataclass(frozen=True)
class MemoryReport:
    """Bytes a graph needs, as gallocr and llama.cpp's weight buffer would count them.

    - `peak_bytes`: this graph's arena high-water mark (gallocr `reserve_n_size`: what it needs alone);
    - `arena_bytes`: the arena it runs in (the reserved worst case; equals `peak_bytes` without an arena);
    - `input_bytes`: graph inputs (pixels, index tables), part of `peak_bytes`;
    - `weight_bytes`: the constant leaves in their stored ggml types (llama.cpp's weight buffer);
    - `weight_resident_bytes`: the same weights as npggml holds them (dequantised float32 arrays).
    """

    peak_bytes: int
    arena_bytes: int
    input_bytes: int
    weight_bytes: int
    weight_resident_bytes: int
    n_weights: int
    n_nodes: int

    def as_dict(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.__dict__.items()}


def memory_report(graph: Graph, plan: Plan | None = None, arena: Arena | None = None) -> MemoryReport:
    """Arena, input and weight bytes of a built graph (planning is metadata only: nothing runs)."""
    if plan is None:
        plan = plan_graph(graph)
    weights = [t for t in graph.leafs if t.data is not None]
    inputs = {id(t): t for t in graph.inputs() if not t.is_view and _owned(t)}
    owner = arena if arena is not None else plan.arena
    return MemoryReport(
        peak_bytes=plan.size,
        arena_bytes=owner.nbytes if owner is not None else plan.size,
        input_bytes=sum(aligned(max(t.nbytes, 1)) for t in inputs.values()),
        weight_bytes=sum(t.nbytes for t in weights),
        weight_resident_bytes=sum(int(t.data.nbytes) for t in weights),
        n_weights=len(weights),
        n_nodes=len(graph.nodes),
    )
