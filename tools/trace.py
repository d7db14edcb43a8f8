"""`npggml trace`: encode a page with eval-callback hooks: a trace line per matched node, value stats,
one .npy per matched node (llama.cpp's dump layout), and a time/FLOPs profile.

`--match` is the *ask* phase of ggml's eval callback: nodes whose names match none of the globs are computed
as in a plain encode, with no copy, no stats and no I/O. `--stop-after NAME` ends the run after the first node
matching NAME has been computed (the observe hook returns False, as llama.cpp's callback can).

`--save DIR` layout. NumPy arrays in C order, shape = reversed ne with trailing size-1 ne dims dropped (the
llama.cpp dump convention); repeated names in one folder get `__1`, `__2` in graph order; `index.json` lists
every file with its node name, graph index, ne, dtype, view and trace line.
- One view (no tiles): `DIR/<node name>.npy`.
- Several views: `DIR/view_<k>/<node name>.npy`, k = the view index (v1: tile rows then global; v2: tiles
  then global), and `DIR/<node name>.npy` for the page-level nodes (the final concat).
  A node of the tile batch (B = gw*gh images) whose value depends on the tile pixels is cut along its
  outermost axis: view k with batch range [b0, b1) gets `[L*b0/B, L*b1/B)` of that axis of length L
  (llama.cpp keeps the batch slowest everywhere), then its leading size-1 axes are dropped as llama.cpp's
  dump of that view's own graph would. Nodes of the tile subgraph that do not depend on the pixels (position
  tables, relative-position tables, masks: llama.cpp recomputes them in every view's graph), and the rare node
  whose axis does not cut evenly, are saved whole into every tile view's folder ("split": false in index.json).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from npggml.errors import NpggmlError
from npggml.graph import printer, profile
from npggml.graph.debug import name_filter
from npggml.models.page import PageGraph
from npggml.tools.encode import add_model_args, open_encoder

FORMAT = "npggml-trace-1"


def register(sub) -> None:
    p = sub.add_parser("trace", help="encode a page and print/save chosen intermediate tensors",
                       description=__doc__.splitlines()[0])
    add_model_args(p)
    p.add_argument("--match", metavar="GLOBS",
                   help="comma-separated fnmatch globs on node names, e.g. 'sam_layer_out-*,layer_out-23' "
                        "(default: every node)")
    p.add_argument("--stats", action="store_true", help="print min max mean std nan after each trace line")
    p.add_argument("--save", metavar="DIR", help="write one .npy per matched node, plus index.json")
    p.add_argument("--profile", action="store_true", help="print time, FLOPs and GFLOP/s per op type and layer")
    p.add_argument("--stop-after", metavar="NAME", help="stop the run after the first node matching this glob")
    p.add_argument("-q", "--quiet", action="store_true", help="no trace lines (with --save or --profile)")
    p.set_defaults(func=run)


# --- where each node's value goes ------------------------------------------------------------------
def node_groups(page: PageGraph) -> list[str]:
    """"tiles" | "global" | "page" per node. Nodes a rewrite pass created after the builder labelled the page
    take the group of their sources ("page" when they mix groups)."""
    out, seen = [], {}
    for n in page.graph.nodes:
        grp = page.groups.get(id(n))
        if grp is None:
            srcs = {seen.get(id(s)) for s in n.srcs if s is not None} - {None}
            grp = srcs.pop() if len(srcs) == 1 else "page"
        seen[id(n)] = grp
        out.append(grp)
    return out


def tile_batched(page: PageGraph) -> list[bool]:
    """Per node: does its value depend on the tile pixels (and so carry the tile batch)?"""
    tiles = page.pixels.get("tiles")
    derived = {id(tiles)} if tiles is not None else set()
    out = []
    for n in page.graph.nodes:
        hit = any(s is not None and id(s) in derived for s in n.srcs)
        if hit:
            derived.add(id(n))
        out.append(hit)
    return out


def dump_shape(ne) -> tuple[int, ...]:
    """NumPy shape of a dump: reversed ne with the trailing size-1 ne dims dropped (at least one dim)."""
    ne = list(ne)
    while len(ne) > 1 and ne[-1] == 1:
        ne.pop()
    return tuple(reversed(ne))


def split_batch(arr: np.ndarray, b0: int, b1: int, n_batch: int) -> np.ndarray | None:
    """The rows [L*b0/B, L*b1/B) of the outermost axis, leading size-1 axes dropped; None if not integral."""
    if arr.ndim == 0:
        return None
    L = arr.shape[0]
    if (L * b0) % n_batch or (L * b1) % n_batch:
        return None
    part = arr[L * b0 // n_batch: L * b1 // n_batch]
    while part.ndim > 1 and part.shape[0] == 1:
        part = part[0]
    return part


def _file_stem(name: str) -> str:
    return name.replace("/", "_").replace("\\", "_").replace("\0", "_") or "_"


class Saver:
    def __init__(self, root: Path, page: PageGraph, meta: dict):
        self.root = root
        self.page = page
        self.meta = meta
        self.multi = len(page.views) > 1
        self.groups = node_groups(page)
        self.batched = tile_batched(page)
        tiles = page.pixels.get("tiles")
        self.n_batch = tiles.ne[3] if tiles is not None else 1
        self.tile_views = [v for v in page.views if v.group == "tiles"]
        self.global_view = next(v for v in page.views if v.group == "global")
        self.counts: dict[str, dict[str, int]] = {}
        self.files: list[dict] = []
        self._prepare()

    def _prepare(self) -> None:
        root = self.root
        if root.exists() and not root.is_dir():
            raise NpggmlError(f"--save {root}: exists and is not a folder")
        old = root / "index.json"
        try:
            if old.is_file():  # a previous trace: remove what it wrote, nothing else
                try:
                    listed = json.loads(old.read_text()).get("files", [])
                except ValueError:
                    listed = []
                inside = root.resolve()
                for f in listed:
                    path = (root / str(f.get("file", ""))).resolve()
                    if path.suffix == ".npy" and inside in path.parents:
                        path.unlink(missing_ok=True)
                for d in sorted(root.glob("view_*")):
                    if d.is_dir() and not any(d.iterdir()):
                        d.rmdir()
                old.unlink()
            elif root.is_dir() and any(root.glob("**/*.npy")):
                raise NpggmlError(f"--save {root}: holds .npy files that no npggml trace wrote (no index.json); "
                                  "choose an empty or new folder")
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise NpggmlError(f"--save {root}: {e.strerror or e}") from None

    def targets(self, i: int, arr: np.ndarray):
        """(view or None, array, split) for each file node i goes to."""
        if not self.multi:
            return [(None, arr, False)]
        grp = self.groups[i]
        if grp == "global":
            return [(self.global_view, arr, False)]
        if grp != "tiles":
            return [(None, arr, False)]
        out = []
        for v in self.tile_views:
            part = split_batch(arr, v.batch[0], v.batch[1], self.n_batch) if self.batched[i] else None
            out.append((v, arr, False) if part is None else (v, part, True))
        return out

    def save(self, i: int, node, value: np.ndarray) -> int:
        arr = np.asarray(value).reshape(dump_shape(node.ne))
        written = 0
        for view, part, split in self.targets(i, arr):
            folder = "" if view is None else f"view_{view.index}/"
            if folder not in self.counts:
                try:
                    (self.root / folder).mkdir(exist_ok=True)
                except OSError as e:
                    raise NpggmlError(f"--save: cannot create {self.root / folder}: {e.strerror or e}") from None
            counts = self.counts.setdefault(folder, {})
            stem = _file_stem(node.name)
            k = counts.get(stem, 0)
            counts[stem] = k + 1
            rel = f"{folder}{stem if k == 0 else f'{stem}__{k}'}.npy"
            try:
                np.save(self.root / rel, np.ascontiguousarray(part))
            except OSError as e:
                raise NpggmlError(f"--save: cannot write {self.root / rel}: {e.strerror or e}") from None
            self.files.append({
                "file": rel, "name": node.name, "index": i, "op": printer.op_desc(node),
                "ne": list(reversed(part.shape)) or [1], "node_ne": list(node.ne), "dtype": node.dtype,
                "numpy_dtype": str(part.dtype), "view": None if view is None else view.index,
                "group": self.groups[i], "split": split, "line": printer.trace_line(i, node),
            })
            written += 1
        return written

    def close(self, **status) -> None:
        views = [{"index": v.index, "kind": v.kind, "group": v.group, "batch": list(v.batch),
                  "folder": f"view_{v.index}" if self.multi else ""} for v in self.page.views]
        # a view folder exists only when something was saved into it
        data = {"format": FORMAT, **self.meta, **status, "views": views, "files": self.files}
        try:
            (self.root / "index.json").write_text(json.dumps(data, indent=1) + "\n")
        except OSError as e:
            raise NpggmlError(f"--save: cannot write {self.root / 'index.json'}: {e.strerror or e}") from None


class Tracer:
    """The ask/observe pair. `ask` is called once per node in graph order, which maps each node to its index
    in the page graph built beforehand (checked by name and shape)."""

    def __init__(self, page: PageGraph, match, stop, *, stats: bool, quiet: bool, saver: Saver | None,
                 out=None):
        self.nodes = page.graph.nodes
        self.match, self.stop = match, stop
        self.stats, self.quiet, self.saver = stats, quiet, saver
        self.out = out or sys.stdout
        self.i = -1
        self.seen = self.written = 0
        self.stopped_after: str | None = None

    def ask(self, node) -> bool:
        self.i += 1
        ref = self.nodes[self.i] if self.i < len(self.nodes) else None
        if ref is None or ref.name != node.name or ref.ne != node.ne or ref.op != node.op:
            raise NpggmlError(f"trace: the encoder ran a different graph than Encoder.build gave at node {self.i} "
                              f"({node.name!r} vs {getattr(ref, 'name', None)!r})")
        return self.match(node.name) or (self.stop is not None and self.stop(node.name))

    def observe(self, node, value, seconds) -> bool:
        i = self.i
        if self.match(node.name):
            self.seen += 1
            if not self.quiet:
                print(printer.trace_line(i, node, seconds), file=self.out)
                if self.stats:
                    print(printer.stats_line(value), file=self.out)
            if self.saver is not None:
                self.written += self.saver.save(i, node, value)
        if self.stop is not None and self.stop(node.name):
            self.stopped_after = f"{node.name} (node {i})"
            return False
        return True


def run(args) -> int:
    enc = open_encoder(args)
    enc.whole = True  # every named node with all its rows, as the reference dumps hold them
    views = enc.preprocess(args.image, no_tiles=args.no_tiles)
    page = enc.build(views.grid)  # the graph encode() runs: same builder, same rewrite passes
    nodes = page.graph.nodes
    match = name_filter(args.match)
    n_match = sum(1 for n in nodes if match(n.name))
    if n_match == 0:
        raise NpggmlError(f"--match {args.match!r} matches none of the {len(nodes)} nodes "
                          "(`npggml graph` lists them)")
    stop = None
    if args.stop_after:
        stop = name_filter(args.stop_after)
        if not any(stop(n.name) for n in nodes):
            raise NpggmlError(f"--stop-after {args.stop_after!r} matches no node of this graph")
    grid = "x".join(map(str, views.grid)) if views.grid else "none"
    saver = None
    if args.save:
        meta = {"model": str(args.mmproj or "embedded"), "mode": enc.mode, "image": str(args.image),
                "grid": list(views.grid) if views.grid else None, "nodes": len(nodes)}
        saver = Saver(Path(args.save), page, meta)
    print(f"npggml trace: {args.image}: grid {grid}, {len(page.views)} view(s), {len(nodes)} nodes, "
          f"{n_match} matched", file=sys.stderr)
    tracer = Tracer(page, match, stop, stats=args.stats, quiet=args.quiet, saver=saver)
    status = {"complete": False, "stopped_after": None, "error": None}
    try:
        result = enc.encode(None, views=views, ask=tracer.ask, observe=tracer.observe)
        status.update(complete=tracer.stopped_after is None, stopped_after=tracer.stopped_after)
    except NpggmlError as e:
        status["error"] = str(e)
        raise
    finally:
        if saver is not None:
            saver.close(**status)
    if args.profile:
        interp = result.interpreter
        groups = {id(n): g for n, g in zip(result.page.graph.nodes, node_groups(result.page))}
        print(profile.report(result.page.graph, interp.times, interp.kernel_used, groups))
    tail = f"traced {tracer.seen} node(s)"
    if saver is not None:
        tail += f", saved {tracer.written} file(s) to {saver.root}"
    if tracer.stopped_after:
        tail += f"; stopped after {tracer.stopped_after} as asked"
    print(f"npggml trace: {tail}", file=sys.stderr)
    return 0
