"""`npggml bench --json` on the tiny model: the report's fields and its FLOP accounting (no timing asserts)."""

from __future__ import annotations

import json
import platform
from pathlib import Path

from npggml.tools.cli import main

FIXTURES = Path(__file__).parent / "fixtures"


def test_bench_json(capsys):
    rc = main(["bench", "--mmproj", str(FIXTURES / "models" / "mmproj-tiny-dsocr-f32.gguf"),
               "--image", str(FIXTURES / "images" / "doc_620x560.png"), "--no-tiles", "--repeat", "1", "--json"])
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    for key in ("encode_seconds", "flops", "gflops", "sgemm_gflops", "sgemm_ratio", "compile_seconds",
                "peak_rss_bytes", "per_op", "numba_cache", "malloc_retained", "blas_core"):
        assert key in r, key
    assert r["malloc_retained"] is (platform.libc_ver()[0] == "glibc")  # the CLI's default --malloc retain
    assert r["sgemm_gflops"] > 0 and r["encode_seconds"] > 0 and r["peak_rss_bytes"] > 0
    assert abs(r["sgemm_ratio"] - r["gflops"] / r["sgemm_gflops"]) < 1e-3
    per = r["per_op"]
    # one per SAM layer: the global ones whole, the windowed ones for the rows the projection picks (the global
    # view's windows are padded)
    assert per["sam_rel_attn"]["count"] == per["sam_rel_attn"]["fast"] == 4
    assert per["sam_rel_attn_rows"]["count"] == per["sam_rel_attn_rows"]["fast"] == 8
    assert per["attn"]["count"] == per["attn"]["fast"] > 0 and "soft_max_ext" not in per  # CLIP's attention
    assert per["mul_mat"]["flops"] > 0
    assert abs(sum(v["flops"] for v in per.values()) - r["flops"]) <= 1e-6 * r["flops"]
    # the sgemm floor: the FLOPs at the sgemm rate, and each op type's seconds beyond its share of it
    rate = r["sgemm_gflops"] * 1e9
    assert abs(r["sgemm_floor_seconds"] - r["flops"] / rate) <= 1e-3 * r["sgemm_floor_seconds"]
    for v in per.values():
        assert abs(v["over_sgemm_seconds"] - (v["seconds"] - v["flops"] / rate)) < 2e-4
    assert per["cont"]["flops"] == 0 and per["cont"]["over_sgemm_seconds"] == per["cont"]["seconds"] > 0


def test_bench_rejects_a_repeat_below_one(capsys):
    rc = main(["bench", "--image", str(FIXTURES / "images" / "doc_620x560.png"), "--repeat", "0"])
    assert rc == 2
    assert capsys.readouterr().err == "npggml: error: --repeat must be >= 1 (got 0)\n"
