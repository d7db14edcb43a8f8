"""Edited copies of a tiny mmproj, made by GGUF surgery.

The bad-file corpus: each damaged or wrong file must fail with one clear `GGUFError` line, never a traceback.
The same helpers build valid variants too: every supported tensor type, optional keys left out, GGUF v2.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V

from npggml.errors import GGUFError
from npggml.models.gguf_errors import (
    MalformedGGUFError,
    MissingTensorError,
    MmprojContentError,
    UnsupportedGGUFError,
)
from npggml.models.gguf_io import load_mmproj, read_metadata
from npggml.models.gguf_synth import make_mmproj
from npggml.tools import cli


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("good")
    return {arch: make_mmproj(arch, "tiny", "f16", 0, root / f"{arch}.gguf")
            for arch in ("deepseekocr", "deepseekocr2")}


# --- file surgery helpers -------------------------------------------------------------------------------------

def rewrite(src: Path, dst: Path, *, keys: dict | None = None, drop_keys=(), drop_tensors=(),
            tensors: dict | None = None) -> None:
    """Copy a GGUF through gguf's reader and writer, replacing keys ({key: (GGUFValueType, value)}) and tensors
    ({name: (array, ggml type)} in NumPy order; float arrays are quantised, uint8 arrays are raw blocks)."""
    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(dst, "clip")
    writer.kv_data[0].clear()
    for key, kv in read_metadata(reader).items():
        if key in drop_keys:
            continue
        if kv.type.startswith("ARRAY["):
            writer.add_key_value(key, kv.value, V.ARRAY, sub_type=V[kv.type[6:-1]])
        else:
            writer.add_key_value(key, kv.value, V[kv.type])
    for key, (vtype, value) in (keys or {}).items():
        sub = V.FLOAT32 if vtype == V.ARRAY else None
        writer.kv_data[0].pop(key, None)
        writer.add_key_value(key, value, vtype, sub_type=sub)
    replaced = dict(tensors or {})
    for t in reader.tensors:
        if t.name in drop_tensors:
            continue
        if t.name in replaced:
            writer.add_tensor(t.name, *encode(*replaced.pop(t.name)))
        else:
            writer.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
    for name, (values, qtype) in replaced.items():  # new tensors
        writer.add_tensor(name, *encode(values, qtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def encode(values: np.ndarray, qtype: Q) -> tuple[np.ndarray, None, Q]:
    if values.dtype != np.uint8:
        values = gguf.quants.quantize(values.astype(np.float32), qtype)
    return values, None, qtype


def patch_bytes(src: Path, dst: Path, edit: Callable[[bytearray], bytes | bytearray]) -> None:
    dst.write_bytes(bytes(edit(bytearray(src.read_bytes()))))


def patch_tensor_info(src: Path, dst: Path, name: str, part: int, value: int) -> None:
    """Overwrite one field of a tensor's index entry (2 n_dims, 4 type, 5 offset) in place."""
    dst.write_bytes(src.read_bytes())
    reader = gguf.GGUFReader(dst, "r+")
    info = next(t for t in reader.tensors if t.name == name).field
    info.parts[part][0] = value
    reader.data.flush()
    del reader


def patch_key_type(src: Path, dst: Path, key: str, raw_type: int) -> None:
    dst.write_bytes(src.read_bytes())
    reader = gguf.GGUFReader(dst, "r+")
    reader.fields[key].parts[2][0] = raw_type  # parts: name length, name, value type, value...
    reader.data.flush()
    del reader


def data_start(path: Path) -> int:
    return gguf.GGUFReader(path).data_offset


# --- the corpus ----------------------------------------------------------------------------------------------
# Each case: (id, source arch, maker(src, dst), expected error class, substring of the message).

V1, V2 = "deepseekocr", "deepseekocr2"


def with_keys(keys: dict):
    return lambda s, d: rewrite(s, d, keys=keys)


def without_keys(*keys: str):
    return lambda s, d: rewrite(s, d, drop_keys=keys)


def with_tensors(tensors: dict, drop=()):
    return lambda s, d: rewrite(s, d, tensors=tensors, drop_tensors=drop)


def without_tensors(*names: str):
    return lambda s, d: rewrite(s, d, drop_tensors=names)


def edit_bytes(edit):
    return lambda s, d: patch_bytes(s, d, edit)


def header_word(offset: int, data: bytes):
    return edit_bytes(lambda b: b[:offset] + data + b[offset + len(data):])


def zeros(*numpy_shape: int):
    return np.zeros(numpy_shape, np.float32)


