"""Tile-grid selection for the DeepSeek-OCR dynamic-resolution ("Gundam") preprocessing.

A grid is `(gw, gh)`: gw tiles across, gh tiles down. Tiling happens only when the page is larger
than one tile on some side (`w > tile or h > tile`). The candidates are every grid with
`min_tiles <= gw*gh <= max_tiles`, ordered by tile count; the grid whose aspect `gw/gh` is closest
to `w/h` wins, and on an exact tie of that distance a later candidate replaces the current pick
when `w*h > 0.5 * tile**2 * gw*gh` (InternVL's `find_closest_aspect_ratio`).

The two modes differ only in arithmetic and in the order of candidates with the same tile count,
which matters only when their aspect distances tie exactly:

* `reference` (the official DeepSeek code): the candidates are a Python `set` sorted with the
  stable `sorted(key=gw*gh)`, so equal counts keep CPython's set iteration order; the arithmetic is
  Python float (double).
* `llama.cpp` (mtmd 0c1e57098): the candidates are appended in loop order (n = min..max, gw = 1..n,
  gh = 1..n, skipping duplicates) and sorted with `std::sort`, which is not stable. We replay GNU
  libstdc++'s introsort step by step (median-of-three quicksort down to blocks of 16, heapsort if
  the depth limit is hit, then a final insertion sort), so the order is the one a GCC/libstdc++
  build produces. Aspect ratios, distances and the area test use float32.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from npggml.errors import NpggmlError

MODES = ("reference", "llama.cpp")

_THRESHOLD = 16  # libstdc++ _S_threshold


def _check_range(min_tiles: int, max_tiles: int) -> None:
    if min_tiles < 1 or max_tiles < min_tiles:
        raise NpggmlError(
            f"invalid tile range: min_tiles={min_tiles}, max_tiles={max_tiles} (need 1 <= min <= max)"
        )


def reference_candidates(min_tiles: int, max_tiles: int) -> list[tuple[int, int]]:
    """Candidate grids in the order of the official `dynamic_preprocess`."""
    _check_range(min_tiles, max_tiles)
    grids = {
        (i, j)
        for n in range(min_tiles, max_tiles + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_tiles <= i * j <= max_tiles
    }
    return sorted(grids, key=lambda g: g[0] * g[1])


def llamacpp_candidates(min_tiles: int, max_tiles: int) -> list[tuple[int, int]]:
    """Candidate grids in the order llama.cpp's `get_target_ratios` leaves them (libstdc++ sort)."""
    _check_range(min_tiles, max_tiles)
    grids: list[tuple[int, int]] = []
    seen: set[tuple[int, int]] = set()
    for n in range(min_tiles, max_tiles + 1):
        for w in range(1, n + 1):
            for h in range(1, n + 1):
                if min_tiles <= w * h <= max_tiles and (w, h) not in seen:
                    seen.add((w, h))
                    grids.append((w, h))
    libstdcxx_sort(grids, lambda a, b: a[0] * a[1] < b[0] * b[1])
    return grids


def candidates(min_tiles: int, max_tiles: int, mode: str) -> list[tuple[int, int]]:
    if mode == "reference":
        return reference_candidates(min_tiles, max_tiles)
    if mode == "llama.cpp":
        return llamacpp_candidates(min_tiles, max_tiles)
    raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")


def choose_grid(
    w: int, h: int, tile: int, min_tiles: int, max_tiles: int, mode: str = "reference"
) -> tuple[int, int] | None:
    """The (gw, gh) tile grid for a w x h page, or None when the page fits in one tile."""
    if w <= 0 or h <= 0:
        raise ValueError(f"page size must be positive, got {w}x{h}")
    grids = candidates(min_tiles, max_tiles, mode)
    if w <= tile and h <= tile:
        return None
    best = (1, 1)
    if mode == "reference":
        aspect = w / h
        area = w * h
        best_diff = float("inf")
        for gw, gh in grids:
            diff = abs(aspect - gw / gh)
            if diff < best_diff:
                best_diff, best = diff, (gw, gh)
            elif diff == best_diff and area > 0.5 * tile * tile * gw * gh:
                best = (gw, gh)
        return best
    f32 = np.float32
    aspect32 = f32(w) / f32(h)
    area32 = f32(w * h)
    best_diff32 = f32(np.finfo(np.float32).max)
    for gw, gh in grids:
        diff32 = abs(aspect32 - f32(gw) / f32(gh))
        if diff32 < best_diff32:
            best_diff32, best = diff32, (gw, gh)
        elif diff32 == best_diff32 and area32 > f32(0.5) * f32(tile * tile * gw * gh):
            best = (gw, gh)
    return best


