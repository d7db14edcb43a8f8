"""`npggml.tools.blas_core`: which OpenBLAS kernels the CLI asks for, and that it asks before NumPy loads them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from npggml.tools.blas_core import ENV, choice, choose_kernels

FLAGS = "fpu sse2 avx avx2 fma"


def cpu(vendor: str, family: int, avx512: bool) -> str:
    flags = FLAGS + (" avx512f avx512bw" if avx512 else "")
    return f"processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: {family}\nflags\t\t: {flags}\n\n"


def test_only_a_zen4_gets_the_haswell_kernels():
    assert choice(cpu("AuthenticAMD", 25, True)) == "Haswell"  # Zen 4: OpenBLAS would take Skylake-X's
    assert choice(cpu("AuthenticAMD", 25, False)) is None  # Zen 3: OpenBLAS takes its Zen kernels itself
    assert choice(cpu("AuthenticAMD", 26, True)) is None  # Zen 5: full-width AVX-512, not measured
    assert choice(cpu("GenuineIntel", 6, True)) is None
    assert choice("") is None
    assert choice(cpu("AuthenticAMD", 25, True) * 2) == "Haswell"  # one block per processor


def test_the_users_setting_wins(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text(cpu("AuthenticAMD", 25, True))
    monkeypatch.delitem(sys.modules, "numpy", raising=False)  # as before the CLI's imports; restored after
    env = {}
    assert choose_kernels(env, str(info)) == "Haswell" and env == {ENV: "Haswell"}
    env = {ENV: "SkylakeX"}
    assert choose_kernels(env, str(info)) is None and env == {ENV: "SkylakeX"}
    assert choose_kernels({}, str(tmp_path / "missing")) is None  # no /proc/cpuinfo: not Linux


def test_nothing_is_set_once_numpy_is_loaded(tmp_path):
    import numpy  # noqa: F401

    info = tmp_path / "cpuinfo"
    info.write_text(cpu("AuthenticAMD", 25, True))
    env = {}
    assert "numpy" in sys.modules and choose_kernels(env, str(info)) is None and env == {}


def test_the_cli_chooses_before_numpy_loads_openblas():
    """Importing the CLI module sets the variable early enough that OpenBLAS runs the kernels it names."""
    env = {k: v for k, v in os.environ.items() if k != ENV}
    code = ("import os; import npggml.tools.cli; from npggml.ops.openblas import corename; "
            "print(os.environ.get('OPENBLAS_CORETYPE'), corename())")
    asked, running = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                    check=True).stdout.split()
    info = Path("/proc/cpuinfo")
    expected = choice(info.read_text(errors="replace")) if info.exists() else None
    assert asked == str(expected)
    if expected and running != "None":  # a NumPy without a findable OpenBLAS has no core name
        assert running == expected
