"""`npggml.ops.malloc.retain_freed_memory`: a freed large temporary stays in the process (and is reused), where
glibc's default hands it back to the kernel. Run in subprocesses: the policy is process-wide."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc malloc only")

PROBE = """
import os, sys, numpy as np
from npggml.ops.malloc import retain_freed_memory, retained
if sys.argv[1] == "retain":
    assert retain_freed_memory() and retained()
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
before = rss()
a = np.ones(64 << 18, np.float32)  # 64 MiB, touched
a_addr = a.ctypes.data
del a
after_free = rss()
b = np.ones(64 << 18, np.float32)
print(after_free - before, int(b.ctypes.data == a_addr))
"""


def _probe(mode: str) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], check=True, capture_output=True, text=True).stdout
    kept, same = out.split()
    return int(kept), int(same)


def test_retained_memory_is_kept_and_reused():
    kept, same = _probe("retain")
    assert kept >= 60 << 20  # the freed 64 MiB is still resident ...
    assert same == 1  # ... and the next temporary of that size gets the same memory back


def test_default_policy_returns_large_blocks():
    kept, _ = _probe("default")
    assert kept < 16 << 20
