"""glibc malloc policy for a process that runs graphs: keep freed memory instead of handing it back to the kernel.

The interpreter's arena is allocated once, but kernels still make temporaries (contiguous copies of strided
operands, score blocks, BLAS-ready copies). glibc serves every one above its mmap threshold with a fresh `mmap`
and returns it with `munmap` on free, so each call faults its pages in again. On a VM with free-page reporting
(virtio-balloon, Firecracker) a returned page also goes back to the host, and touching it again is a host fault:
on the machine of BENCHMARKS.md a 64 MiB temporary took from 11 ms up to 1 s to allocate and fill, and one v1
global view ran 15.0 s instead of 11.7 s. `retain_freed_memory()` turns off mmap'd chunks and heap trimming, so
a freed temporary is reused by the next one (what ggml gets from its one work buffer). The peak RSS stays the
high-water mark of live memory plus fragmentation; memory is returned at exit. The `npggml` CLI calls it at
start (`npggml --malloc default ...` keeps glibc's defaults); library users call it themselves if they want it.
Without glibc (musl, macOS, Windows) it does nothing and says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
_state: bool | None = None


def retain_freed_memory() -> bool:
    """No mmap'd chunks, no trimming, for the rest of the process. True when glibc took both settings."""
    global _state
    if _state is None:
        _state = False
        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            try:
                mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
            except (OSError, AttributeError):
                return False
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            _state = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    return _state


def retained() -> bool:
    """Whether `retain_freed_memory()` has been applied in this process."""
    return bool(_state)
