"""Optional cross-check against a real ggml CPU build (see tests/ggml_harness/harness.c).

Enabled when `NPGGML_GGML_BUILD` names a llama.cpp/ggml CMake build directory (libraries in `bin/`, the source
tree found through its CMakeCache.txt), or `NPGGML_GGML_LIB` names the library directory and
`NPGGML_GGML_INCLUDE` ggml's include directory. The harness is compiled once per session with the system C
compiler.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

_HARNESS_SRC = Path(__file__).parent / "ggml_harness" / "harness.c"
_NP_TYPES = {"f32": np.float32, "f16": np.float16, "i32": np.int32, "bf16": np.uint16}
_cache: dict[str, Path] = {}


class BF16(np.ndarray):
    """Marker: raw bfloat16 bits (uint16) to be passed as a BF16 tensor."""


def as_bf16(bits: np.ndarray) -> BF16:
    return np.asarray(bits, dtype=np.uint16).view(BF16)


def _dirs() -> tuple[Path, Path] | None:
    lib = os.environ.get("NPGGML_GGML_LIB")
    inc = os.environ.get("NPGGML_GGML_INCLUDE")
    build = os.environ.get("NPGGML_GGML_BUILD")
    if build:
        b = Path(build)
        lib = lib or str(b / "bin")
        if inc is None and (b / "CMakeCache.txt").exists():
            m = re.search(r"^ggml_SOURCE_DIR:STATIC=(.*)$", (b / "CMakeCache.txt").read_text(), re.M)
            if m:
                inc = str(Path(m.group(1)) / "include")
    if not lib or not inc:
        return None
    return Path(lib), Path(inc)


def available() -> str | None:
    """None when usable, else the reason it is not."""
    d = _dirs()
    if d is None:
        return "set NPGGML_GGML_BUILD (or NPGGML_GGML_LIB + NPGGML_GGML_INCLUDE) to cross-check against ggml"
    if not (d[1] / "ggml.h").exists():
        return f"no ggml.h in {d[1]}"
    if shutil.which("cc") is None:
        return "no C compiler (cc)"
    return None


def harness() -> Path:
    if "exe" not in _cache:
        lib, inc = _dirs()
        out = Path(tempfile.mkdtemp(prefix="npggml_harness_")) / "harness"
        cmd = ["cc", "-O2", "-o", str(out), str(_HARNESS_SRC), f"-I{inc}", f"-L{lib}", "-lggml", "-lggml-base",
               "-lggml-cpu", f"-Wl,-rpath,{lib}", "-lm"]
        subprocess.run(cmd, check=True, capture_output=True)
        _cache["exe"] = out
    return _cache["exe"]


def _type_of(x: np.ndarray) -> str:
    if isinstance(x, BF16):
        return "bf16"
    return {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16", np.dtype(np.int32): "i32"}[x.dtype]


def run(op: str, inputs=(), ints=(), floats=(), threads: int = 1) -> np.ndarray:
    """Run `op` in ggml on NumPy-order arrays (None for a NULL source); returns the result in NumPy order."""
    exe = harness()
    with tempfile.TemporaryDirectory(prefix="npggml_x_") as tmp:
        lines = [f"op {op}", f"ints {len(ints)} " + " ".join(str(int(i)) for i in ints),
                 f"floats {len(floats)} " + " ".join(repr(float(np.float32(f))) for f in floats),
                 f"inputs {len(inputs)}"]
        for i, x in enumerate(inputs):
            if x is None:
                lines.append("none")
                continue
            t = _type_of(x)
            data = np.ascontiguousarray(np.asarray(x).view(np.ndarray) if t == "bf16" else x)
            ne = list(reversed(data.shape)) + [1] * (4 - data.ndim)
            path = Path(tmp) / f"in{i}.bin"
            data.tofile(path)
            lines.append(f"{t} {ne[0]} {ne[1]} {ne[2]} {ne[3]} {path}")
        spec = Path(tmp) / "spec.txt"
        spec.write_text("\n".join(lines) + "\n")
        env = dict(os.environ, NPGGML_GGML_THREADS=str(threads))
        res = subprocess.run([str(exe), str(spec), str(Path(tmp) / "out")], capture_output=True, text=True,
                             env=env)
        if res.returncode != 0:
            raise RuntimeError(f"ggml harness failed for {op}: {res.stderr.strip()}")
        t, *ne = (Path(tmp) / "out.txt").read_text().split()
        ne = [int(n) for n in ne]
        out = np.fromfile(Path(tmp) / "out.bin", dtype=_NP_TYPES[t])
        return out.reshape(tuple(reversed(ne)))
