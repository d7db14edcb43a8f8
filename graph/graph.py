"""A compute graph: leaves and nodes in execution order, as `ggml_build_forward_expand` orders them."""

from __future__ import annotations

from npggml.graph.tensor import OUTPUT, PARAM, Tensor


class Graph:
    """Depth-first post-order over `srcs` (left to right) from each output, in the order given.

    Tensors with op "none" become leaves; everything else (views included) is a node. Unnamed tensors get
    ggml's `leaf_%d` / `node_%d` names. Outputs (and their view roots) are flagged OUTPUT.
    """

    def __init__(self, outputs: Tensor | list[Tensor]):
        if isinstance(outputs, Tensor):
            outputs = [outputs]
        self.outputs: list[Tensor] = list(outputs)
        self.nodes: list[Tensor] = []
        self.leafs: list[Tensor] = []
        seen: set[int] = set()
        for out in self.outputs:
            out.set_output()
            self._expand(out, seen)
        for i, t in enumerate(self.leafs):
            if not t.name:
                t.name = f"leaf_{i}"
        for i, t in enumerate(self.nodes):
            if not t.name:
                t.name = f"node_{i}"
        self.index = {id(t): i for i, t in enumerate(self.nodes)}

    def _expand(self, root: Tensor, seen: set[int]) -> None:
        # iterative DFS: graphs of full-size encoders are deeper than Python's recursion limit
        stack = [(root, 0)]
        while stack:
            t, k = stack.pop()
            if k == 0 and id(t) in seen:
                continue
            if k < len(t.srcs):
                stack.append((t, k + 1))
                s = t.srcs[k]
                if s is not None and id(s) not in seen:
                    stack.append((s, 0))
                continue
            seen.add(id(t))
            if t.op == "none" and not (t.flags & PARAM):
                self.leafs.append(t)
            else:
                self.nodes.append(t)

    def __len__(self) -> int:
        return len(self.nodes)

    def __iter__(self):
        return iter(self.nodes)

    def find(self, name: str) -> Tensor:
        for t in self.nodes + self.leafs:
            if t.name == name:
                return t
        raise KeyError(f"no tensor named {name!r} in the graph")

    def inputs(self) -> list[Tensor]:
        from npggml.graph.tensor import INPUT

        return [t for t in self.leafs + self.nodes if t.flags & INPUT]

    def consumers(self) -> dict[int, list[Tensor]]:
        """id(tensor) -> nodes that read it directly as a source."""
        users: dict[int, list[Tensor]] = {}
        for n in self.nodes:
            for s in n.srcs:
                if s is not None:
                    users.setdefault(id(s), []).append(n)
        return users


def sole_user(t: Tensor, users: dict[int, list[Tensor]]) -> Tensor | None:
    """The one node that reads t (`users`: `Graph.consumers()`), if t is not also a graph output."""
    u = users.get(id(t), [])
    return u[0] if len(u) == 1 and not (t.flags & OUTPUT) else None


def only_user(t: Tensor, user: Tensor, users: dict[int, list[Tensor]]) -> bool:
    """t is read by `user` alone and is not a graph output."""
    return sole_user(t, users) is user
