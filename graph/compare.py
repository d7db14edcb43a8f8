"""Line up two tensor dumps by node name and find the first node that diverges.

A dump is a folder of `<node name>.npy` files: `npggml trace --save` output (with an `index.json`, and one
`view_<k>/` subfolder per view when the encode had several), or a flat reference folder as llama.cpp's eval
callback or the HF hooks wrote them (`tests/fixtures/dsocr/llamacpp/v1/doc_1500x1000/tensors_0`). Repeated
names carry `__1`, `__2` suffixes in graph order on both sides, so file stems line up directly.

Per node: max |Δ|, max rel (= max |Δ| / max |B|, B being the reference side), NMSE (Σ Δ² / Σ B²) and cosine
similarity. A node diverges when `max|Δ| > atol + rtol * max|B|`, or when the shapes differ, or when only one
side has a NaN/inf at some position. Rows are in graph order, taken from an `index.json` (A's first, then B's),
otherwise in natural name order (`layer_out-2` before `layer_out-10`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from npggml.errors import NpggmlError

RTOL, ATOL = 1e-3, 1e-5  # defaults: see `compare_arrays`
INDEX = "index.json"


@dataclass
class Entry:
    name: str  # the file stem, e.g. "norm_b__1"
    path: Path
    index: int | None = None  # graph index, when an index.json says so
    line: str | None = None  # the node's trace line, when an index.json says so


@dataclass
class Dump:
    root: Path
    entries: dict[str, Entry]
    indexed: bool  # an index.json gave graph order
    views: list[str] = field(default_factory=list)  # view subfolders (a multi-view trace --save folder)


def _natural(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _read_index(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        files = data["files"]
        if not isinstance(files, list):
            raise TypeError("'files' is not a list")
        return data
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise NpggmlError(f"{path}: not a valid npggml index ({type(e).__name__}: {e})") from None


def load_dump(path: str | Path) -> Dump:
    """Read a dump folder (not the arrays). A `view_<k>` folder of a trace uses its parent's index.json."""
    root = Path(path)
    if not root.is_dir():
        raise NpggmlError(f"{root}: not a folder")
    entries = {p.stem: Entry(p.stem, p) for p in sorted(root.glob("*.npy"))}
    index_file, prefix = root / INDEX, ""
    if not index_file.is_file() and (root.parent / INDEX).is_file():
        index_file, prefix = root.parent / INDEX, root.name + "/"
    views: list[str] = []
    indexed = False
    if index_file.is_file():
        data = _read_index(index_file)
        for f in data["files"]:
            rel = str(f.get("file", ""))
            if not rel.startswith(prefix) or "/" in rel[len(prefix):]:
                continue
            stem = Path(rel).stem
            if stem in entries:
                entries[stem].index = f.get("index")
                entries[stem].line = f.get("line")
                indexed = True
        if not prefix:
            folders = [v.get("folder") for v in data.get("views", [])]
            views = [f for f in folders if f and (root / f).is_dir()]
    if not entries and not views:
        raise NpggmlError(f"{root}: no .npy tensor dumps in this folder")
    return Dump(root, entries, indexed, views)


