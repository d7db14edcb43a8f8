"""`npggml inspect`: show what an mmproj GGUF holds and how npggml reads it.

Prints the projector type, every hyper-parameter with where its value came from, the file's keys, and a tensor
table saying which tensors the graph builder uses. `--json` prints the same as one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any

from npggml.models.gguf_io import Mmproj, load_mmproj


def register(subparsers) -> None:
    p = subparsers.add_parser("inspect", help="show the projector, hparams and tensors of an mmproj GGUF",
                              description="Show the projector type, every hyper-parameter with where its value "
                                          "came from, the file's keys and a tensor table.")
    p.add_argument("file", help="mmproj .gguf file")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = load_mmproj(args.file)
    report = describe(model)
    if args.json:
        sys.stdout.write(json.dumps(report) + "\n")
    else:
        sys.stdout.write(format_text(report))
    return 0


def describe(model: Mmproj) -> dict[str, Any]:
    """Everything `inspect` shows, as JSON-ready data."""
    hp = dataclasses.asdict(model.hparams)
    used_params = sum(w.n_elements for w in model.weights.values() if w.used)
    return {
        "path": model.path,
        "file_bytes": os.path.getsize(model.path),
        "gguf_version": model.gguf_version,
        "projector": model.projector,
        "hparams": {name: {"value": _plain(value), "source": model.sources[name]} for name, value in hp.items()},
        "metadata": {key: {"type": kv.type, "value": _plain(kv.value)} for key, kv in model.metadata.items()},
        "tensors": [
            {"name": w.name, "ne": list(w.ne), "type": w.ggml_type, "nbytes": w.nbytes, "used": w.used}
            for w in model.weights.values()
        ],
        "n_tensors": len(model.weights),
        "n_params": model.n_params,
        "n_params_used": used_params,
        "unused": list(model.unused),
    }


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _show(value: Any, limit: int = 60) -> str:
    if isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, list):
        text = ", ".join(_show(v) for v in value)
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_text(r: dict[str, Any]) -> str:
    lines = [
        f"file       {r['path']}  ({r['file_bytes']:,} bytes, GGUF v{r['gguf_version']}, "
        f"{r['n_tensors']} tensors, {len(r['metadata'])} keys)",
        f"projector  {r['projector']}",
        "",
        "hparams (value, source)",
    ]
    for name, entry in r["hparams"].items():
        lines.append(f"  {name:<18} {_show(entry['value'], 24):<24} {entry['source']}")
    lines += ["", "keys (type, value)"]
    for key, entry in r["metadata"].items():
        lines.append(f"  {key:<42} {entry['type']:<15} {_show(entry['value'])}")
    name_w = max(len(t["name"]) for t in r["tensors"])
    lines += ["", f"  {'tensor':<{name_w}}  {'ne':<22} {'type':<5} {'bytes':>11}  used"]
    for t in r["tensors"]:
        ne = t["ne"][:]
        while len(ne) > 1 and ne[-1] == 1:
            ne.pop()
        ne = "[" + ", ".join(str(n) for n in ne) + "]"
        lines.append(f"  {t['name']:<{name_w}}  {ne:<22} {t['type']:<5} {t['nbytes']:>11,}  "
                     f"{'yes' if t['used'] else 'no'}")
    lines += [
        "",
        f"parameters {r['n_params']:,} (used by the graph {r['n_params_used']:,})",
        f"unused     {', '.join(r['unused']) or 'none'}",
    ]
    return "\n".join(lines) + "\n"
