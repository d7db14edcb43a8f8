"""`make_mmproj` / `npggml make-gguf`: converter-identical layout, round trip through the loader, determinism."""

from __future__ import annotations

import math
import time
from pathlib import Path

import gguf
import numpy as np
import pytest

from npggml.errors import NpggmlError
from npggml.models.gguf_io import load_mmproj
from npggml.models.gguf_synth import make_mmproj, preset_hparams, random_values, stored_type
from npggml.models.projectors import PROJECTORS
from npggml.tools import cli

FIXTURES = Path(__file__).parent / "fixtures" / "models"
STEMS = {"deepseekocr": "dsocr", "deepseekocr2": "dsocr2"}
DTYPES = ("f32", "f16", "bf16", "q8_0")
# loose enough for q8_0 (half a step of a 127-level scale), exact for f32
TOLERANCE = {"f32": 0.0, "f16": 1e-3, "bf16": 8e-3, "q8_0": 1.0 / 127}


def layout(path: Path):
    """Keys with their types and order; tensors with their stored n_dims shape and type."""
    reader = gguf.GGUFReader(path)
    keys = [(f.name, [t.name for t in f.types]) for f in reader.fields.values()]
    tensors = {t.name: ([int(n) for n in t.shape], t.tensor_type.name) for t in reader.tensors}
    return keys, tensors


@pytest.mark.parametrize("arch", STEMS)
@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
def test_layout_equals_converter_fixture(tmp_path, arch, dtype):
    out = make_mmproj(arch, "tiny", dtype, 0, tmp_path / "m.gguf")
    assert layout(out) == layout(FIXTURES / f"mmproj-tiny-{STEMS[arch]}-{dtype}.gguf")


