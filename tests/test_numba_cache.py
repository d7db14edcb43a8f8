"""Numba's on-disk cache: one directory per version of `npggml.ops`' sources (so a kernel never keeps machine
code compiled from an older version of a helper it inlines from another file), and a second process compiles
nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from npggml.ops._cache import OPS_DIR, sources_digest

PROBE = """
import json, numba, numpy as np
from npggml.ops.fast._erf import gelu_erf_exact
x = np.linspace(-3, 3, 64, dtype=np.float32).reshape(1, 1, 4, 16)
gelu_erf_exact(x, np.empty_like(x), np.zeros(0, np.float32))
st = gelu_erf_exact.stats
print(json.dumps({"dir": numba.config.CACHE_DIR, "hits": sum(st.cache_hits.values()),
                  "misses": sum(st.cache_misses.values())}))
"""


def _probe(cache_dir: Path) -> dict:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir)}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_digest_follows_every_source(tmp_path):
    (tmp_path / "fast").mkdir()
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "fast" / "_common.py").write_text("def helper(): return 1\n")
    before = sources_digest(tmp_path)
    assert sources_digest(tmp_path) == before
    (tmp_path / "fast" / "_common.py").write_text("def helper(): return 2\n")  # a helper other kernels inline
    changed = sources_digest(tmp_path)
    assert changed != before
    (tmp_path / "b.py").write_text("")  # a new file
    assert sources_digest(tmp_path) != changed


def test_second_process_hits_the_versioned_cache(tmp_path):
    first = _probe(tmp_path)
    assert Path(first["dir"]) == tmp_path / sources_digest(OPS_DIR)
    assert first["misses"] >= 1
    assert any(Path(first["dir"]).rglob("_erf.gelu_erf_exact-*.nbi"))  # written there, not next to the sources
    second = _probe(tmp_path)
    assert second["dir"] == first["dir"]
    assert second["misses"] == 0 and second["hits"] >= 1
