"""`tools/sidebyside/round.py`: the real `npggml bench` on the tiny model beside stand-ins for llama.cpp's
`dsocr_bench` and for the PyTorch Python (scripts that print what those print), so that its parsing, the
alternated order, the table and its errors are checked without either installed (no timing asserts)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
TINY = FIXTURES / "models" / "mmproj-tiny-dsocr-f32.gguf"
IMAGE = FIXTURES / "images" / "doc_620x560.png"

spec = importlib.util.spec_from_file_location("sidebyside_round", ROOT / "tools" / "sidebyside" / "round.py")
round_py = importlib.util.module_from_spec(spec)
spec.loader.exec_module(round_py)


def script(path: Path, body: str) -> Path:
    """An executable Python script that appends its argv to `path`.log, then runs `body`."""
    path.write_text(f"#!{sys.executable}\nimport json, sys\n"
                    f"open({str(path) + '.log'!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n{body}\n")
    path.chmod(0o755)
    return path


def round_main(*argv: str) -> int:
    """round.py on the tiny v1 model's global view and the small test page, plus `argv`."""
    return round_py.main(["--v1", str(TINY), "--graphs", "v1-global", "--image", str(IMAGE), *argv])


@pytest.fixture
def fakes(tmp_path):
    lcp = script(tmp_path / "dsocr_bench", "print('loading...')\n"
                 "print('RESULT proj=v1 threads=2 fa=enabled batching=mtmd global_only=1 tokens=273 '\n"
                 "      'median_ms=8000.0')")
    torch = script(tmp_path / "python", "print(json.dumps({'seconds': [3.0, 2.0, 4.0], 'median_seconds': 3.0},"
                   " indent=1))")
    return lcp, torch


def test_round_table_and_order(fakes, tmp_path, capsys):
    lcp, torch = fakes
    out_json = tmp_path / "round.json"
    rc = round_main("--repeat", "1", "--passes", "2", "--dsocr-bench", str(lcp), "--torch-python", str(torch),
                    "--json", str(out_json))
    assert rc == 0
    out, err = capsys.readouterr()
    # pass 1 in the order npggml, llama.cpp, pytorch; pass 2 reversed
    programs = [line.split()[3].rstrip(":") for line in err.splitlines() if line.startswith("pass ")]
    assert programs == ["npggml", "llama.cpp", "pytorch", "pytorch", "llama.cpp", "npggml"]
    # the stand-ins were called with the graph's arguments
    lcp_args = (tmp_path / "dsocr_bench.log").read_text().splitlines()
    assert len(lcp_args) == 2 and "--global-only" in lcp_args[0].split() and str(TINY) in lcp_args[0].split()
    torch_args = (tmp_path / "python.log").read_text().split()
    assert torch_args[0].endswith("bench_torch.py") and torch_args[1:5] == ["--model", "v1", "--views", "global"]

    results = json.loads(out_json.read_text())["results"]
    assert [r["pass"] for r in results] == [1, 2]
    for r in results:
        assert r["llama.cpp"]["seconds"] == 8.0 and r["pytorch"]["seconds"] == 3.0
        assert r["npggml"]["seconds"] > 0 and r["npggml"]["sgemm_gflops"] > 0
        assert "blas_core" in r["npggml"]  # which OpenBLAS kernels npggml's products ran on
    rows = [line for line in out.splitlines() if line.startswith("| v1-global")]
    assert [row.split("|")[2].strip() for row in rows] == ["1", "2", "median"]
    npg = results[0]["npggml"]["seconds"]
    cells = [c.strip() for c in rows[0].split("|")[1:-1]]
    assert cells[5] == "8.00 s" and cells[6] == f"{8.0 / npg:.2f}x"
    assert cells[7] == "3.00 s" and cells[8] == f"{3.0 / npg:.2f}x"


def test_round_names_a_failing_program(tmp_path, capsys, monkeypatch):
    real = round_py.measure
    npggml = {"seconds": 1.0, "sgemm_gflops": 100.0, "sgemm_ratio": 0.5}  # npggml's own run: the test above
    monkeypatch.setattr(round_py, "measure", lambda p, g, a: npggml if p == "npggml" else real(p, g, a))
    broken = script(tmp_path / "broken_bench", "sys.stderr.write('clip_init: failed to load model\\n')\n"
                    "sys.exit(1)")
    rc = round_main("--repeat", "1", "--passes", "1", "--dsocr-bench", str(broken))
    assert rc == 2
    assert capsys.readouterr().err.splitlines()[-1] == \
        "round: error: llama.cpp exited with 1: clip_init: failed to load model"

    lcp = script(tmp_path / "dsocr_bench", "print('RESULT proj=v1 median_ms=8000.0')")
    for body, message in (("print('Traceback: no module named torch')", "pytorch printed no JSON object"),
                          ("print(json.dumps({'seconds': []}))", "pytorch's JSON has no median_seconds")):
        torch = script(tmp_path / "python", body)
        rc = round_main("--passes", "1", "--dsocr-bench", str(lcp), "--torch-python", str(torch))
        assert rc == 2
        assert capsys.readouterr().err.splitlines()[-1].startswith(f"round: error: {message}")

    not_executable = tmp_path / "dsocr_bench.cpp"
    not_executable.write_text("int main() {}\n")
    rc = round_main("--passes", "1", "--dsocr-bench", str(not_executable))
    assert rc == 2
    assert capsys.readouterr().err.splitlines()[-1] == \
        f"round: error: llama.cpp: cannot run {not_executable}: Permission denied"

    silent = script(tmp_path / "silent_bench", "print('no result here')")
    rc = round_main("--repeat", "1", "--passes", "1", "--dsocr-bench", str(silent))
    assert rc == 2
    assert "printed no RESULT line" in capsys.readouterr().err.splitlines()[-1]


@pytest.mark.parametrize("argv,message", [
    (["--graphs", "v3-global"], "--graphs: unknown v3-global"),
    (["--graphs", "v2-page"], "graph v2-page needs --v2"),
    (["--passes", "0"], "must be >= 1"),
])
def test_round_rejects_bad_arguments(fakes, argv, message, capsys):
    lcp, _ = fakes
    with pytest.raises(SystemExit) as e:
        round_main("--dsocr-bench", str(lcp), *argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err
