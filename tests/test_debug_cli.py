"""`npggml trace`, `compare` and `graph` end to end on the tiny models and the fixture dumps.

Runs are kept short: the untiled page, `--match` to save few nodes, `--stop-after` where only the first SAM
block matters; the two complete runs are the fixture alignment checks.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import gguf
import numpy as np
import pytest
from fixtures_paths import FIXTURES, MODELS, fixture_dir

from npggml import preprocess as pp
from npggml.graph.alloc import plan_graph
from npggml.graph.printer import summary, to_dot
from npggml.models.encode import Encoder
from npggml.ops import registry
from npggml.tools.cli import main

V1 = str(MODELS / "mmproj-tiny-dsocr-f32.gguf")
PAGE_TILED = str(FIXTURES / "images" / "doc_1500x1000.png")
PAGE_SMALL = str(FIXTURES / "images" / "doc_620x560.png")
FIXTURE_NAMES = "sam_layer_out-0,sam_output,pos_embed,pre_ln,layer_out-0,layer_out-11,dsocr_output"
LLAMA_V1 = fixture_dir("llamacpp", "v1", "doc_1500x1000")


@pytest.fixture
def cli(capsys):
    def run(*argv):
        rc = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return rc, out, err

    return run


def trace_lines(out: str) -> list[str]:
    return [ln for ln in out.splitlines() if re.match(r"\[ *\d+\] ", ln)]


def profile_rows(text: str, title: str) -> list[dict]:
    """Rows of a `--profile` table up to its total (right-aligned numbers; keys have no spaces)."""
    lines = text.splitlines()
    k = next(i for i, ln in enumerate(lines) if ln.split()[:2] == [title, "nodes"])
    names, rows = lines[k].split(), []
    for ln in lines[k + 1:]:
        rows.append(dict(zip(names, ln.split())))
        if rows[-1][title] == "total":
            return rows
    raise AssertionError(f"no total row in the {title} table")


def table_rows(text: str, header_start: str) -> tuple[list[str], list[dict]]:
    """Parse a fixed-width table whose header line starts with `header_start` (cells may contain spaces)."""
    lines = text.splitlines()
    k = next(i for i, ln in enumerate(lines) if ln.startswith(header_start))
    head = lines[k]
    starts = [m.start() for m in re.finditer(r"(?:^|(?<=  ))\S", head)]
    names = [head[s:e].strip() for s, e in zip(starts, starts[1:] + [None])]
    rows = []
    for ln in lines[k + 1:]:
        if not ln.strip():
            break
        rows.append({n: ln[s:e].strip() for n, s, e in zip(names, starts, starts[1:] + [None])})
    return names, rows


# --- trace vs the llama.cpp fixture dumps --------------------------------------------------------------
def test_no_tiles_global_view_is_the_tiled_pages_global_view():
    """What makes `--no-tiles` dumps comparable with the global view (tensors_2) of the tiled fixture run."""
    hp = Encoder(V1, "llama.cpp").model.hparams
    tiled = pp.preprocess(PAGE_TILED, "deepseekocr", "llama.cpp", hp.min_tiles, hp.max_tiles)
    alone = pp.preprocess(PAGE_TILED, "deepseekocr", "llama.cpp", hp.min_tiles, hp.max_tiles, no_tiles=True)
    assert tiled.grid == (3, 2) and alone.grid is None
    assert np.array_equal(tiled.global_view, alone.global_view)
    meta = json.loads((LLAMA_V1 / "meta.json").read_text())
    assert meta["views"][2]["kind"] == "global" and "tensors_2" in meta["tensors_kept"]


def test_trace_no_tiles_lines_up_with_llamacpp_global_view(cli, tmp_path):
    out_dir = tmp_path / "t"
    rc, out, err = cli("trace", "--mmproj", V1, "--image", PAGE_TILED, "--mode", "llama.cpp", "--no-tiles",
                       "--match", FIXTURE_NAMES, "--stats", "--profile", "--save", out_dir)
    assert rc == 0, err
    lines = trace_lines(out)
    assert [re.match(r"\[ *\d+\] (.*?) = ", ln)[1] for ln in lines] == FIXTURE_NAMES.split(",")  # graph order
    assert re.fullmatch(r"\[ *\d+\] sam_layer_out-0 = ADD_RES\(.*\) -> \{32,64,64\} f32  \d+\.\d\d ms", lines[0])
    stats = [ln for ln in out.splitlines() if ln.startswith("      min=")]
    assert len(stats) == 7 and all(re.fullmatch(r"      min=\S+ max=\S+ mean=\S+ std=\S+ nan=0", s) for s in stats)

    # --profile: every node of the complete run, the graph's FLOPs, one row per SAM and CLIP layer
    g = Encoder(V1, "llama.cpp").build(None).graph
    ops = profile_rows(out, "op")
    total = next(r for r in ops if r["op"] == "total")
    assert int(total["nodes"]) == len(g.nodes) == sum(int(r["nodes"]) for r in ops if r["op"] != "total")
    assert float(total["GFLOP"]) == pytest.approx(summary(g)["flops"] / 1e9, abs=1e-4)
    layers = profile_rows(out, "layer")
    keys = [r["layer"] for r in layers]
    assert [f"global/sam_layer-{i}" for i in range(12)] == [k for k in keys if "sam_layer" in k]
    assert [f"global/layer-{i}" for i in range(12)] == [k for k in keys if k.startswith("global/layer")]

    # one view: a flat folder with llama.cpp's names and shapes
    index = json.loads((out_dir / "index.json").read_text())
    assert index["complete"]
    assert [f["file"] for f in index["files"]] == [f"{n}.npy" for n in FIXTURE_NAMES.split(",")]
    for f in index["files"]:
        saved = np.load(out_dir / f["file"])
        assert saved.shape == np.load(LLAMA_V1 / "tensors_2" / f["file"]).shape == tuple(reversed(f["ne"]))
    rc, out, _ = cli("compare", out_dir, LLAMA_V1 / "tensors_2", "--rtol", "1e-3")
    assert rc == 0, out
    assert "result: all 7 common nodes agree" in out and "only in" not in out


def test_trace_tiled_page_splits_views_like_llamacpp(cli, tmp_path):
    out_dir = tmp_path / "t"
    page = Encoder(V1, "llama.cpp").build((3, 2))
    # the SAM position table resized to the tile size: computed once for the whole tile batch
    table = next(n for n in page.graph.nodes if n.op == "interpolate" and page.groups[id(n)] == "tiles")
    rc, out, err = cli("trace", "--mmproj", V1, "--image", PAGE_TILED, "--mode", "llama.cpp", "-q",
                       "--match", f"{FIXTURE_NAMES},embeddings,{table.name}", "--save", out_dir)
    assert rc == 0, err
    assert trace_lines(out) == []  # --quiet
    index = json.loads((out_dir / "index.json").read_text())
    assert [v["folder"] for v in index["views"]] == ["view_0", "view_1", "view_2"]
    assert [v["batch"] for v in index["views"]] == [[0, 3], [3, 6], [0, 1]]
    # tile rows are cut out of the batch of 6 tiles; llama.cpp's view 0 is the first row of 3 tiles
    for k, ref in ((0, "tensors_0"), (2, "tensors_2")):
        for name in FIXTURE_NAMES.split(","):
            assert np.load(out_dir / f"view_{k}" / f"{name}.npy").shape == np.load(
                LLAMA_V1 / ref / f"{name}.npy").shape, (k, name)
        rc, cmp_out, _ = cli("compare", out_dir / f"view_{k}", LLAMA_V1 / ref)
        assert rc == 0, cmp_out
    both = [np.load(out_dir / f"view_{k}" / "sam_layer_out-0.npy") for k in (0, 1)]
    assert both[0].shape == (3, 40, 40, 32) and not np.array_equal(both[0], both[1])
    # the page-level output lives at the top; a pixel-independent table of the tiles goes whole to each row
    assert np.load(out_dir / "embeddings.npy").shape == (893, 48)
    tables = [f for f in index["files"] if f["name"] == table.name]
    assert [(f["view"], f["split"]) for f in tables] == [(0, False), (1, False)]
    assert tables[0]["op"] == "UPSCALE" and tables[0]["ne"] == [40, 40, 32]
    np.testing.assert_array_equal(np.load(out_dir / tables[0]["file"]), np.load(out_dir / tables[1]["file"]))
    # a multi-view dump compares folder by folder with another one, and refuses a flat folder
    rc, cmp_out, _ = cli("compare", out_dir, out_dir)
    assert rc == 0 and "0 of 4 folders diverge" in cmp_out
    rc, _, err = cli("compare", out_dir, LLAMA_V1 / "tensors_0")
    assert rc == 2 and "compare one view folder, e.g." in err and "view_0" in err


# --- planted divergence --------------------------------------------------------------------------------
WEIGHT = "v.sam.blk.0.attn.qkv.weight"


def perturbed_model(tmp_path) -> str:
    path = tmp_path / "perturbed.gguf"
    shutil.copy(V1, path)
    reader = gguf.GGUFReader(path, "r+")
    t = next(t for t in reader.tensors if t.name == WEIGHT)
    t.data[5, 7] += 0.5
    reader.data.flush()
    del reader
    return str(path)


def test_compare_finds_a_planted_divergence_at_the_consuming_node(cli, tmp_path):
    bad = perturbed_model(tmp_path)
    g = Encoder(bad).build(None).graph
    first_user = next(i for i, n in enumerate(g.nodes) if any(s is not None and s.name == WEIGHT for s in n.srcs))
    consumer = g.nodes[first_user]
    assert consumer.op in ("mul_mat", "mul_mat_rows")  # the qkv product (of the windows' gathered rows, fused)
    runs = {}
    for label, model in (("a", V1), ("a2", V1), ("bad", bad)):
        runs[label] = tmp_path / label
        rc, _, err = cli("trace", "--mmproj", model, "--image", PAGE_SMALL, "-q", "--stop-after",
                         "sam_layer_out-0", "--save", runs[label])
        assert rc == 0, err
    index = json.loads((runs["bad"] / "index.json").read_text())
    assert not index["complete"] and index["stopped_after"].startswith("sam_layer_out-0 (node ")
    assert len(index["files"]) == index["files"][-1]["index"] + 1  # every node up to the stop, in order

    rc, out, _ = cli("compare", runs["a2"], runs["a"])
    assert rc == 0 and "DIVERGES" not in out and re.search(r"result: all \d+ common nodes agree", out)

    rc, out, _ = cli("compare", runs["bad"], runs["a"])
    assert rc == 1
    assert f"first divergent node: {consumer.name} (graph node {first_user}):" in out
    assert f"{registry.get(consumer.op).ggml}({WEIGHT}{{32,96}}" in out  # the node's trace line follows
    rows = [ln.split() for ln in out.splitlines() if re.match(r"\d+ ", ln)]
    assert [int(r[0]) for r in rows] == sorted(int(r[0]) for r in rows)  # graph order
    status = {int(r[0]): r[-1] for r in rows}
    assert all(s == "ok" for i, s in status.items() if i < first_user)
    assert status[first_user] == "first" and status[max(status)] == "DIVERGES"


# --- kernel errors through the CLI ------------------------------------------------------------------------
def test_kernel_failure_names_node_inputs_and_builder_line(cli, tmp_path, monkeypatch):
    d = registry.get("im2col")

    def broken(*args, **kwargs):
        raise RuntimeError("planted failure")

    monkeypatch.setattr(d, "ref", broken)
    rc, out, err = cli("trace", "--mmproj", V1, "--image", PAGE_SMALL, "--no-fast", "--save", tmp_path / "t")
    assert rc == 2
    (line,) = err.strip().splitlines()[-1:]
    assert line.startswith("npggml: error: [node_1] = IM2COL(v.sam.patch_embd.weight{16,16,3,32}, "
                           "inp_raw{1024,1024,3}) -> {768,64,64} f32 built at sam.py:")
    assert line.endswith("RuntimeError: planted failure")
    index = json.loads((tmp_path / "t" / "index.json").read_text())
    assert not index["complete"] and "planted failure" in index["error"]
    assert [f["name"] for f in index["files"]] == ["node_0"]  # what ran before the failure is saved


# --- trace argument errors -----------------------------------------------------------------------------
def test_trace_rejects_unmatched_filters_and_foreign_folders(cli, tmp_path):
    rc, _, err = cli("trace", "--mmproj", V1, "--image", PAGE_SMALL, "--match", "no_such_node*")
    assert rc == 2 and "matches none of the" in err
    rc, _, err = cli("trace", "--mmproj", V1, "--image", PAGE_SMALL, "--stop-after", "nope")
    assert rc == 2 and "--stop-after 'nope' matches no node" in err
    foreign = tmp_path / "f"
    foreign.mkdir()
    np.save(foreign / "x.npy", np.zeros(3))
    rc, _, err = cli("trace", "--mmproj", V1, "--image", PAGE_SMALL, "--save", foreign, "--match", "node_0")
    assert rc == 2 and "no npggml trace wrote" in err


# --- compare on hand-made dumps ----------------------------------------------------------------------------
def write_dump(folder, arrays: dict, order: list[str] | None = None):
    folder.mkdir(parents=True)
    for name, a in arrays.items():
        np.save(folder / f"{name}.npy", a)
    if order is not None:
        files = [{"file": f"{n}.npy", "name": n, "index": i} for i, n in enumerate(order)]
        (folder / "index.json").write_text(json.dumps({"files": files}))


def test_compare_orders_reports_one_sided_names_and_shape_mismatches(cli, tmp_path):
    a = {"layer_out-10": np.ones(4), "layer_out-2": np.ones(4), "zeta": np.ones(4), "extra": np.ones(2),
         "x": np.ones((2, 3))}
    b = {"layer_out-10": np.ones(4), "layer_out-2": np.ones(4) * 1.5, "zeta": np.ones(4), "ref_only": np.ones(1),
         "x": np.ones((3, 2))}
    write_dump(tmp_path / "a", a, order=["zeta", "layer_out-10", "x", "layer_out-2", "extra"])
    write_dump(tmp_path / "b", b)
    rc, out, _ = cli("compare", tmp_path / "a", tmp_path / "b")
    assert rc == 1
    rows = [ln.split()[1] for ln in out.splitlines() if re.match(r"\d+ ", ln)]
    assert rows == ["zeta", "layer_out-10", "x", "layer_out-2"]  # A's graph order
    assert "x: shape mismatch: A (2, 3) vs B (3, 2)" in out
    assert "first divergent node: x (graph node 2): shape mismatch" in out
    assert "only in A (1): extra" in out and "only in B (1): ref_only" in out
    assert "result: 2 of 4 common nodes diverge" in out
    # without an index on either side: natural name order
    rc, out, _ = cli("compare", tmp_path / "b", tmp_path / "b")
    assert rc == 0
    assert [ln.split()[1] for ln in out.splitlines() if ln.startswith("- ")] == [
        "layer_out-2", "layer_out-10", "ref_only", "x", "zeta"]
    # a bound loose enough makes the value difference acceptable (the shape mismatch stays)
    rc, out, _ = cli("compare", tmp_path / "a", tmp_path / "b", "--rtol", "0.5")
    assert rc == 1 and "result: 1 of 4 common nodes diverge" in out


def test_compare_bad_folders_are_one_line_errors(cli, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    good = tmp_path / "good"
    write_dump(good, {"a": np.ones(2)})
    other = tmp_path / "other"
    write_dump(other, {"b": np.ones(2)})
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "a.npy").write_bytes(b"not an npy file")
    badindex = tmp_path / "badindex"
    write_dump(badindex, {"a": np.ones(2)})
    (badindex / "index.json").write_text("{")
    cases = [(tmp_path / "missing", good, "not a folder"), (empty, good, "no .npy tensor dumps"),
             (good, other, "no node names in common"), (corrupt, good, "cannot read"),
             (badindex, good, "not a valid npggml index")]
    for a, b, msg in cases:
        rc, out, err = cli("compare", a, b)
        assert rc == 2 and len(err.strip().splitlines()) == 1 and msg in err, (a, err)
    rc, _, err = cli("compare", good, good, "--rtol", "-1")
    assert rc == 2 and "must be >= 0" in err


# --- graph --------------------------------------------------------------------------------------------
def test_graph_totals_are_sums_over_nodes(cli, tmp_path):
    rc, out, _ = cli("graph", "--mmproj", V1, "--mode", "llama.cpp", "--grid", "2", "1", "--leafs")
    assert rc == 0
    _, nodes = table_rows(out, "#  ")
    totals = dict(re.findall(r"^(nodes|weight bytes|arena bytes|node bytes|flops): (\d+)", out, re.M))
    assert int(totals["nodes"]) == len(nodes) and [int(r["#"]) for r in nodes] == list(range(len(nodes)))
    assert int(totals["flops"]) == sum(int(r["flops"]) for r in nodes) > 0
    assert int(totals["node bytes"]) == sum(int(r["bytes"]) for r in nodes)
    assert all(r["bytes"] == "0" for r in nodes if r["arena"] == "view")
    assert any(r["arena"] == "view" for r in nodes)
    arena = int(totals["arena bytes"])
    spans = [tuple(map(int, r["arena"].split("+"))) for r in nodes if "+" in r["arena"]]
    assert max(o + s for o, s in spans) <= arena
    page = Encoder(V1, "llama.cpp").build((2, 1))
    assert arena == plan_graph(page.graph).size and len(nodes) == len(page.graph.nodes)
    # the leaf table: weight bytes are the sum over weight leaves
    leaf_text = out[out.index("\n\n") + 2:]
    _, leafs = table_rows(leaf_text, "#  ")
    assert int(totals["weight bytes"]) == sum(int(r["bytes"]) for r in leafs if r["kind"] == "weight")
    assert {r["kind"] for r in leafs} == {"weight", "input"}
    # the untiled graph is smaller
    rc, small, _ = cli("graph", "--mmproj", V1, "--mode", "llama.cpp", "--no-tiles", "--no-table")
    assert rc == 0 and int(re.search(r"^nodes: (\d+)", small, re.M)[1]) < len(nodes)


def test_graph_dot_svg_and_embedded_model(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    dot_file = tmp_path / "g.dot"
    rc, out, err = cli("graph", "--no-table", "--dot", dot_file)
    assert rc == 0 and "embedded tiny random v1 model" in err and "deepseekocr" in out
    text = dot_file.read_text()
    assert text.startswith("digraph G {") and text.count('" -> "') > 1000
    # --svg runs `dot -Tsvg -o FILE` with the DOT text on stdin; a stand-in `dot` records what it got
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "dot"
    fake.write_text('#!/bin/sh\n[ "$1" = "-Tsvg" ] && [ "$2" = "-o" ] || exit 3\ncat > "$3"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    rc, out, err = cli("graph", "--mmproj", V1, "--no-table", "--svg", tmp_path / "g.svg")
    assert rc == 0, err
    assert (tmp_path / "g.svg").read_text() == to_dot(Encoder(V1).build(None).graph)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    rc, _, err = cli("graph", "--mmproj", V1, "--svg", tmp_path / "h.svg")
    assert rc == 2 and err.count("\n") == 1 and "needs Graphviz's `dot` on PATH" in err
    rc, _, err = cli("graph", "--mmproj", V1, "--grid", "0", "2")
    assert rc == 2 and "--grid needs two positive tile counts" in err


V2 = str(MODELS / "mmproj-tiny-dsocr2-f32.gguf")
V2_NAMES = "sam_layer_out-0,sam_output,layer_out-0,layer_out-11,dsocr2_output"


@pytest.mark.parametrize("mode,source", [("llama.cpp", "llamacpp"), ("reference", "hf")])
def test_trace_v2_views_line_up_with_the_reference_dumps(cli, tmp_path, mode, source):
    """v2 views are single tiles, then the global view (view 6 for a 3x2 grid). The reference dumps were
    made on llama.cpp's pixels: reference mode's tiles are the same pixels, its global view is pasted one
    pixel higher (PIL rounding), so there only tile 0 is compared."""
    out_dir = tmp_path / "t"
    rc, _, err = cli("trace", "--mmproj", V2, "--image", PAGE_TILED, "--mode", mode, "-q", "--match", V2_NAMES,
                     "--save", out_dir)
    assert rc == 0, err
    ref = fixture_dir(source, "v2", "doc_1500x1000")
    pairs = [(0, "tensors_0")] + ([(6, "tensors_6")] if mode == "llama.cpp" else [])
    for k, folder in pairs:
        for name in V2_NAMES.split(","):
            ours, theirs = np.load(out_dir / f"view_{k}" / f"{name}.npy"), np.load(ref / folder / f"{name}.npy")
            assert ours.shape == theirs.shape, (k, name)
        rc, cmp_out, _ = cli("compare", out_dir / f"view_{k}", ref / folder)
        assert rc == 0, cmp_out


def test_a_reader_that_stops_early_ends_the_command_quietly():
    """`npggml inspect ... | head`: when the pipe's reader has gone, no BrokenPipeError traceback, status 141."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    cmd = [sys.executable, "-m", "npggml.tools.cli", "inspect", str(MODELS / "mmproj-tiny-dsocr-f32.gguf")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # before the command has printed anything (its start-up alone takes longer)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == ""