def _load(e: Entry) -> np.ndarray:
    try:
        return np.load(e.path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise NpggmlError(f"{e.path}: cannot read ({err})") from None


@dataclass
class Row:
    name: str
    index: int | None
    shape_a: tuple
    shape_b: tuple
    max_abs: float = float("nan")
    max_rel: float = float("nan")
    nmse: float = float("nan")
    cosine: float = float("nan")
    bound: float = float("nan")
    diverged: bool = True
    note: str = ""
    line: str | None = None


def compare_arrays(name: str, a: np.ndarray, b: np.ndarray, rtol: float = RTOL, atol: float = ATOL) -> Row:
    """Metrics of A against the reference B. Positions where both are NaN (or both the same inf) agree; a
    NaN or inf on one side only makes |Δ| infinite there.

    Default bound |Δ| <= 1e-5 + 1e-3 * max|B|: float32 kernels that sum in a different order agree to ~1e-6
    relative per op and ~1e-4 after a dozen layers; ggml's f16 GELU tables move SAM outputs by ~1e-4 relative;
    a real porting bug (a wrong axis, a missing term, a perturbed weight) is orders of magnitude above it.
    """
    row = Row(name, None, tuple(a.shape), tuple(b.shape))
    if a.shape != b.shape:
        row.note = f"shape mismatch: A {tuple(a.shape)} vs B {tuple(b.shape)}"
        return row
    a64 = np.asarray(a, dtype=np.float64)
    b64 = np.asarray(b, dtype=np.float64)
    same = (a64 == b64) | (np.isnan(a64) & np.isnan(b64))
    with np.errstate(invalid="ignore", over="ignore"):
        d = np.where(same, 0.0, np.abs(a64 - b64))
    d[np.isnan(d)] = np.inf
    finite_b = b64[np.isfinite(b64)]
    scale = float(np.abs(finite_b).max()) if finite_b.size else 0.0
    row.max_abs = float(d.max()) if d.size else 0.0
    row.max_rel = row.max_abs / scale if scale > 0 else (0.0 if row.max_abs == 0 else float("inf"))
    both = np.isfinite(a64) & np.isfinite(b64)
    av, bv = a64[both], b64[both]
    err, ref = float(((av - bv) ** 2).sum()), float((bv**2).sum())
    row.nmse = err / ref if ref > 0 else (0.0 if err == 0 else float("inf"))
    na, nb_ = float(np.sqrt((av**2).sum())), float(np.sqrt((bv**2).sum()))
    row.cosine = float((av * bv).sum() / (na * nb_)) if na > 0 and nb_ > 0 else (1.0 if na == nb_ else 0.0)
    row.bound = atol + rtol * scale
    row.diverged = not row.max_abs <= row.bound
    if not np.isfinite(row.max_abs):
        row.note = "NaN/inf on one side only"
    return row


@dataclass
class Result:
    a: Dump
    b: Dump
    rows: list[Row]
    only_a: list[str]
    only_b: list[str]
    rtol: float
    atol: float

    @property
    def diverged(self) -> list[Row]:
        return [r for r in self.rows if r.diverged]

    @property
    def first(self) -> Row | None:
        d = self.diverged
        return d[0] if d else None


def compare_dumps(a: Dump, b: Dump, rtol: float = RTOL, atol: float = ATOL) -> Result:
    common = set(a.entries) & set(b.entries)

    def order(name: str):
        for d in (a, b):
            e = d.entries.get(name)
            if e is not None and e.index is not None:
                return (0, e.index, _natural(name))
        return (1, 0, _natural(name))

    rows = []
    for name in sorted(common, key=order):
        ea, eb = a.entries[name], b.entries[name]
        row = compare_arrays(name, _load(ea), _load(eb), rtol, atol)
        row.index = ea.index if ea.index is not None else eb.index
        row.line = ea.line or eb.line
        rows.append(row)
    only_a = sorted(set(a.entries) - common, key=order)
    only_b = sorted(set(b.entries) - common, key=order)
    return Result(a, b, rows, only_a, only_b, rtol, atol)


def _g(x: float) -> str:
    return f"{x:.3e}" if np.isfinite(x) else str(x)


def format_result(res: Result, *, max_names: int | None = 20) -> str:
    a, b = res.a, res.b
    out = [f"A: {a.root} ({len(a.entries)} tensors{', graph order from index.json' if a.indexed else ''})",
           f"B: {b.root} ({len(b.entries)} tensors{', graph order from index.json' if b.indexed else ''})",
           f"bound: max|Δ| <= atol + rtol * max|B|, rtol={res.rtol:g} atol={res.atol:g}"]
    first = res.first
    table = [("#", "node", "shape", "max|Δ|", "max rel", "NMSE", "cosine", "")]
    for r in res.rows:
        shape = "x".join(map(str, r.shape_a)) if r.shape_a == r.shape_b else "mismatch"
        status = "ok" if not r.diverged else ("DIVERGES  <-- first" if r is first else "DIVERGES")
        cos = f"{r.cosine:.6f}" if np.isfinite(r.cosine) else str(r.cosine)
        table.append(("-" if r.index is None else str(r.index), r.name, shape, _g(r.max_abs), _g(r.max_rel),
                      _g(r.nmse), cos, status))
    widths = [max(len(c[k]) for c in table) for k in range(len(table[0]))]
    for row in table:
        out.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    notes = [f"  {r.name}: {r.note}" for r in res.rows if r.note]
    if notes:
        out += ["notes:"] + notes
    for side, names in (("A", res.only_a), ("B", res.only_b)):
        if names:
            shown = names if max_names is None else names[:max_names]
            more = f", ... and {len(names) - len(shown)} more (--all-names)" if len(shown) < len(names) else ""
            out.append(f"only in {side} ({len(names)}): {', '.join(shown)}{more}")
    if not res.rows:
        out.append("no node names in common")
    elif first is None:
        out.append(f"result: all {len(res.rows)} common nodes agree")
    else:
        where = f" (graph node {first.index})" if first.index is not None else ""
        why = first.note or f"max|Δ| {_g(first.max_abs)} > bound {_g(first.bound)}"
        out.append(f"first divergent node: {first.name}{where}: {why}")
        if first.line:
            out.append(f"  {first.line}")
        out.append(f"result: {len(res.diverged)} of {len(res.rows)} common nodes diverge")
    return "\n".join(out)