@pytest.mark.parametrize("arch", STEMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip(tmp_path, arch, dtype):
    out = make_mmproj(arch, "tiny", dtype, 7, tmp_path / "m.gguf")
    model = load_mmproj(out)
    hp = preset_hparams(arch, "tiny")
    assert model.hparams == hp
    specs = PROJECTORS[arch].tensors(hp)
    assert list(model.weights) == [s.name for s in specs]
    outtype = gguf.GGMLQuantizationType[dtype.upper()]
    for spec in specs:
        w = model.get(spec.name)
        assert w.ggml_type == stored_type(spec, outtype).name.lower()
        want = random_values(spec, 7).reshape(w.shape)
        tol = TOLERANCE[dtype] * np.abs(want).max() if w.ggml_type == dtype else 0.0
        np.testing.assert_allclose(w.data(), want, rtol=0, atol=tol, err_msg=spec.name)


def test_storage_type_rules():
    v1 = {s.name: s for s in PROJECTORS["deepseekocr"].tensors(preset_hparams("deepseekocr", "full"))}
    Q = gguf.GGMLQuantizationType
    for outtype in (Q.F16, Q.BF16, Q.Q8_0):
        assert stored_type(v1["v.blk.0.attn_qkv.weight"], outtype) == outtype
        assert stored_type(v1["v.blk.0.attn_qkv.bias"], outtype) == Q.F32
        assert stored_type(v1["v.sam.neck.2.weight"], outtype) == Q.F32
        assert stored_type(v1["v.position_embd.weight"], outtype) == Q.F32
        assert stored_type(v1["v.view_seperator"], outtype) == Q.F32
        assert stored_type(v1["v.sam.patch_embd.weight"], outtype) == (Q.F16 if outtype == Q.F16 else Q.F32)


def test_full_presets_have_the_published_sizes():
    counts = {}
    for arch in STEMS:
        hp = preset_hparams(arch, "full")
        specs = PROJECTORS[arch].tensors(hp)
        counts[arch] = (len(specs), sum(math.prod(s.concrete_ne) for s in specs))
    assert counts["deepseekocr"][0] == 476  # spec §2.3
    assert 400e6 < counts["deepseekocr"][1] < 402e6
    assert counts["deepseekocr2"][0] == 473 + 1  # spec §2.4 plus the optional v.image_newline
    v2 = preset_hparams("deepseekocr2", "full")
    assert (v2.n_embd, v2.n_head, v2.n_head_kv, v2.n_ff, v2.sam_out_channels) == (896, 14, 2, 4864, 896)


def test_deterministic_and_fast(tmp_path):
    start = time.perf_counter()
    a = make_mmproj("deepseekocr", "tiny", "f32", 3, tmp_path / "a.gguf")
    elapsed = time.perf_counter() - start
    b = make_mmproj("deepseekocr", "tiny", "f32", 3, tmp_path / "b.gguf")
    c = make_mmproj("deepseekocr", "tiny", "f32", 4, tmp_path / "c.gguf")
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    assert elapsed < 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gguf", "b.gguf", "c.gguf"]  # no temp files left


def test_initial_scales():
    hp = preset_hparams("deepseekocr", "full")
    specs = {s.name: s for s in PROJECTORS["deepseekocr"].tensors(hp)}
    up = random_values(specs["v.blk.0.ffn_up.weight"], 0)
    assert up.shape == (4096, 1024) and abs(up.std() * math.sqrt(1024) - 1) < 0.01
    conv = random_values(specs["v.sam.net_3.weight"], 0)
    assert abs(conv.std() * math.sqrt(3 * 3 * 512) - 1) < 0.01
    norm = random_values(specs["v.blk.3.ln1.weight"], 0)
    assert abs(norm.mean() - 1) < 0.01 and norm.std() < 0.03
    assert np.abs(random_values(specs["v.blk.3.ln1.bias"], 0)).max() < 0.2


def test_tiny_v1_activations_stay_bounded():
    """A NumPy forward pass through the tiny v1 CLIP body (LN, attention, quick-GELU MLP) on unit inputs."""
    hp = preset_hparams("deepseekocr", "tiny")
    specs = {s.name: s for s in PROJECTORS["deepseekocr"].tensors(hp)}

    def w(name):
        return random_values(specs[name], 0).astype(np.float64)

    def ln(x, name):
        x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + hp.eps)
        return x * w(f"{name}.weight") + w(f"{name}.bias")

    x = np.random.default_rng(0).standard_normal((257, hp.n_embd))
    for il in range(hp.n_layer):
        b = f"v.blk.{il}"
        qkv = ln(x, f"{b}.ln1") @ w(f"{b}.attn_qkv.weight").T + w(f"{b}.attn_qkv.bias")
        q, k, v = (qkv[:, i * hp.n_embd:(i + 1) * hp.n_embd].reshape(257, hp.n_head, -1) for i in range(3))
        att = np.einsum("qhd,khd->hqk", q, k) / math.sqrt(hp.head_dim)
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        o = np.einsum("hqk,khd->qhd", att, v).reshape(257, -1)
        x = x + o @ w(f"{b}.attn_out.weight").T + w(f"{b}.attn_out.bias")
        h = ln(x, f"{b}.ln2") @ w(f"{b}.ffn_up.weight").T + w(f"{b}.ffn_up.bias")
        h = h / (1 + np.exp(-1.702 * h))
        x = x + h @ w(f"{b}.ffn_down.weight").T + w(f"{b}.ffn_down.bias")
        assert np.isfinite(x).all() and np.abs(x).max() < 100, il


def test_cli_make_gguf(tmp_path, capsys):
    out = tmp_path / "v2.gguf"
    argv = ["make-gguf", "--arch", "deepseekocr2", "--size", "tiny", "--dtype", "q8_0", "--seed", "1",
            "-o", str(out)]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out == f"wrote {out}\n"
    model = load_mmproj(out)
    assert model.projector == "deepseekocr2" and model.get("v.resample_query_768.weight").ggml_type == "q8_0"
    assert model.metadata["general.file_type"].value == 7


def test_bad_arguments(tmp_path, capsys):
    with pytest.raises(NpggmlError, match="no preset"):
        make_mmproj("llava", "tiny", "f32", 0, tmp_path / "x.gguf")
    with pytest.raises(NpggmlError, match="--seed -1"):
        make_mmproj("deepseekocr", "tiny", "f32", -1, tmp_path / "x.gguf")
    missing_dir = tmp_path / "no" / "such" / "x.gguf"
    assert cli.main(["make-gguf", "--arch", "deepseekocr", "-o", str(missing_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"npggml: error: {missing_dir}: cannot write") and err.count("\n") == 1
    assert not any(tmp_path.rglob("*.tmp"))
