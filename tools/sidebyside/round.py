#!/usr/bin/env python3
"""One side-by-side round: npggml, llama.cpp and PyTorch timed on the same graphs, alternated, in one table.

    python tools/sidebyside/round.py --v1 /tmp/v1-full-f32.gguf --v2 /tmp/v2-full-f32.gguf \\
        --dsocr-bench ./dsocr_bench [--torch-python /tmp/torchbench/bin/python] \\
        [--graphs v1-global,v2-global,v1-page,v2-page] [--passes 2] [--repeat 3] [--threads 2] [--json F]

Each pass runs every graph with each program in turn, one program at a time (llama.cpp's OpenMP threads
busy-wait, so nothing else may share the cores): `npggml bench --json` with this Python (the same venv), then
`dsocr_bench` (build: README.md next to this file), then `bench_torch.py` under `--torch-python` if given, with
glibc's allocator told to keep freed memory as npggml's CLI does. Odd passes run the programs in that order, even
passes in the reverse order, so that a host that speeds up or slows down within a pass favours no one. Every
program reports the median of `--repeat` encodes after a warm-up; the table gives each pass and, per graph, the
median over the passes. The graph's PyTorch weights are random (its own), npggml's and llama.cpp's the GGUF's:
the times compare, the outputs do not.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
IMAGE = HERE.parent.parent / "tests" / "fixtures" / "images" / "doc_1500x1000.png"
GRAPHS = ("v1-global", "v2-global", "v1-page", "v2-page")
PROGRAMS = ("npggml", "llama.cpp", "pytorch")
RESULT = re.compile(r"^RESULT .*\bmedian_ms=(-?[0-9.]+)", re.M)
# the JSON keys each program's report must hold -> the names they go by in a round's results
NPGGML_KEYS = {"encode_seconds": "seconds", "encode_runs": "runs", "sgemm_gflops": "sgemm_gflops",
               "sgemm_ratio": "sgemm_ratio", "peak_rss_bytes": "peak_rss_bytes", "blas_core": "blas_core"}
TORCH_KEYS = {"median_seconds": "seconds", "seconds": "runs"}


class RoundError(Exception):
    """A program failed or printed no result: the message names it."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--v1", type=Path, help="v1 mmproj GGUF (npggml and llama.cpp)")
    p.add_argument("--v2", type=Path, help="v2 mmproj GGUF")
    p.add_argument("--dsocr-bench", type=Path, required=True, help="the built tools/sidebyside/dsocr_bench")
    p.add_argument("--torch-python", type=Path, help="a Python with torch and transformers (no PyTorch column "
                                                     "without it)")
    p.add_argument("--graphs", default="v1-global,v2-global", help=f"comma-separated, of {', '.join(GRAPHS)}")
    p.add_argument("--image", type=Path, default=IMAGE)
    p.add_argument("--passes", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, help="also write every measurement to this file")
    args = p.parse_args(argv)
    args.graphs = [g.strip() for g in args.graphs.split(",") if g.strip()]
    bad = [g for g in args.graphs if g not in GRAPHS]
    if bad or not args.graphs:
        p.error(f"--graphs: unknown {', '.join(bad) or '(none given)'}; expected some of {', '.join(GRAPHS)}")
    if args.passes < 1 or args.repeat < 1 or args.threads < 1:
        p.error("--passes, --repeat and --threads must be >= 1")
    for g in args.graphs:
        version = g.split("-")[0]
        model = getattr(args, version)
        if model is None or not model.is_file():
            p.error(f"graph {g} needs --{version}: an mmproj GGUF file (got {model})")
    for flag, path in (("--dsocr-bench", args.dsocr_bench), ("--torch-python", args.torch_python),
                       ("--image", args.image)):
        if path is not None and not path.is_file():
            p.error(f"{flag} {path}: no such file")
    return args


