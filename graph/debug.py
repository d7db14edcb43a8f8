"""The debugging verbosity ladder, and the name filter shared by the debugging tools.

Levels (env `NPGGML_DEBUG=0..4`, or `with npggml.debug(level): ...`, which wins over the env):

    1  a graph summary when a run starts (nodes, leafs, weight bytes, arena bytes, FLOPs) and a total at the end
    2  + one trace line per node as it runs:  [ 57] Qcur-3 = MUL_MAT(attn_q.weight{1024,1024}, ...) -> ... 0.41 ms
    3  + the node's value stats:               min=... max=... mean=... std=... nan=0
    4  + the kernel chosen and the strides:    kernel=ref nb={4,4096,...}

Output goes to stderr (or the context manager's `stream`). `NPGGML_DEBUG_MATCH` / `match=` limits levels 2-4
to nodes whose names match comma-separated fnmatch globs. The ladder rides on the interpreter's eval-callback
hooks (`attach`), composed with the caller's own `ask`/`observe`, which keep their protocol: the caller's
`ask` still sees every node, its `observe` only the nodes it asked for, and its False still stops the run.
At level 0 nothing is attached and a run costs nothing extra.
"""

from __future__ import annotations

import contextlib
import contextvars
import fnmatch
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from npggml.errors import NpggmlError

ENV, ENV_MATCH = "NPGGML_DEBUG", "NPGGML_DEBUG_MATCH"
MAX_LEVEL = 4


@dataclass(frozen=True)
class _Setting:
    level: int
    match: str | None
    stream: TextIO | None


_SETTING: contextvars.ContextVar[_Setting | None] = contextvars.ContextVar("npggml_debug", default=None)


def _parse_level(text: str, source: str) -> int:
    try:
        value = int(text.strip() or "0")
    except ValueError:
        raise NpggmlError(f"{source} must be an integer 0..{MAX_LEVEL}, got {text!r}") from None
    if not 0 <= value <= MAX_LEVEL:
        raise NpggmlError(f"{source} must be 0..{MAX_LEVEL}, got {value}")
    return value


def current() -> _Setting:
    """The active setting: the innermost `debug(...)` block, else the environment."""
    s = _SETTING.get()
    if s is not None:
        return s
    return _Setting(_parse_level(os.environ.get(ENV, ""), ENV), os.environ.get(ENV_MATCH) or None, None)


def level() -> int:
    return current().level


@contextlib.contextmanager
def debug(level: int = 2, *, match: str | None = None, stream: TextIO | None = None):
    """Set the verbosity for the runs inside the block: `with npggml.debug(3): enc.encode(page)`."""
    lvl = _parse_level(str(level), "debug level")
    token = _SETTING.set(_Setting(lvl, match, stream))
    try:
        yield
    finally:
        _SETTING.reset(token)


# --- name filter -----------------------------------------------------------------------------------
def parse_patterns(spec: str | None) -> list[str]:
    """'sam_layer_out-*, layer_out-23' -> ['sam_layer_out-*', 'layer_out-23'] (empty: match everything)."""
    return [p.strip() for p in (spec or "").split(",") if p.strip()]


def name_filter(spec: str | None) -> Callable[[str], bool]:
    """A predicate on node names: fnmatch globs (case-sensitive), comma-separated; None/empty matches all."""
    pats = parse_patterns(spec)
    if not pats:
        return lambda name: True
    exact = {p for p in pats if not any(c in p for c in "*?[")}
    globs = [p for p in pats if p not in exact]
    return lambda name: name in exact or any(fnmatch.fnmatchcase(name, g) for g in globs)


# --- hooks ------------------------------------------------------------------------------------------
def attach(interp, ask, observe, setting: _Setting | None = None):
    """Wrap a run's hooks with the ladder. Returns `(ask, observe, finish)`; call `finish()` after the run."""
    from npggml.graph import printer
    from npggml.graph.alloc import plan_graph

    s = setting or current()
    out = s.stream or sys.stderr
    g = interp.graph
    t_start = time.perf_counter()

    def emit(line: str) -> None:
        out.write(line + "\n")

    summ = printer.summary(g, interp.plan or plan_graph(g))
    emit(f"npggml debug: graph {printer.summary_line(summ)}")

    def finish() -> None:
        wall = time.perf_counter() - t_start
        done = sum(1 for k in interp.kernel_used if k)
        compute = sum(interp.times)
        kinds = {k: interp.kernel_used.count(k) for k in ("ref", "fast", "view")}
        rate = summ["flops"] / compute / 1e9 if compute > 0 else 0.0
        emit(f"npggml debug: ran {done}/{len(g.nodes)} nodes in {compute:.3f} s of kernels ({wall:.3f} s wall, "
             f"{rate:.2f} GFLOP/s); kernels: {kinds['ref']} ref, {kinds['fast']} fast, {kinds['view']} view")

    if s.level < 2:
        return ask, observe, finish

    wanted = name_filter(s.match)
    state = {"user": False}

    def debug_ask(node) -> bool:
        user = bool(ask(node)) if ask is not None else False
        state["user"] = user
        return user or wanted(node.name)

    def debug_observe(node, value, seconds) -> bool:
        if wanted(node.name):
            i = g.index[id(node)]
            emit(printer.trace_line(i, node, seconds))
            if s.level >= 3:
                emit(printer.stats_line(value))
            if s.level >= 4:
                emit(printer.strides_line(node, interp.kernel_used[i]))
        if state["user"] and observe is not None:
            return observe(node, value, seconds)
        return True

    return debug_ask, debug_observe, finish