# ---------------------------------------------------------------------------------------------
# GNU libstdc++ std::sort, replayed on a Python list (in place). `less(a, b)` is the comparator.


def libstdcxx_sort(a: list, less: Callable[[object, object], bool]) -> None:
    n = len(a)
    if n < 2:
        return
    _introsort_loop(a, 0, n, 2 * (n.bit_length() - 1), less)
    _final_insertion_sort(a, 0, n, less)


def _introsort_loop(a: list, first: int, last: int, depth: int, less) -> None:
    while last - first > _THRESHOLD:
        if depth == 0:
            _heap_sort(a, first, last, less)
            return
        depth -= 1
        cut = _partition_pivot(a, first, last, less)
        _introsort_loop(a, cut, last, depth, less)
        last = cut


def _partition_pivot(a: list, first: int, last: int, less) -> int:
    mid = first + (last - first) // 2
    _median_to_first(a, first, first + 1, mid, last - 1, less)
    # Unguarded Hoare partition of [first+1, last) around the pivot now at `first`.
    lo, hi = first + 1, last
    pivot = a[first]
    while True:
        while less(a[lo], pivot):
            lo += 1
        hi -= 1
        while less(pivot, a[hi]):
            hi -= 1
        if not lo < hi:
            return lo
        a[lo], a[hi] = a[hi], a[lo]
        lo += 1


def _median_to_first(a: list, result: int, i: int, j: int, k: int, less) -> None:
    if less(a[i], a[j]):
        if less(a[j], a[k]):
            m = j
        elif less(a[i], a[k]):
            m = k
        else:
            m = i
    elif less(a[i], a[k]):
        m = i
    elif less(a[j], a[k]):
        m = k
    else:
        m = j
    a[result], a[m] = a[m], a[result]


def _final_insertion_sort(a: list, first: int, last: int, less) -> None:
    if last - first > _THRESHOLD:
        _insertion_sort(a, first, first + _THRESHOLD, less)
        for i in range(first + _THRESHOLD, last):
            _linear_insert(a, i, less)
    else:
        _insertion_sort(a, first, last, less)


def _insertion_sort(a: list, first: int, last: int, less) -> None:
    for i in range(first + 1, last):
        if less(a[i], a[first]):
            val = a[i]
            a[first + 1 : i + 1] = a[first:i]
            a[first] = val
        else:
            _linear_insert(a, i, less)


def _linear_insert(a: list, i: int, less) -> None:
    val = a[i]
    while less(val, a[i - 1]):
        a[i] = a[i - 1]
        i -= 1
    a[i] = val


def _heap_sort(a: list, first: int, last: int, less) -> None:
    """libstdc++ `__partial_sort(first, last, last)`: make_heap, then repeated pop_heap."""
    n = last - first
    if n >= 2:
        parent = (n - 2) // 2
        while True:
            _adjust_heap(a, first, parent, n, a[first + parent], less)
            if parent == 0:
                break
            parent -= 1
    while last - first > 1:
        last -= 1
        val = a[last]
        a[last] = a[first]
        _adjust_heap(a, first, 0, last - first, val, less)


def _adjust_heap(a: list, base: int, hole: int, n: int, val, less) -> None:
    top = hole
    child = hole
    while child < (n - 1) // 2:
        child = 2 * (child + 1)
        if less(a[base + child], a[base + child - 1]):
            child -= 1
        a[base + hole] = a[base + child]
        hole = child
    if n % 2 == 0 and child == (n - 2) // 2:
        child = 2 * (child + 1)
        a[base + hole] = a[base + child - 1]
        hole = child - 1
    parent = (hole - 1) // 2
    while hole > top and less(a[base + parent], val):
        a[base + hole] = a[base + parent]
        hole = parent
        parent = (hole - 1) // 2
    a[base + hole] = val
