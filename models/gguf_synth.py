"""Write random-weight mmproj GGUF files laid out exactly as llama.cpp's converter lays them out (DeepSeek-OCR
v1/v2; LLaVA `mlp` as the legacy llava converter writes it).

`make_mmproj(arch, size, dtype, seed, path)` writes the converter's key set (same keys, types and order, including
its quirky v1 values), its tensor names and shapes (from `arch_tensors`, the table the loader checks against) and
its storage-type rules. `full` has the published models' dimensions; `tiny` has the dimensions of the tiny fixture
models, so a tiny file has the same tensors as a fixture converted by llama.cpp.

Values are normal draws scaled so every layer's activations stay O(1): matrices and convolutions by
1/sqrt(fan_in), norm weights near 1, biases and embeddings near 0. Each tensor draws from its own generator seeded
with (seed, name), so a file is a pure function of its arguments. Tensors are generated, converted and written one
at a time, so even a full-size file needs memory for only one tensor.
"""

from __future__ import annotations

import math
import os
import zlib
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGML_QUANT_VERSION, GGMLQuantizationType, GGUFWriter
from gguf.quants import quant_shape_to_byte_shape, quantize
from gguf.utility import size_label

from npggml.errors import NpggmlError
from npggml.models.arch_tensors import TensorSpec
from npggml.models.hparams import (
    ARCH_CONSTANTS,
    IMAGE_SIZE,
    LLAVA_PAD_COLOR,
    MIN_TILES_DEFAULT,
    PATCH_SIZE,
    SAM_EPS,
    SAM_GLOBAL_LAYERS,
    SAM_N_LAYER,
    HParams,
    LlavaHParams,
)
from npggml.models.projectors import CONVERTER_EPS, PROJECTORS

Q = GGMLQuantizationType
SIZES = ("tiny", "full")
# output type -> (ggml type of the matrices, general.file_type as the converter writes it)
DTYPES = {"f32": (Q.F32, 0), "f16": (Q.F16, 1), "bf16": (Q.BF16, 32), "q8_0": (Q.Q8_0, 7)}

_SAM_DIMS = {
    "tiny": dict(sam_n_embd=32, sam_n_head=2, sam_n_ff=128, sam_neck_channels=16, sam_net2_channels=32),
    "full": dict(sam_n_embd=768, sam_n_head=12, sam_n_ff=3072, sam_neck_channels=256, sam_net2_channels=512),
}
_BODY_DIMS = {
    ("deepseekocr", "tiny"): dict(n_embd=64, n_head=4, n_head_kv=4, n_layer=12, n_ff=256, proj_dim=48),
    ("deepseekocr", "full"): dict(n_embd=1024, n_head=16, n_head_kv=16, n_layer=24, n_ff=4096, proj_dim=1280),
    ("deepseekocr2", "tiny"): dict(n_embd=64, n_head=4, n_head_kv=2, n_layer=12, n_ff=96, proj_dim=48),
    ("deepseekocr2", "full"): dict(n_embd=896, n_head=14, n_head_kv=2, n_layer=24, n_ff=4864, proj_dim=1280),
}
# LLaVA `mlp`: full = LLaVA-1.5's CLIP ViT-L/14-336 tower (23 stored blocks) and 1024 -> 4096 -> 4096 projector
_LLAVA_DIMS = {
    "tiny": dict(image_size=56, patch_size=14, n_embd=32, n_ff=128, n_layer=3, n_head=4, n_head_kv=4,
                 projection_dim=24, mm_hidden=48, proj_dim=48),
    "full": dict(image_size=336, patch_size=14, n_embd=1024, n_ff=4096, n_layer=23, n_head=16, n_head_kv=16,
                 projection_dim=768, mm_hidden=4096, proj_dim=4096),
}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
ARCHS = tuple(sorted({arch for arch, _ in _BODY_DIMS} | {"mlp"}))


def _f32(x: float) -> float:
    return float(np.float32(x))


def _llava_preset(size: str) -> LlavaHParams:
    return LlavaHParams(
        projector="mlp", eps=_f32(1e-5), image_mean=tuple(_f32(v) for v in CLIP_MEAN),
        image_std=tuple(_f32(v) for v in CLIP_STD), use_gelu=False, use_silu=False, ffn_swapped=True,
        has_pre_ln=True, has_post_ln=False, has_patch_bias=False, pad_color=LLAVA_PAD_COLOR, **_LLAVA_DIMS[size])


