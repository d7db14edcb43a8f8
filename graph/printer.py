"""Graph printing: a node table, the one-line trace format, value stats, and Graphviz DOT export.

Shapes print in ggml ne order with trailing 1-dims dropped, like llama.cpp's eval callback:
`[ 57] Qcur-3 = MUL_MAT(attn_q.weight{1024,1024}, cur-3{1024,257}) -> {1024,257} f32  0.41 ms`
"""

from __future__ import annotations

import numpy as np

from npggml.graph.graph import Graph
from npggml.graph.tensor import INPUT, OUTPUT, PARAM, Tensor
from npggml.ops import registry


def op_desc(t: Tensor) -> str:
    return "NONE" if t.is_leaf else registry.get(t.op).desc


def node_flops(t: Tensor) -> float:
    if t.is_leaf:
        return 0.0
    f = registry.get(t.op).flops
    return float(f(t)) if f is not None else 0.0


def _src(t: Tensor | None) -> str:
    return "NULL" if t is None else f"{t.name}{t.ne_str()}"


def trace_line(index: int, t: Tensor, seconds: float | None = None) -> str:
    srcs = ", ".join(_src(s) for s in t.srcs)
    line = f"[{index:3d}] {t.name} = {op_desc(t)}({srcs}) -> {t.ne_str()} {t.dtype}"
    if seconds is not None:
        line += f"  {seconds * 1e3:.2f} ms"
    return line


def stats_line(value: np.ndarray) -> str:
    v = np.asarray(value, dtype=np.float64)
    n_nan = int(np.isnan(v).sum())
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        return f"      min=nan max=nan mean=nan std=nan nan={n_nan}"
    return (f"      min={finite.min():.6g} max={finite.max():.6g} mean={finite.mean():.6g} "
            f"std={finite.std():.6g} nan={n_nan}")


def strides_line(t: Tensor, kernel: str) -> str:
    nb = ",".join(str(b) for b in t.nb)
    view = f" view of {t.view_src.name}+{t.view_offs}" if t.is_view else ""
    return f"      kernel={kernel} nb={{{nb}}}{view}"


def _flags(t: Tensor) -> str:
    return "".join(c for f, c in ((INPUT, "i"), (OUTPUT, "o"), (PARAM, "x")) if t.flags & f)


def table(graph: Graph, plan=None) -> str:
    """One row per node: index, name, op, inputs, ne, dtype, arena offset/size (or "view"), FLOPs, bytes."""
    rows = [("#", "name", "op", "inputs", "ne", "type", "arena", "flops", "bytes")]
    for i, t in enumerate(graph.nodes):
        if t.is_view and (t.op == "none" or registry.get(t.op).view):
            arena = "view"
        elif plan is not None and id(t) in plan.offsets:
            arena = f"{plan.offsets[id(t)]}+{plan.sizes[id(t)]}"
        else:
            arena = "-"
        rows.append((str(i), t.name + (f" [{_flags(t)}]" if _flags(t) else ""), op_desc(t),
                     ", ".join(_src(s) for s in t.srcs), t.ne_str(), t.dtype, arena,
                     f"{node_flops(t):.3g}", str(0 if arena == "view" else t.nbytes)))
    widths = [min(max(len(r[c]) for r in rows), 60) for c in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [c if len(c) <= 60 else c[:57] + "..." for c in r]
        out.append("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())
    return "\n".join(out)


def summary(graph: Graph, plan=None) -> dict:
    weights = [t for t in graph.leafs if t.data is not None]
    out = {
        "nodes": len(graph.nodes),
        "leafs": len(graph.leafs),
        "weight_bytes": sum(t.nbytes for t in weights),
        "flops": sum(node_flops(t) for t in graph.nodes),
    }
    if plan is not None:
        out["arena_bytes"] = plan.size
    return out


def to_dot(graph: Graph) -> str:
    """Graphviz text in the spirit of ggml_graph_dump_dot (ggml-semantics §6.2)."""
    lines = ["digraph G {", "  newrank = true;", "  rankdir = TB;"]
    ids = {}
    for i, t in enumerate(graph.leafs):
        ids[id(t)] = f"leaf_{i}"
        lines.append(f'  "{ids[id(t)]}" [style = filled; fillcolor = pink; shape = record; '
                     f'label="<x>{_esc(t.name)} ({t.dtype})|CONST {i} [{t.ne[0]}, {t.ne[1]}]"; ]')
    for i, t in enumerate(graph.nodes):
        ids[id(t)] = f"node_{i}"
        color = "yellow" if t.flags & PARAM else "white"
        dims = f"[{t.ne[0]}, {t.ne[1]}]" if t.n_dims <= 2 else f"[{t.ne[0]}, {t.ne[1]}, {t.ne[2]}]"
        lines.append(f'  "{ids[id(t)]}" [style = filled; fillcolor = {color}; shape = record; '
                     f'label="{_esc(t.name)} ({t.dtype})|{i} {dims} | <x>{_esc(op_desc(t))}"; ]')
    for t in graph.nodes:
        for k, s in enumerate(t.srcs):
            if s is not None and id(s) in ids:
                lines.append(f'  "{ids[id(s)]}" -> "{ids[id(t)]}" [ label = "src {k}"; ]')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _esc(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("{", "\\{").replace("}", "\\}").replace(
        "|", "\\|").replace("<", "\\<").replace(">", "\\>")