def run(name: str, cmd: list[str], env: dict) -> str:
    """stdout of cmd; RoundError naming the program and its last stderr line if it fails."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    except OSError as e:
        raise RoundError(f"{name}: cannot run {cmd[0]}: {e.strerror}") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise RoundError(f"{name} exited with {proc.returncode}: {last}")
    return proc.stdout


def run_json(name: str, cmd: list[str], env: dict, keys: dict[str, str]) -> dict:
    """The JSON object cmd prints, which must hold `keys`, with those renamed as `keys` says; RoundError
    otherwise."""
    try:
        out = json.loads(run(name, cmd, env))
    except json.JSONDecodeError:
        raise RoundError(f"{name} printed no JSON object (expected one with {', '.join(keys)})") from None
    missing = [k for k in keys if not isinstance(out, dict) or k not in out]
    if missing:
        raise RoundError(f"{name}'s JSON has no {', '.join(missing)}")
    return {ours: out[theirs] for theirs, ours in keys.items()}


def measure(program: str, graph: str, args) -> dict:
    """One program's median encode seconds for one graph (plus what else it reports)."""
    version, views = graph.split("-")
    model = str(getattr(args, version))
    threads = str(args.threads)
    env = dict(os.environ, OPENBLAS_NUM_THREADS=threads, NUMBA_NUM_THREADS=threads, OMP_NUM_THREADS=threads)
    if program == "npggml":
        cmd = [sys.executable, "-m", "npggml.tools.cli", "bench", "--mmproj", model, "--image", str(args.image),
               "--repeat", str(args.repeat), "--json"] + (["--no-tiles"] if views == "global" else [])
        return run_json(program, cmd, env, NPGGML_KEYS)
    if program == "llama.cpp":
        cmd = [str(args.dsocr_bench), "--mmproj", model, "--image", str(args.image), "--threads", threads,
               "--repeat", str(args.repeat)] + (["--global-only"] if views == "global" else [])
        found = RESULT.findall(run(program, cmd, env))
        if not found or float(found[-1]) < 0:
            raise RoundError(f"llama.cpp ({args.dsocr_bench}) printed no RESULT line with a median")
        return {"seconds": float(found[-1]) / 1e3}
    env.update(MALLOC_MMAP_MAX_="0", MALLOC_TRIM_THRESHOLD_="2147483647")
    cmd = [str(args.torch_python), str(HERE / "bench_torch.py"), "--model", version, "--views", views,
           "--repeat", str(args.repeat), "--threads", threads]
    return run_json(program, cmd, env, TORCH_KEYS)


def table(results: list[dict], programs: tuple[str, ...]) -> str:
    """Markdown: one row per graph and pass, then the medians over the passes; llama.cpp's and PyTorch's
    times also as npggml's speed-up over them."""
    head = ["graph", "pass", "npggml", "sgemm", "ratio"]
    for p in programs[1:]:
        head += [p, "npggml faster"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(graph, label, secs: dict, sgemm, ratio):
        cells = [graph, label, f"{secs['npggml']:.2f} s", f"{sgemm:.1f}", f"{ratio:.3f}"]
        for p in programs[1:]:
            cells += [f"{secs[p]:.2f} s", f"{secs[p] / secs['npggml']:.2f}x"]
        return "| " + " | ".join(cells) + " |"

    for graph in dict.fromkeys(r["graph"] for r in results):
        mine = [r for r in results if r["graph"] == graph]
        for r in mine:
            secs = {p: r[p]["seconds"] for p in programs}
            lines.append(row(graph, str(r["pass"]), secs, r["npggml"]["sgemm_gflops"], r["npggml"]["sgemm_ratio"]))
        if len(mine) > 1:
            med = {p: statistics.median(r[p]["seconds"] for r in mine) for p in programs}
            lines.append(row(graph, "median", med, statistics.median(r["npggml"]["sgemm_gflops"] for r in mine),
                             statistics.median(r["npggml"]["sgemm_ratio"] for r in mine)))
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    programs = PROGRAMS if args.torch_python else PROGRAMS[:2]
    results = []
    try:
        for n in range(1, args.passes + 1):
            order = programs if n % 2 else programs[::-1]
            for graph in args.graphs:
                r = {"graph": graph, "pass": n}
                for program in order:
                    r[program] = measure(program, graph, args)
                    secs = r[program]["seconds"]
                    print(f"pass {n} {graph} {program}: {secs:.2f} s", file=sys.stderr, flush=True)
                results.append(r)
    except RoundError as e:
        print(f"round: error: {e}", file=sys.stderr)
        return 2
    print(table(results, programs))
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "repeat": args.repeat, "results": results},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
