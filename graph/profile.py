"""Where a run spent its time: per op type and per layer, with FLOPs and achieved GFLOP/s.

Layers come from node names, as llama.cpp names them: `Qcur-3`, `ffn_out-3`, `sam_layer_out-3`. A node named
`<base>-N` belongs to layer N. Unnamed or decorated nodes (`node_931`, `Kcur-3 (permuted)`) inherit the layer
of their first source that has one, except from a layer's output (`*layer_out-N`): what consumes a layer's
output belongs to whatever comes next (the next layer's named nodes carry their own number; the SAM neck
after `sam_layer_out-11` is "other"). The subgraph of layer N is read from the layer-output marker that closes
it: `sam_layer_out-N` -> `sam_layer-N`, `layer_out-N` -> `layer-N`. With a page's groups the label is
prefixed with the group: `tiles/sam_layer-3`, `global/layer-11`. Everything else is `other`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from npggml.graph.graph import Graph
from npggml.graph.printer import node_flops, op_desc

_LAYER = re.compile(r"^(?P<base>.+)-(?P<il>\d+)$")
_MARKER = re.compile(r"^(?P<prefix>.*)layer_out-(?P<il>\d+)$")
OTHER = "other"


def layer_labels(graph: Graph, groups: dict[int, str] | None = None) -> list[str]:
    """One label per node of `graph` (see the module docstring)."""
    nodes = graph.nodes
    layer: dict[int, int | None] = {}
    for t in nodes:
        m = _LAYER.match(t.name)
        if m:
            layer[id(t)] = int(m["il"])
            continue
        inherited = None
        for s in t.srcs:
            if s is None or _MARKER.match(s.name):
                continue
            inherited = layer.get(id(s))
            if inherited is not None:
                break
        layer[id(t)] = inherited
    # the subgraph of layer N: the prefix of the next `<prefix>layer_out-N` in graph order
    closing: dict[int, str] = {}
    prefix: list[str | None] = [None] * len(nodes)
    for i in range(len(nodes) - 1, -1, -1):
        m = _MARKER.match(nodes[i].name)
        if m:
            closing[int(m["il"])] = m["prefix"]
        il = layer[id(nodes[i])]
        prefix[i] = closing.get(il, "") if il is not None else None
    labels = []
    for i, t in enumerate(nodes):
        il = layer[id(t)]
        label = OTHER if il is None else f"{prefix[i]}layer-{il}"
        if groups is not None:
            label = f"{groups.get(id(t), 'page')}/{label}"
        labels.append(label)
    return labels


@dataclass
class Row:
    key: str
    nodes: int = 0
    seconds: float = 0.0
    flops: float = 0.0
    ref: int = 0
    fast: int = 0

    def add(self, seconds: float, flops: float, kernel: str) -> None:
        self.nodes += 1
        self.seconds += seconds
        self.flops += flops
        if kernel == "ref":
            self.ref += 1
        elif kernel == "fast":
            self.fast += 1


def profile(graph: Graph, times: list[float], kernel_used: list[str],
            groups: dict[int, str] | None = None) -> tuple[list[Row], list[Row], Row]:
    """(per op type sorted by time, per layer in graph order, total) over the nodes that ran."""
    labels = layer_labels(graph, groups)
    ops: dict[str, Row] = {}
    layers: dict[str, Row] = {}
    total = Row("total")
    for i, t in enumerate(graph.nodes):
        if not kernel_used[i]:
            continue  # not run (the run stopped early)
        f = node_flops(t)
        for table, key in ((ops, op_desc(t)), (layers, labels[i])):
            table.setdefault(key, Row(key)).add(times[i], f, kernel_used[i])
        total.add(times[i], f, kernel_used[i])
    return sorted(ops.values(), key=lambda r: (-r.seconds, r.key)), list(layers.values()), total


def _format(title: str, rows: list[Row], total: Row) -> list[str]:
    head = (title, "nodes", "ms", "%time", "GFLOP", "GFLOP/s", "ref", "fast")
    cells = [head]
    for r in rows + [total]:
        rate = f"{r.flops / r.seconds / 1e9:.2f}" if r.seconds > 0 and r.flops > 0 else "-"
        share = 100 * r.seconds / total.seconds if total.seconds > 0 else 0.0
        cells.append((r.key, str(r.nodes), f"{r.seconds * 1e3:.2f}", f"{share:.1f}", f"{r.flops / 1e9:.4f}",
                      rate, str(r.ref), str(r.fast)))
    widths = [max(len(c[k]) for c in cells) for k in range(len(head))]
    return ["  ".join(c.ljust(w) if k == 0 else c.rjust(w) for k, (c, w) in enumerate(zip(row, widths)))
            for row in cells]


def report(graph: Graph, times: list[float], kernel_used: list[str], groups: dict[int, str] | None = None) -> str:
    ops, layers, total = profile(graph, times, kernel_used, groups)
    lines = ["per op type (by time):"] + _format("op", ops, total)
    lines += ["", "per layer (graph order):"] + _format("layer", layers, total)
    return "\n".join(lines)
