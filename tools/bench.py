"""`npggml bench`: time a page encode against NumPy's sgemm in the same process.

Reports Numba compile time (compile events during a warm-up encode; a second process loads the kernels from the
on-disk cache and reports about 0 with no cache misses), the median encode time over `--repeat` runs, the sgemm
rate measured just before each of them (4096^3 float32 `np.matmul`, best of 3, NumPy's own BLAS threading; the
median is the run's `sgemm_gflops`: on a shared host the machine's speed drifts within minutes; OpenBLAS's kernel
family is `blas_core`), the graph's FLOPs (from the ops' `flops` functions), the achieved rate and its ratio to
that sgemm rate, the sgemm floor (the time the FLOPs would take at that rate), a per-op breakdown of the last run
(with each op type's seconds over its own floor: where the encode loses its time against the sgemm) and the peak
RSS.
"""

from __future__ import annotations

import json
import platform
import resource
import statistics
import sys
import time

import numpy as np

from npggml.errors import NpggmlError
from npggml.ops.malloc import retained
from npggml.ops.openblas import corename
from npggml.tools.encode import add_model_args, open_encoder


def register(sub) -> None:
    p = sub.add_parser("bench", help="time an encode: sgemm rate, compile time, GFLOP/s, per-op breakdown",
                       description=__doc__.splitlines()[0])
    add_model_args(p)
    p.add_argument("--repeat", type=int, default=3, help="timed encodes after the warm-up (median reported)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=run)


def sgemm_gflops(n: int = 4096, repeat: int = 3) -> float:
    """Best-of-`repeat` rate of an n^3 float32 matmul with NumPy's default BLAS threading."""
    from npggml.ops.fast import _blas

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    best = float("inf")
    with _blas.blas_threads():
        np.matmul(a[:256], b, out=c[:256])
        for _ in range(repeat):
            t = time.perf_counter()
            np.matmul(a, b, out=c)
            best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 / best / 1e9


def _numba_dispatchers():
    import numba

    from npggml import ops

    seen = []
    mods = [m for name, m in sys.modules.items() if name.startswith(ops.__name__) and m is not None]
    for m in mods:
        for v in vars(m).values():
            if isinstance(v, numba.core.registry.CPUDispatcher) and v not in seen:
                seen.append(v)
    return seen


def cache_stats() -> dict:
    hits = misses = 0
    for d in _numba_dispatchers():
        st = d.stats
        hits += sum(st.cache_hits.values())
        misses += sum(st.cache_misses.values())
    return {"cache_hits": hits, "cache_misses": misses}


def peak_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def breakdown(interp) -> tuple[float, dict]:
    """(total flops, {op: {count, seconds, flops, gflops, fast, ref}}) of one interpreter run."""
    from npggml.ops import registry

    per: dict[str, dict] = {}
    total = 0.0
    for node, secs, kernel in zip(interp.graph.nodes, interp.times, interp.kernel_used):
        d = registry.get(node.op)
        fl = float(d.flops(node)) if d.flops else 0.0
        total += fl
        e = per.setdefault(node.op, {"count": 0, "seconds": 0.0, "flops": 0.0, "fast": 0, "ref": 0})
        e["count"] += 1
        e["seconds"] += secs
        e["flops"] += fl
        if kernel in ("fast", "ref"):
            e[kernel] += 1
    for e in per.values():
        e["gflops"] = e["flops"] / e["seconds"] / 1e9 if e["seconds"] > 0 else 0.0
    return total, dict(sorted(per.items(), key=lambda kv: -kv[1]["seconds"]))


def run(args) -> int:
    import numba
    from numba.core import event

    from npggml.ops.fast import _blas

    if args.repeat < 1:
        raise NpggmlError(f"--repeat must be >= 1 (got {args.repeat})")
    enc = open_encoder(args)
    views = enc.preprocess(args.image, no_tiles=args.no_tiles)

    with event.install_recorder("numba:compile") as rec:
        t0 = time.perf_counter()
        enc.encode(args.image, views=views)
        warmup = time.perf_counter() - t0
    starts = {}
    compile_s = 0.0
    depth = 0
    for ts, ev in rec.buffer:  # top-level compiles only (nested ones are inside their caller's span)
        if ev.is_start:
            if depth == 0:
                starts[0] = ts
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                compile_s += ts - starts[0]

    sgemms, runs, computes, result = [], [], [], None
    for _ in range(args.repeat):
        sgemms.append(sgemm_gflops())  # the machine's rate just before this encode (a shared host drifts)
        t0 = time.perf_counter()
        result = enc.encode(args.image, views=views)
        runs.append(time.perf_counter() - t0)
        computes.append(result.timings["compute"])
    seconds = statistics.median(runs)
    sgemm = statistics.median(sgemms)
    flops, per_op = breakdown(result.interpreter)
    gflops = flops / seconds / 1e9
    floor = flops / (sgemm * 1e9)
    for v in per_op.values():
        v["over_sgemm_seconds"] = v["seconds"] - v["flops"] / (sgemm * 1e9)
    report = {
        "model": args.mmproj,
        "image": args.image,
        "mode": args.mode,
        "no_tiles": bool(args.no_tiles),
        "fast": enc.fast,
        "fuse": enc.fuse,
        "grid": list(views.grid) if views.grid else None,
        "n_tokens": int(result.embeddings.shape[0]),
        "n_nodes": len(result.interpreter.graph.nodes),
        "threads": {"numba": numba.get_num_threads(), "numba_layer": numba.threading_layer(),
                    "blas_default": _blas._default_threads or _blas.get_threads()},
        "malloc_retained": retained(),
        "blas_core": corename(),
        "sgemm_gflops": round(sgemm, 2),
        "sgemm_runs": [round(g, 2) for g in sgemms],
        "compile_seconds": round(compile_s, 3),
        "warmup_seconds": round(warmup, 3),
        "numba_cache": cache_stats(),
        "encode_seconds": round(seconds, 4),
        "encode_runs": [round(r, 4) for r in runs],
        "compute_seconds": round(statistics.median(computes), 4),
        "flops": flops,
        "gflops": round(gflops, 2),
        "sgemm_ratio": round(gflops / sgemm, 4),
        "sgemm_floor_seconds": round(floor, 4),
        "peak_rss_bytes": peak_rss_bytes(),
        "python": platform.python_version(),
        "per_op": {k: {**v, "seconds": round(v["seconds"], 4), "gflops": round(v["gflops"], 2),
                       "over_sgemm_seconds": round(v["over_sgemm_seconds"], 4)} for k, v in per_op.items()},
    }
    if args.json:
        print(json.dumps(report))
        return 0
    grid = "x".join(map(str, views.grid)) if views.grid else "none"
    print(f"{args.image} ({args.mode}, grid {grid}, {report['n_nodes']} nodes, fast={enc.fast}, fuse={enc.fuse})")
    print(f"sgemm 4096^3      {sgemm:8.1f} GFLOP/s  (median; before each run {report['sgemm_runs']}; OpenBLAS "
          f"{report['blas_core'] or '?'} kernels)")
    print(f"numba compile     {compile_s:8.2f} s  (warm-up encode {warmup:.2f} s; cache hits "
          f"{report['numba_cache']['cache_hits']}, misses {report['numba_cache']['cache_misses']})")
    print(f"encode (median)   {seconds:8.3f} s  over {args.repeat} runs {report['encode_runs']}")
    print(f"FLOPs             {flops / 1e12:8.3f} TFLOP -> {gflops:.1f} GFLOP/s = {gflops / sgemm:.1%} of sgemm")
    print(f"sgemm floor       {floor:8.3f} s  (those FLOPs at the sgemm rate; the encode is "
          f"{seconds - floor:.3f} s over it)")
    print(f"peak RSS          {report['peak_rss_bytes'] / 2**30:8.2f} GiB  (freed memory "
          f"{'retained' if report['malloc_retained'] else 'returned: glibc default'})")
    print(f"{'op':<16}{'count':>6}{'seconds':>10}{'share':>8}{'GFLOP':>10}{'GFLOP/s':>10}{'over':>8}  kernels")
    total_t = sum(v["seconds"] for v in per_op.values()) or 1.0
    for name, v in per_op.items():
        if v["seconds"] < 1e-4 and not v["flops"]:
            continue
        kern = f"fast {v['fast']}" + (f", ref {v['ref']}" if v["ref"] else "")
        print(f"{name:<16}{v['count']:>6}{v['seconds']:>10.3f}{v['seconds'] / total_t:>8.1%}"
              f"{v['flops'] / 1e9:>10.1f}{v['gflops']:>10.1f}{v['over_sgemm_seconds']:>8.3f}  {kern}")
    return 0
