"""`npggml graph`: the static compute graph of a page, without running it: one row per node (op, inputs, ne,
type, arena offset+size or "view", FLOPs, bytes) and a summary (nodes, weight bytes, arena bytes, FLOPs).

The page is built for `--grid GX GY` tiles plus the global view, or the global view only (`--no-tiles`, the
default). The arena is planned as ggml's graph allocator would (npggml.graph.alloc.plan_graph). `--dot FILE`
writes Graphviz DOT; `--svg FILE` renders it with Graphviz's `dot -Tsvg` when `dot` is on PATH.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from npggml.errors import NpggmlError
from npggml.graph import printer
from npggml.graph.alloc import plan_graph


def register(sub) -> None:
    p = sub.add_parser("graph", help="print a page's compute graph (table, totals, DOT/SVG) without running it",
                       description=__doc__.splitlines()[0])
    p.add_argument("--mmproj", help="mmproj GGUF (default: an embedded tiny random v1 model)")
    p.add_argument("--mode", choices=["reference", "llama.cpp"], default="reference")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--grid", nargs=2, type=int, metavar=("GX", "GY"), help="tile grid: GX columns, GY rows")
    g.add_argument("--no-tiles", action="store_true", help="the global view only (the default)")
    p.add_argument("--no-fuse", action="store_true", help="the graph as built (no rewrite passes)")
    p.add_argument("--leafs", action="store_true", help="also list the leaves (weights and inputs)")
    p.add_argument("--no-table", action="store_true", help="print the summary only")
    p.add_argument("--dot", metavar="FILE", help="write the graph as Graphviz DOT")
    p.add_argument("--svg", metavar="FILE", help="render the graph to SVG with Graphviz `dot`")
    p.set_defaults(func=run)


def _encoder(args):
    from npggml.models.encode import Encoder
    from npggml.tools.encode import embedded_model_path

    path = args.mmproj
    if path is None:
        path = embedded_model_path()
        print(f"npggml: no --mmproj given, using the embedded tiny random v1 model ({path})", file=sys.stderr)
    enc = Encoder(path, args.mode)
    if args.no_fuse and hasattr(enc, "fuse"):
        enc.fuse = False
    return enc, path


def _write(path: str, text: str) -> None:
    try:
        Path(path).write_text(text)
    except OSError as e:
        raise NpggmlError(f"{path}: cannot write ({e.strerror or e})") from None


def run(args) -> int:
    grid = None
    if args.grid is not None:
        gx, gy = args.grid
        if gx < 1 or gy < 1:
            raise NpggmlError(f"--grid needs two positive tile counts, got {gx} {gy}")
        grid = (gx, gy)
    dot_exe = None
    if args.svg:
        dot_exe = shutil.which("dot")
        if dot_exe is None:
            raise NpggmlError("--svg needs Graphviz's `dot` on PATH (e.g. apt install graphviz); "
                              "or write --dot FILE and render it elsewhere")
    enc, path = _encoder(args)
    page = enc.build(grid)
    graph = page.graph
    plan = plan_graph(graph)
    if not args.no_table:
        print(printer.table(graph, plan))
        if args.leafs:
            print()
            print(printer.leaf_table(graph))
        print()
    s = printer.summary(graph, plan)
    where = f"grid {grid[0]}x{grid[1]} + global view" if grid else "global view only"
    print(f"model: {path} ({enc.model.projector}, {enc.mode} mode), {where}, {len(page.views)} view(s)")
    print(f"nodes: {s['nodes']}  leafs: {s['leafs']}")
    print(f"weight bytes: {s['weight_bytes']} ({printer.fmt_bytes(s['weight_bytes'])})")
    print(f"arena bytes: {s['arena_bytes']} ({printer.fmt_bytes(s['arena_bytes'])})")
    print(f"node bytes: {s['node_bytes']} ({printer.fmt_bytes(s['node_bytes'])}, sum over nodes; views are 0)")
    print(f"flops: {s['flops']:.0f} ({s['flops'] / 1e9:.3f} GFLOP)")
    if args.dot or args.svg:
        dot = printer.to_dot(graph)
        if args.dot:
            _write(args.dot, dot)
            print(f"wrote {args.dot}")
        if args.svg:
            try:
                proc = subprocess.run([dot_exe, "-Tsvg", "-o", args.svg], input=dot, text=True,
                                      capture_output=True, timeout=600)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise NpggmlError(f"--svg: running {dot_exe} failed ({e})") from None
            if proc.returncode != 0:
                err = (proc.stderr.strip().splitlines() or ["no message"])[-1]
                raise NpggmlError(f"--svg: dot exited with status {proc.returncode}: {err}")
            print(f"wrote {args.svg}")
    return 0
