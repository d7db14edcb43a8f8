"""The loader on the tiny GGUFs made by llama.cpp's own converter (tests/fixtures/models)."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize

from npggml.errors import GGUFError
from npggml.models.gguf_errors import MissingTensorError
from npggml.models.gguf_io import load_mmproj
from npggml.tools import cli

FIXTURES = Path(__file__).parent / "fixtures" / "models"
STEMS = {"deepseekocr": "dsocr", "deepseekocr2": "dsocr2"}
CASES = [(arch, dtype) for arch in STEMS for dtype in ("f32", "f16", "q8_0")]


def fixture(arch: str, dtype: str) -> Path:
    return FIXTURES / f"mmproj-tiny-{STEMS[arch]}-{dtype}.gguf"


@pytest.mark.parametrize("arch,dtype", CASES)
def test_every_tensor_equals_gguf_dequantised(arch, dtype):
    path = fixture(arch, dtype)
    model = load_mmproj(path)
    reader = gguf.GGUFReader(path)
    assert model.projector == arch
    assert list(model.weights) == [t.name for t in reader.tensors]
    for t in reader.tensors:
        w = model.weights[t.name]
        want = dequantize(t.data, t.tensor_type)
        got = w.data()
        assert got.dtype == np.float32 and not got.flags.writeable
        assert got.size == want.size and np.array_equal(got.reshape(-1), want.reshape(-1)), t.name
        ne = [int(n) for n in t.shape]
        assert list(w.ne) == ne + [1] * (4 - len(ne))
        while len(ne) > 1 and ne[-1] == 1:
            ne.pop()
        assert got.shape == tuple(reversed(ne))
        assert w.nbytes == t.n_bytes
        assert w.ggml_type == t.tensor_type.name.lower().replace("_k", "_K")
        assert w.data() is got  # cached


def test_types_follow_outtype():
    for arch in STEMS:
        f16 = load_mmproj(fixture(arch, "f16"))
        q8 = load_mmproj(fixture(arch, "q8_0"))
        assert f16.get("mm.model.fc.weight").ggml_type == "f16"
        assert q8.get("mm.model.fc.weight").ggml_type == "q8_0"
        assert f16.get("v.sam.patch_embd.weight").ggml_type == "f16"
        assert q8.get("v.sam.patch_embd.weight").ggml_type == "f32"
        assert q8.get("v.sam.blk.0.pre_ln.weight").ggml_type == "f32"


SAM_TINY = dict(sam_n_layer=12, sam_n_embd=32, sam_n_head=2, sam_n_ff=128, sam_neck_channels=16,
                sam_net2_channels=32, sam_out_channels=64, sam_global_layers=(2, 5, 8, 11), window_size=14)
TINY = {
    "deepseekocr": dict(n_embd=64, n_head=4, n_head_kv=4, n_layer=12, n_ff=256, proj_dim=48, eps=1e-5,
                        min_tiles=2, max_tiles=9, tile_size=640, n_queries_tile=0, n_queries_global=0),
    "deepseekocr2": dict(n_embd=64, n_head=4, n_head_kv=2, n_layer=12, n_ff=96, proj_dim=48,
                         eps=float(np.float32(1e-6)), min_tiles=2, max_tiles=6, tile_size=768,
                         n_queries_tile=144, n_queries_global=256),
}


@pytest.mark.parametrize("arch,dtype", CASES)
def test_hparams_match_tiny_spec(arch, dtype):
    hp = load_mmproj(fixture(arch, dtype)).hparams
    want = dict(projector=arch, image_size=1024, patch_size=16, image_mean=(0.5,) * 3, image_std=(0.5,) * 3,
                projection_dim=48, use_gelu=True, sam_eps=1e-6, **SAM_TINY, **TINY[arch])
    assert {k: getattr(hp, k) for k in want} == want
    assert hp.head_dim == 16 and hp.sam_head_dim == 16 and hp.sam_grid == 64 and hp.n_pos_global == 256


def test_sources():
    v1 = load_mmproj(fixture("deepseekocr", "f32"))
    v2 = load_mmproj(fixture("deepseekocr2", "f32"))
    assert set(v1.sources) == set(v2.sources) == set(vars(v1.hparams))
    for m in (v1, v2):
        assert m.sources["image_size"] == m.sources["patch_size"] == "override"
        assert m.sources["n_embd"] == "key:clip.vision.embedding_length"
        assert m.sources["max_tiles"] == "key:clip.vision.preproc_max_tiles"
        assert m.sources["tile_size"] == m.sources["sam_global_layers"] == "fixed"
        assert m.sources["proj_dim"] == "tensor:mm.model.fc.weight"
        assert m.sources["sam_out_channels"] == "tensor:v.sam.net_3.weight"
    assert v1.sources["eps"] == "override"
    assert v1.sources["n_ff"] == "tensor:v.blk.0.ffn_up.weight"  # the key holds the converter's 4 * heads
    assert v1.metadata["clip.vision.feed_forward_length"].value == 16
    assert v1.sources["n_head_kv"] == "default"
    assert v2.sources["eps"] == "key:clip.vision.attention.layer_norm_epsilon"
    assert v2.sources["n_ff"] == "key:clip.vision.feed_forward_length"
    assert v2.sources["n_head_kv"] == "key:clip.vision.attention.head_count_kv"


def test_unused_and_lookup():
    v1 = load_mmproj(fixture("deepseekocr", "f16"))
    v2 = load_mmproj(fixture("deepseekocr2", "f16"))
    assert len(v1.weights) == 332 and len(v2.weights) == 330
    assert v1.unused == ["v.patch_embd.weight"] and not v1.get("v.patch_embd.weight").used
    assert v2.unused == ["v.image_newline"] and v1.get("v.image_newline").used
    assert v1.has("v.blk.11.attn_qkv.weight") and not v2.has("v.blk.11.attn_qkv.weight")
    with pytest.raises(MissingTensorError) as e:
        v2.get("v.blk.11.attn_qkv.weight")
    assert str(v2.path) in str(e.value) and "v.blk.11.attn_qkv.weight" in str(e.value)
    assert isinstance(e.value, GGUFError)
    assert v1.n_params == 1017584 and v2.n_params == 757808


def test_weights_are_lazy_and_releasable():
    model = load_mmproj(fixture("deepseekocr", "q8_0"))
    w = model.get("v.blk.0.ffn_up.weight")
    assert w._cache is None
    first = w.data()
    w.release()
    again = w.data()
    assert again is not first and np.array_equal(again, first)
    assert sum(x._cache is not None for x in model.weights.values()) == 1


def test_inspect_text(capsys):
    path = fixture("deepseekocr", "q8_0")
    assert cli.main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "projector  deepseekocr" in out
    assert "eps                1e-05                    override" in out
    assert "n_ff               256                      tensor:v.blk.0.ffn_up.weight" in out
    row = next(line for line in out.splitlines() if line.strip().startswith("mm.model.fc.weight"))
    assert row.split()[1:] == ["[128,", "48]", "q8_0", "6,528", "yes"]
    assert "parameters 1,017,584" in out and "unused     v.patch_embd.weight" in out


def test_inspect_json(capsys):
    path = fixture("deepseekocr2", "f16")
    assert cli.main(["inspect", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    report = json.loads(out)
    assert report["projector"] == "deepseekocr2" and report["n_tensors"] == 330
    assert report["hparams"]["n_head_kv"] == {"value": 2, "source": "key:clip.vision.attention.head_count_kv"}
    assert report["hparams"]["sam_global_layers"]["value"] == [2, 5, 8, 11]
    assert report["metadata"]["clip.vision.image_mean"] == {"type": "ARRAY[FLOAT32]", "value": [0.5] * 3}
    rows = {t["name"]: t for t in report["tensors"]}
    assert rows["v.resample_query_768.weight"] == {"name": "v.resample_query_768.weight", "ne": [64, 144, 1, 1],
                                                   "type": "f16", "nbytes": 64 * 144 * 2, "used": True}
    assert rows["v.image_newline"]["used"] is False and report["unused"] == ["v.image_newline"]
    assert report["n_params"] == 757808 == report["n_params_used"] + 48