HEAD, WIDTH = "clip.vision.attention.head_count", "clip.vision.embedding_length"
HEADS = "clip.vision.sam.head_count"
SPLIT_QKV = {f"v.blk.{i}.attn_{x}.{n}": (zeros(64, 64) if n == "weight" else zeros(64), Q.F32)
             for i in range(12) for x in "qkv" for n in ("weight", "bias")}

CASES = [
    ("empty", V1, lambda s, d: d.write_bytes(b""), MalformedGGUFError, "truncated: 0 bytes"),
    ("short_header", V1, edit_bytes(lambda b: b[:10]), MalformedGGUFError, "24-byte GGUF header"),
    ("wrong_magic", V1, header_word(0, b"GGML"), MalformedGGUFError, "not a GGUF file"),
    ("text_file", V1, lambda s, d: d.write_text("hello, this is not a model at all\n"), MalformedGGUFError,
     "magic b'hell'"),
    ("version_1", V1, header_word(4, (1).to_bytes(4, "little")), UnsupportedGGUFError,
     "GGUF version 1 (expected 2 or 3)"),
    ("version_99", V1, header_word(4, (99).to_bytes(4, "little")), UnsupportedGGUFError, "GGUF version 99"),
    ("big_endian", V1, header_word(4, (3).to_bytes(4, "big")), UnsupportedGGUFError, "big-endian"),
    ("cut_in_metadata", V1, edit_bytes(lambda b: b[:300]), MalformedGGUFError, "truncated: the metadata"),
    ("cut_in_tensor_index", V1, lambda s, d: patch_bytes(s, d, lambda b: b[:data_start(s) - 500]),
     MalformedGGUFError, "truncated: the tensor index"),
    ("cut_in_tensor_data", V1, edit_bytes(lambda b: b[:-5000]), MalformedGGUFError, "past the end of the file"),
    ("huge_key_count", V1, header_word(16, (2**40).to_bytes(8, "little")), MalformedGGUFError,
     "truncated: the metadata (1099511627776 keys)"),
    ("offset_past_end", V1, lambda s, d: patch_tensor_info(s, d, "v.sam.neck.0.weight", 5, 2**33),
     MalformedGGUFError, "tensor v.sam.neck.0.weight data ends at byte"),
    ("misaligned_offset", V1, lambda s, d: patch_tensor_info(s, d, "v.view_seperator", 5, 3),
     MalformedGGUFError, "data offset 3 is misaligned (expected a multiple of 32)"),
    ("unknown_tensor_type", V1, lambda s, d: patch_tensor_info(s, d, "v.class_embd", 4, 99),
     UnsupportedGGUFError, "unknown ggml type id 99"),
    ("unknown_key_type", V1, lambda s, d: patch_key_type(s, d, "clip.vision.window_size", 77),
     MalformedGGUFError, "unknown value type id 77 in the metadata (26 keys)"),
    ("unsupported_dtype", V1, with_tensors({"v.blk.0.ffn_up.weight": (zeros(256, 64), Q.Q4_1)}),
     UnsupportedGGUFError, "tensor v.blk.0.ffn_up.weight has type q4_1 (expected one of f32, f16, bf16"),
    ("missing_tensor", V1, without_tensors("v.sam.blk.3.attn.qkv.weight"),
     MissingTensorError, "missing tensor v.sam.blk.3.attn.qkv.weight (expected ne [32, 96]"),
    ("missing_projector", V2, without_tensors("mm.model.fc.weight"),
     MissingTensorError, "missing tensor mm.model.fc.weight"),
    ("misshaped_tensor", V1, with_tensors({"v.blk.4.attn_qkv.weight": (zeros(96, 64), Q.F16)}),
     MmprojContentError, "tensor v.blk.4.attn_qkv.weight has ne [64, 96] (expected [64, 192]"),
    ("global_relpos_local_size", V1, with_tensors({"v.sam.blk.5.attn.pos_h.weight": (zeros(27, 16), Q.F32)}),
     MmprojContentError, "v.sam.blk.5.attn.pos_h.weight has ne [16, 27] (expected [16, 127]"),
    ("wrong_queries", V2, with_tensors({"v.resample_query_768.weight": (zeros(256, 64), Q.F16)}),
     MmprojContentError, "v.resample_query_768.weight has ne [64, 256] (expected [64, 144]"),
    ("unknown_projector", V1, with_keys({"clip.projector_type": (V.STRING, "llava")}),
     MmprojContentError,
     "unsupported projector type 'llava' (expected one of 'deepseekocr', 'deepseekocr2', 'mlp')"),
    ("v1_labelled_v2", V1, with_keys({
        "clip.projector_type": (V.STRING, "deepseekocr2"), "clip.vision.attention.head_count_kv": (V.UINT32, 4),
        "clip.vision.feed_forward_length": (V.UINT32, 256)}),
     MissingTensorError, "missing tensor v.blk.0.attn_q.weight"),
    ("v2_labelled_v1", V2, with_keys({"clip.projector_type": (V.STRING, "deepseekocr")}),
     MissingTensorError, "missing tensor v.class_embd (expected ne [64] in a deepseekocr mmproj)"),
    ("llm_gguf", V1, with_keys({"general.architecture": (V.STRING, "llama")}),
     MmprojContentError, "general.architecture is 'llama' (expected 'clip'"),
    ("no_vision", V1, without_keys("clip.has_vision_encoder"), MmprojContentError, "no vision encoder"),
    ("missing_window", V1, without_keys("clip.vision.window_size"),
     MmprojContentError, "missing key clip.vision.window_size (expected a UINT32 value)"),
    ("missing_sam_heads", V2, without_keys(HEADS), MmprojContentError, "missing key clip.vision.sam.head_count"),
    ("missing_head_count_kv", V2, without_keys("clip.vision.attention.head_count_kv"),
     MmprojContentError, "missing key clip.vision.attention.head_count_kv"),
    ("negative_heads_as_int32", V1, with_keys({HEAD: (V.INT32, -4)}),
     MmprojContentError, "key clip.vision.attention.head_count has type INT32 (expected UINT32)"),
    ("zero_heads", V1, with_keys({HEAD: (V.UINT32, 0)}),
     MmprojContentError, "clip.vision.attention.head_count = 0 (expected 1 .. 1024)"),
    ("heads_not_dividing", V1, with_keys({HEAD: (V.UINT32, 3)}),
     MmprojContentError, "head_count = 3 (expected a divisor of clip.vision.embedding_length = 64)"),
    ("sam_heads_not_dividing", V2, with_keys({HEADS: (V.UINT32, 5)}),
     MmprojContentError, "clip.vision.sam.head_count = 5 (expected a divisor"),
    ("huge_width", V1, with_keys({WIDTH: (V.UINT32, 2**31)}),
     MmprojContentError, "clip.vision.embedding_length = 2147483648 (expected 1 .. 65536)"),
    ("zero_window", V2, with_keys({"clip.vision.window_size": (V.UINT32, 0)}),
     MmprojContentError, "clip.vision.window_size = 0 (expected 1 .. 4096)"),
    ("sam_blocks", V1, with_keys({"clip.vision.sam.block_count": (V.UINT32, 6)}),
     MmprojContentError, "clip.vision.sam.block_count = 6 (expected 12"),
    ("tiles_inverted", V2, with_keys({"clip.vision.preproc_min_tiles": (V.UINT32, 7)}),
     MmprojContentError, "clip.vision.preproc_max_tiles = 6 (expected preproc_min_tiles = 7 <= max tiles"),
    ("tiles_huge", V1, with_keys({"clip.vision.preproc_max_tiles": (V.UINT32, 1000)}),
     MmprojContentError, "= 1000 (expected preproc_min_tiles = 2 <= max tiles <= 256)"),
    ("kv_heads_not_dividing", V2, with_keys({"clip.vision.attention.head_count_kv": (V.UINT32, 3)}),
     MmprojContentError, "head_count_kv = 3 (expected a divisor of clip.vision.attention.head_count = 4)"),
    ("eps_nan", V2, with_keys({"clip.vision.attention.layer_norm_epsilon": (V.FLOAT32, float("nan"))}),
     MmprojContentError, "layer_norm_epsilon = nan (expected a finite epsilon"),
    ("mean_two_values", V1, with_keys({"clip.vision.image_mean": (V.ARRAY, [0.5, 0.5])}),
     MmprojContentError, "clip.vision.image_mean = (0.5, 0.5) (expected 3 finite values"),
    ("sam_out_not_width", V2, with_keys({WIDTH: (V.UINT32, 128)}),
     MmprojContentError, "sam_out_channels from v.sam.net_3.weight = 64 (expected clip.vision.embedding_length"),
    ("split_qkv", V1, with_tensors(SPLIT_QKV, drop=[f"v.blk.{i}.attn_qkv.{n}" for i in range(12)
                                                    for n in ("weight", "bias")]),
     MmprojContentError, "split attn_q/attn_k/attn_v tensors is not supported (expected fused"),
    ("directory", V1, lambda s, d: d.mkdir(), MalformedGGUFError, "cannot read the file"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_file(good, tmp_path, capsys, case):
    name, arch, make, error, needle = case
    path = tmp_path / f"{name}.gguf"
    make(good[arch], path)
    with pytest.raises(error) as e:
        model = load_mmproj(path)
        for w in model.weights.values():
            w.data()
    message = str(e.value)
    assert isinstance(e.value, GGUFError)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert needle in message
    assert "(expected " in message and message.endswith(")")

    assert cli.main(["inspect", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == f"npggml: error: {message}\n"


def test_corpus_is_large_and_distinct():
    assert len(CASES) >= 20
    assert len({c[0] for c in CASES}) == len(CASES) and len({c[4] for c in CASES}) == len(CASES)


def test_good_files_still_load(good, tmp_path):
    """The surgery helpers leave a file valid unless asked otherwise; v2 without the optional newline loads."""
    copy = tmp_path / "copy.gguf"
    rewrite(good[V2], copy, drop_tensors=["v.image_newline"])
    model = load_mmproj(copy)
    assert "v.image_newline" not in model.weights and model.unused == []
    extra = tmp_path / "extra.gguf"
    rewrite(good[V1], extra, tensors={"v.something_new": (np.ones((4, 32)), Q.Q4_1)})
    model = load_mmproj(extra)
    assert model.unused == ["v.patch_embd.weight", "v.something_new"]
    with pytest.raises(UnsupportedGGUFError, match="v.something_new has type q4_1"):
        model.get("v.something_new").data()


def k_quant_blocks(qtype: Q, n_rows: int, n_cols: int) -> np.ndarray:
    """Random K-quant blocks (gguf-py cannot quantise to these) with small finite f16 super-block scales."""
    rng = np.random.default_rng(int(qtype))
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, (n_rows * n_cols // block, size), dtype=np.uint8)
    scale_at = {Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (size - 2,)}[qtype]  # d (and dmin) per ggml-common.h
    for at in scale_at:
        scales = (rng.random(len(blocks)) * 0.01).astype(np.float16)
        blocks[:, at:at + 2] = scales.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(n_rows, n_cols // block * size)


@pytest.mark.parametrize("qtype", [Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_K, Q.Q5_K, Q.Q6_K])
def test_supported_types_dequantise_through_gguf(good, tmp_path, qtype):
    name = "v.blk.0.ffn_down.weight"  # ne [256, 64]: whole blocks for every type
    if qtype in (Q.Q4_K, Q.Q5_K, Q.Q6_K):
        values = k_quant_blocks(qtype, 64, 256)
    else:
        values = np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32)
    path = tmp_path / "typed.gguf"
    rewrite(good[V1], path, tensors={name: (values, qtype)})
    stored = next(t for t in gguf.GGUFReader(path).tensors if t.name == name)
    assert stored.tensor_type == qtype
    w = load_mmproj(path).get(name)
    assert w.ggml_type == {Q.Q4_K: "q4_K", Q.Q5_K: "q5_K", Q.Q6_K: "q6_K"}.get(qtype, qtype.name.lower())
    got = w.data()
    assert got.shape == (64, 256) and got.dtype == np.float32 and np.isfinite(got).all()
    assert np.array_equal(got, gguf.quants.dequantize(stored.data, qtype))
    assert got.std() > 0


def test_optional_keys_take_llama_cpp_defaults(good, tmp_path):
    optional = ["clip.vision.preproc_min_tiles", "clip.vision.preproc_max_tiles", "clip.use_gelu"]
    for arch, max_tiles in ((V1, 9), (V2, 6)):
        path = tmp_path / f"{arch}.gguf"
        rewrite(good[arch], path, drop_keys=optional, keys={"clip.vision.preproc_min_tiles": (V.UINT32, 3)})
        model = load_mmproj(path)
        hp = model.hparams
        assert (hp.min_tiles, hp.max_tiles, hp.use_gelu) == (3, max_tiles, False)
        assert model.sources["min_tiles"] == "key:clip.vision.preproc_min_tiles"
        assert model.sources["max_tiles"] == model.sources["use_gelu"] == "default"


def test_gguf_version_2_is_accepted(good, tmp_path):
    path = tmp_path / "v2.gguf"
    header_word(4, (2).to_bytes(4, "little"))(good[V1], path)
    assert load_mmproj(path).gguf_version == 2


@pytest.mark.parametrize("name", ["wrong_magic", "cut_in_tensor_data", "zero_heads"])
def test_cli_subprocess_has_no_traceback(good, tmp_path, name):
    _, arch, make, _, needle = next(c for c in CASES if c[0] == name)
    path = tmp_path / f"{name}.gguf"
    make(good[arch], path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    run = subprocess.run([sys.executable, "-m", "npggml.tools.cli", "inspect", str(path)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and run.stderr.startswith(f"npggml: error: {path}: ")
    assert needle in run.stderr and "Traceback" not in run.stderr
