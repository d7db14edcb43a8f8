"""NumPy's BLAS, driven from a small pool of Python threads instead of OpenBLAS's own threads.

OpenBLAS worker threads busy-wait for a while after every call; with Numba's worker threads running kernels
between GEMMs on the same cores, the two pools fight (a tiny-model encode ran 3-4x slower). So the fast kernels
switch OpenBLAS to one thread (once, on first use; `blas_threads` restores it for callers that want NumPy's
default back) and split each product over `workers()` Python threads themselves: `np.matmul` releases the GIL,
so each thread runs a single-threaded sgemm on its share of the batch or of the rows.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from npggml.ops.openblas import get_threads, set_threads, threads

_pool: ThreadPoolExecutor | None = None
_switched = False
_default_threads: int | None = None


def use_own_threads() -> None:
    """OpenBLAS to one thread, once (the pool provides the parallelism)."""
    global _switched, _default_threads
    if not _switched:
        _switched = True
        _default_threads = get_threads()
        set_threads(1)


def blas_threads(n: int | None = None):
    """OpenBLAS with `n` threads (default: what it had before the fast kernels switched it) inside the block."""
    return threads(n if n is not None else (_default_threads or get_threads() or 1))


def workers() -> int:
    return max(1, numba.get_num_threads())


def pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=workers(), thread_name_prefix="npggml-blas")
    return _pool


def run_split(fn, n: int, min_chunk: int = 1) -> None:
    """fn(lo, hi) over [0, n) on `workers()` threads (the caller's and the pool's), which take chunks from a
    shared cursor: each takes ceil(remaining / (2 * threads)) items, at least `min_chunk`, so the chunks start
    large and shrink towards the end and a thread that runs slower (a busy host core, a cold cache) simply
    takes fewer. A static split into halves left one thread waiting ~10 % of the time. Inline when one thread."""
    if n <= 0:
        return
    parts = max(1, min(workers(), n // max(1, min_chunk)))
    if parts == 1:
        fn(0, n)
        return
    lock = threading.Lock()
    cursor = [0]

    def take() -> tuple[int, int] | None:
        with lock:
            lo = cursor[0]
            if lo >= n:
                return None
            hi = min(n, lo + max(min_chunk, -(-(n - lo) // (2 * parts))))
            cursor[0] = hi
            return lo, hi

    def loop() -> None:
        while (span := take()) is not None:
            fn(*span)

    futs = [pool().submit(loop) for _ in range(parts - 1)]
    try:
        loop()
    finally:
        for f in futs:
            f.result()


def gemms(tasks: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
    """out = x @ y for each 2-D (x, y, out) task, spread over the pool: whole tasks when there are enough of
    them, else the rows of each product."""
    use_own_threads()
    if not tasks:
        return
    n_w = workers()
    flops = sum(2 * o.size * x.shape[-1] for x, _, o in tasks)
    if n_w == 1 or flops < 1 << 22:
        for x, y, o in tasks:
            np.matmul(x, y, out=o)
        return
    if len(tasks) >= 2 * n_w or len(tasks) % n_w == 0:

        def some(lo, hi):
            for x, y, o in tasks[lo:hi]:
                np.matmul(x, y, out=o)

        run_split(some, len(tasks))
        return
    for x, y, o in tasks:
        split(x, y, o)


def run_parts(fn, cuts: list[int]) -> None:
    """fn(cuts[i], cuts[i + 1]) for each part, one part a thread. For products that every part packs an operand
    again for: one part a thread is 1-5 % faster than two (BENCHMARKS.md, session 18)."""

    def some(lo, hi):
        for i in range(lo, hi):
            fn(cuts[i], cuts[i + 1])

    run_split(some, len(cuts) - 1)


def even_cuts(n: int, least: int = 1) -> list[int]:
    """[0, n) in one equal part a thread, fewer when a part would have under `least` items."""
    parts = max(1, min(workers(), n // max(1, least)))
    return [i * n // parts for i in range(parts + 1)]


def split(x: np.ndarray, y: np.ndarray, o: np.ndarray) -> None:
    """o = x @ y over the pool, cut along the rows of x or the columns of y: whichever makes the operand that
    every thread packs again (the uncut one) the smaller, in one part a thread (each part re-packs that operand,
    worth 10-20 rows of the product for these encoders' weights)."""
    if x.shape[0] * x.shape[1] <= y.shape[0] * y.shape[1] and o.shape[1] >= 32 * workers():

        def cols(lo, hi):
            np.matmul(x, y[:, lo:hi], out=o[:, lo:hi])

        run_parts(cols, even_cuts(o.shape[1], 32))
        return

    def rows(lo, hi):
        np.matmul(x[lo:hi], y, out=o[lo:hi])

    run_parts(rows, even_cuts(o.shape[0], 16))


def batched(x: np.ndarray, y: np.ndarray, out: np.ndarray) -> None:
    """np.matmul(x, y, out=out) on broadcast stacks (NumPy loops over the batch in C), the batch cut over the
    pool along its first axis with at least `workers()` entries (size-1 axes of x or y broadcast)."""
    use_own_threads()
    nd = out.ndim - 2
    axis = next((i for i in range(nd) if out.shape[i] >= workers()), None)
    flops = 2 * out.size * x.shape[-1]
    if axis is None or workers() == 1 or flops < 1 << 22:
        np.matmul(x, y, out=out)
        return

    def take(a, lo, hi):
        if a.shape[axis] == 1:
            return a
        idx = (slice(None),) * axis + (slice(lo, hi),)
        return a[idx]

    def part(lo, hi):
        np.matmul(take(x, lo, hi), take(y, lo, hi), out=take(out, lo, hi))

    run_split(part, out.shape[axis])


def matmul(x: np.ndarray, y: np.ndarray, out: np.ndarray) -> None:
    """np.matmul(x, y, out=out) for stacks `(..., N, K) @ (..., K, M)` of one batch shape, on the pool."""
    if out.ndim == 2:
        gemms([(x, y, out)])
        return
    batch = out.shape[:-2]
    x = np.broadcast_to(x, (*batch, *x.shape[-2:]))
    y = np.broadcast_to(y, (*batch, *y.shape[-2:]))
    gemms([(x[i], y[i], out[i]) for i in np.ndindex(*batch)])
