"""`npggml compare A B`: line up two tensor dumps by node name and report the first node that diverges.

A and B are folders of `<node name>.npy`: `npggml trace --save` output or a reference dump (llama.cpp eval
callback, HF hooks). B is the reference: relative errors are relative to max|B|. Exit status 0 when every
common node agrees, 1 when any diverges (value beyond the bound, shape mismatch, one-sided NaN), 2 on bad
folders. Names present on one side only are listed but are not divergences: reference dumps are usually a
subset of the nodes.
"""

from __future__ import annotations

from npggml.errors import NpggmlError
from npggml.graph.compare import ATOL, RTOL, compare_dumps, format_result, load_dump


def register(sub) -> None:
    p = sub.add_parser("compare", help="compare two tensor dumps node by node",
                       description=__doc__.splitlines()[0])
    p.add_argument("a", metavar="A", help="dump folder (e.g. out/trace or out/trace/view_0)")
    p.add_argument("b", metavar="B", help="reference dump folder (e.g. a llama.cpp tensors_0 folder)")
    p.add_argument("--rtol", type=float, default=RTOL, help=f"relative bound, times max|B| (default {RTOL:g})")
    p.add_argument("--atol", type=float, default=ATOL, help=f"absolute bound (default {ATOL:g})")
    p.add_argument("--all-names", action="store_true", help="list every name found on one side only")
    p.set_defaults(func=run)


def run(args) -> int:
    if not (args.rtol >= 0 and args.atol >= 0):
        raise NpggmlError("--rtol and --atol must be >= 0")
    a, b = load_dump(args.a), load_dump(args.b)
    pairs = [(a, b, None)]
    if a.views or b.views:
        if not (a.views and b.views):
            multi, flat = (a, b) if a.views else (b, a)
            raise NpggmlError(f"{multi.root} holds one folder per view ({', '.join(multi.views)}) but "
                              f"{flat.root} is a single view: compare one view folder, e.g. "
                              f"{multi.root / multi.views[0]}")
        pairs = [(load_dump(a.root / v), load_dump(b.root / v), v) for v in a.views if v in b.views]
        for side, d, other in (("A", a, b), ("B", b, a)):
            alone = [v for v in d.views if v not in other.views]
            if alone:
                print(f"view folders only in {side}: {', '.join(alone)}")
        if a.entries and b.entries:
            pairs.append((a, b, "page"))
    results = []
    for da, db, label in pairs:
        res = compare_dumps(da, db, args.rtol, args.atol)
        if not res.rows and label is None:
            raise NpggmlError(f"no node names in common between {a.root} and {b.root}")
        results.append((label, res))
    if not any(res.rows for _, res in results):
        raise NpggmlError(f"no node names in common between {a.root} and {b.root} (in any view folder)")
    for k, (label, res) in enumerate(results):
        if label is not None:
            print(("\n" if k else "") + f"== {label}")
        print(format_result(res, max_names=None if args.all_names else 20))
    bad = [label or "" for label, res in results if res.diverged]
    if len(results) > 1:
        print(f"\n{len(bad)} of {len(results)} folders diverge" + (f": {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0
