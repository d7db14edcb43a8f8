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


def is_pure_view(t: Tensor) -> bool:
    return t.is_view and (t.op == "none" or registry.get(t.op).view)


def node_bytes(t: Tensor) -> int:
    """Bytes a node's value occupies: 0 for a pure view (a window on its source's storage)."""
    return 0 if is_pure_view(t) else t.nbytes


def _flags(t: Tensor) -> str:
    return "".join(c for f, c in ((INPUT, "i"), (OUTPUT, "o"), (PARAM, "x")) if t.flags & f)


def table(graph: Graph, plan=None) -> str:
    """One row per node: index, name, op, inputs, ne, dtype, arena offset/size (or "view"), FLOPs, bytes."""
    rows = [("#", "name", "op", "inputs", "ne", "type", "arena", "flops", "bytes")]
    for i, t in enumerate(graph.nodes):
        if is_pure_view(t):
            arena = "view"
        elif plan is not None and id(t) in plan.offsets:
            arena = f"{plan.offsets[id(t)]}+{plan.sizes[id(t)]}"
        else:
            arena = "-"
        rows.append((str(i), t.name + (f" [{_flags(t)}]" if _flags(t) else ""), op_desc(t),
                     ", ".join(_src(s) for s in t.srcs), t.ne_str(), t.dtype, arena,
                     f"{node_flops(t):.0f}", str(node_bytes(t))))
    return _columns(rows)


def leaf_table(graph: Graph) -> str:
    """One row per leaf: index, name, kind (weight or input), ne, type, stored bytes."""
    rows = [("#", "name", "kind", "ne", "type", "bytes")]
    for i, t in enumerate(graph.leafs):
        kind = "weight" if t.data is not None else ("input" if t.flags & INPUT else "leaf")
        rows.append((str(i), t.name, kind, t.ne_str(), t.dtype, str(t.nbytes)))
    return _columns(rows)


def _columns(rows: list[tuple[str, ...]], cap: int = 60) -> str:
    widths = [min(max(len(r[c]) for r in rows), cap) for c in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [c if len(c) <= cap else c[: cap - 3] + "..." for c in r]
        out.append("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())
    return "\n".join(out)


def summary(graph: Graph, plan=None) -> dict:
    weights = [t for t in graph.leafs if t.data is not None]
    out = {
        "nodes": len(graph.nodes),
        "leafs": len(graph.leafs),
        "weight_bytes": sum(t.nbytes for t in weights),
        "flops": sum(node_flops(t) for t in graph.nodes),
        "node_bytes": sum(node_bytes(t) for t in graph.nodes),
    }
    if plan is not None:
        out["arena_bytes"] = plan.size
    return out


def fmt_bytes(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def _bytes_exact(n: int) -> str:
    short = fmt_bytes(n)
    return f"{n} B" if short.endswith(" B") else f"{n} B ({short})"


def summary_line(s: dict) -> str:
    """`1216 nodes, 169 leafs, weights 4414560 B (4.21 MiB), arena ... , 11790986240 FLOPs (11.79 GFLOP)`"""
    parts = [f"{s['nodes']} nodes", f"{s['leafs']} leafs", f"weights {_bytes_exact(s['weight_bytes'])}"]
    if "arena_bytes" in s:
        parts.append(f"arena {_bytes_exact(s['arena_bytes'])}")
    parts.append(f"{s['flops']:.0f} FLOPs ({s['flops'] / 1e9:.2f} GFLOP)")
    return ", ".join(parts)


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