def preset_hparams(arch: str, size: str) -> HParams:
    """The hyper-parameters `load_mmproj` reads back from a `make_mmproj(arch, size, ...)` file."""
    if arch == "mlp" and size in _LLAVA_DIMS:
        return _llava_preset(size)
    if (arch, size) not in _BODY_DIMS:
        raise NpggmlError(f"no preset for --arch {arch} --size {size} (expected arch in {', '.join(ARCHS)}, "
                          f"size in {', '.join(SIZES)})")
    consts = ARCH_CONSTANTS[arch]
    body = _BODY_DIMS[(arch, size)]
    return HParams(
        projector=arch, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE,
        eps=consts.eps_override or float(np.float32(CONVERTER_EPS)),
        image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5), window_size=14,
        min_tiles=MIN_TILES_DEFAULT, max_tiles=consts.max_tiles_default, tile_size=consts.tile_size,
        sam_n_layer=SAM_N_LAYER, sam_out_channels=body["n_embd"], sam_global_layers=SAM_GLOBAL_LAYERS,
        sam_eps=SAM_EPS, projection_dim=body["proj_dim"], use_gelu=True,
        n_queries_tile=consts.n_queries_tile, n_queries_global=consts.n_queries_global,
        rope_theta=consts.rope_theta, **body, **_SAM_DIMS[size])


def stored_type(spec: TensorSpec, outtype: GGMLQuantizationType) -> GGMLQuantizationType:
    """The converter's storage type for one tensor under a given output type."""
    if spec.store == "f32":
        return Q.F32
    if spec.store == "f16":
        return Q.F16
    if spec.store == "patch":
        return Q.F16 if outtype == Q.F16 else Q.F32
    block, _ = GGML_QUANT_SIZES[outtype]
    # like the converter, fall back to F16 when a row does not split into whole blocks
    return outtype if spec.concrete_ne[0] % block == 0 else Q.F16


def random_values(spec: TensorSpec, seed: int) -> np.ndarray:
    """Deterministic float32 values for one tensor (NumPy shape = reversed ne)."""
    ne = spec.concrete_ne
    rng = np.random.default_rng([seed, zlib.crc32(spec.name.encode())])
    values = rng.standard_normal(tuple(reversed(ne)), dtype=np.float32)
    if spec.init == "fan_in":
        values *= np.float32(1 / math.sqrt(math.prod(ne[:-1])))
    else:
        values *= np.float32(0.02)
        if spec.init == "one":
            values += np.float32(1)
    return values


def _tensor_info(spec: TensorSpec, qtype: GGMLQuantizationType) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, nbytes) of the array `quantize` will produce, as GGUFWriter.add_tensor_info wants them."""
    shape = tuple(reversed(spec.concrete_ne))
    if qtype in (Q.F32, Q.F16):
        dtype = np.dtype(np.float32 if qtype == Q.F32 else np.float16)
        return shape, dtype, math.prod(shape) * dtype.itemsize
    byte_shape = quant_shape_to_byte_shape(shape, qtype)
    return byte_shape, np.dtype(np.uint8), math.prod(byte_shape)


def _add_key(writer: GGUFWriter, key: str, vtype: str, value) -> None:
    if vtype == "ARRAY[FLOAT32]":
        writer.add_array(key, [float(v) for v in value])  # gguf writes a float list as FLOAT32
    else:
        {"UINT32": writer.add_uint32, "FLOAT32": writer.add_float32, "BOOL": writer.add_bool,
         "STRING": writer.add_string}[vtype](key, value)


def make_mmproj(arch: str, size: str, dtype: str, seed: int, path: str | os.PathLike[str]) -> Path:
    """Write a random-weight mmproj GGUF; return its path. The file appears atomically (temp file + rename)."""
    if dtype not in DTYPES:
        raise NpggmlError(f"unknown --dtype {dtype} (expected one of {', '.join(DTYPES)})")
    if not 0 <= seed < 2**63:
        raise NpggmlError(f"--seed {seed} is out of range (expected 0 <= seed < 2**63)")
    hp = preset_hparams(arch, size)
    family = PROJECTORS[arch]
    outtype, file_type = DTYPES[dtype]
    plan = [(spec, stored_type(spec, outtype)) for spec in family.tensors(hp)]
    n_params = sum(math.prod(spec.concrete_ne) for spec, _ in plan)

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    writer = GGUFWriter(tmp, "clip")  # writes general.architecture
    writer.add_type("mmproj")
    writer.add_name(f"npggml random {arch} {size}")
    writer.add_size_label(size_label(n_params, 0, 0, 0))
    writer.add_file_type(file_type)
    for key, vtype, value in family.converter_keys(hp):
        _add_key(writer, key, vtype, value)
    writer.add_quantization_version(GGML_QUANT_VERSION)
    for spec, qtype in plan:
        shape, np_dtype, nbytes = _tensor_info(spec, qtype)
        writer.add_tensor_info(spec.name, shape, np_dtype, nbytes, raw_dtype=qtype)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for spec, qtype in plan:
            writer.write_tensor_data(quantize(random_values(spec, seed), qtype))
        writer.close()
        os.replace(tmp, path)
    except OSError as e:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise NpggmlError(f"{path}: cannot write the file ({e.strerror}) (expected a writable path)") from None
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return path
