"""OpenBLAS's kernels for this CPU, chosen before NumPy loads OpenBLAS (which reads OPENBLAS_CORETYPE only then).

NumPy's OpenBLAS carries kernels for many CPUs and picks one set when it loads, from the CPU's vendor, family and
features, unless the environment variable OPENBLAS_CORETYPE names one. On AMD Zen 4 (family 0x19 with AVX-512)
0.3.31 picks its Skylake-X kernels (AVX-512). Zen 4 executes a 512-bit FMA as two 256-bit halves, and there
OpenBLAS's Haswell kernels (AVX2; also what 0.3.31 runs for OPENBLAS_CORETYPE=Zen) ran the product shapes of the
encoders 0-8 % faster on one thread and the 4096^3 sgemm ~7 % faster on two; whole encodes took 1-5 % less time
(BENCHMARKS.md, session 22).

So the CLI calls `choose_kernels` before anything imports NumPy: on a Zen 4 it sets OPENBLAS_CORETYPE=Haswell
for the process and its children, unless the variable is set already (`OPENBLAS_CORETYPE=SkylakeX npggml ...`
keeps OpenBLAS's own choice). Other CPUs keep OpenBLAS's choice: nothing was measured there. This module must not
import NumPy.
"""

from __future__ import annotations

import os
import sys

ENV = "OPENBLAS_CORETYPE"


def choice(cpuinfo: str) -> str | None:
    """The core type to ask for, given the text of /proc/cpuinfo; None keeps OpenBLAS's own choice."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())  # the first processor's (they are all alike)
    zen4 = (fields.get("vendor_id") == "AuthenticAMD" and fields.get("cpu family") == "25"
            and "avx512f" in fields.get("flags", "").split())
    return "Haswell" if zen4 else None


def choose_kernels(environ=os.environ, cpuinfo_path: str = "/proc/cpuinfo") -> str | None:
    """Set OPENBLAS_CORETYPE where `choice` asks for a core type; returns the value set, or None if nothing was
    (the variable already set, NumPy already loaded, no /proc/cpuinfo, or not a Zen 4)."""
    if ENV in environ or "numpy" in sys.modules:  # the user's choice; or too late, OpenBLAS has read it
        return None
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as f:
            core = choice(f.read())
    except OSError:
        return None
    if core:
        environ[ENV] = core
    return core
