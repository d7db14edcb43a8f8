"""Hyper-parameters of a DeepSeek-OCR mmproj, read as llama.cpp's `clip.cpp` reads them.

llama.cpp reads most values from GGUF keys, supplies defaults for optional keys, replaces a few key values with
constants of its own (image size, patch size, the v1 CLIP epsilon) and hard-codes others (tile size, SAM global
layers, query counts). Some widths are not stored in any key and follow from tensor shapes. `HParams` holds the
resulting values; `sources` records for each field where it came from:

- `key:<gguf key>`: read from that key;
- `default`: the optional key is absent and llama.cpp's default applies;
- `override`: the key is read (and must be present) but llama.cpp replaces its value;
- `fixed`: a constant of llama.cpp's code with no key;
- `tensor:<name>`: the size of a tensor dimension.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from npggml.models.gguf_errors import MissingTensorError, MmprojContentError

# Constants of llama.cpp's DeepSeek-OCR code (clip.cpp, clip-model.h).
IMAGE_SIZE = 1024
PATCH_SIZE = 16
SAM_N_LAYER = 12
SAM_GLOBAL_LAYERS = (2, 5, 8, 11)
SAM_EPS = 1e-6
MIN_TILES_DEFAULT = 2
MAX_TILES_LIMIT = 256
WINDOW_SIZE_LIMIT = 4096

# Upper bounds that reject absurd metadata before any shape is derived from it.
MAX_WIDTH = 1 << 16
MAX_LAYERS = 1024
MAX_HEADS = 1024


@dataclass(frozen=True)
class ArchConstants:
    """What llama.cpp fixes in code for one projector type."""

    tile_size: int
    max_tiles_default: int
    eps_override: float | None  # replaces the key's epsilon when set
    n_queries_tile: int
    n_queries_global: int
    rope_theta: float


ARCH_CONSTANTS = {
    "deepseekocr": ArchConstants(640, 9, 1e-5, 0, 0, 0.0),
    "deepseekocr2": ArchConstants(768, 6, None, 144, 256, 1e6),
}


@dataclass(frozen=True)
class HParams:
    projector: str
    image_size: int  # global view side, 1024
    patch_size: int  # SAM patch side, 16
    n_embd: int  # width of the CLIP (v1) / Qwen2 (v2) body
    n_ff: int
    n_layer: int
    n_head: int
    n_head_kv: int
    eps: float  # body norm epsilon
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    window_size: int  # SAM attention window
    min_tiles: int
    max_tiles: int
    tile_size: int  # 640 (v1) / 768 (v2)
    sam_n_layer: int
    sam_n_embd: int
    sam_n_head: int
    sam_n_ff: int
    sam_neck_channels: int  # neck.0 output, 256 at full size
    sam_net2_channels: int  # net_2 output, 512 at full size
    sam_out_channels: int  # net_3 output: 1024 (v1) / 896 (v2), equal to n_embd
    sam_global_layers: tuple[int, ...]
    sam_eps: float
    proj_dim: int  # output width, from mm.model.fc.weight ne1
    projection_dim: int  # the clip.vision.projection_dim key (LLM width); informative only
    use_gelu: bool
    n_queries_tile: int  # v2 learned queries per tile (144); 0 for v1
    n_queries_global: int  # v2 learned queries of the global view (256); 0 for v1
    rope_theta: float  # v2 RoPE base; 0 for v1

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def sam_head_dim(self) -> int:
        return self.sam_n_embd // self.sam_n_head

    @property
    def sam_grid(self) -> int:
        """Patch grid side of the global view (64)."""
        return self.image_size // self.patch_size

    @property
    def n_pos_global(self) -> int:
        """Tokens of the global view after SAM's two stride-2 convolutions (16 x 16 = 256)."""
        return (self.sam_grid // 4) ** 2


class KeyValue(NamedTuple):
    type: str  # GGUF value type name; arrays as 'ARRAY[FLOAT32]'
    value: Any


class Metadata:
    """The key/value section of one GGUF file, with typed access that reports errors against the file."""

    def __init__(self, path: str, values: dict[str, KeyValue]):
        self.path = path
        self.values = values

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def get(self, key: str, vtype: str) -> Any:
        kv = self.values.get(key)
        if kv is None:
            raise MmprojContentError(self.path, f"missing key {key}", f"a {vtype} value")
        if kv.type != vtype:
            raise MmprojContentError(self.path, f"key {key} has type {kv.type}", vtype)
        return kv.value


_REQUIRED = object()
ShapeLookup = Callable[[str], tuple[int, int, int, int]]


class _Reading:
    """Collects HParams fields and their sources while reading one file."""

    def __init__(self, meta: Metadata, shape_of: ShapeLookup):
        self.meta = meta
        self.shape_of = shape_of
        self.values: dict[str, Any] = {}
        self.sources: dict[str, str] = {}

    def key(self, field: str, key: str, vtype: str, default: Any = _REQUIRED) -> Any:
        if key in self.meta or default is _REQUIRED:
            value = self.meta.get(key, vtype)
            source = f"key:{key}"
        else:
            value, source = default, "default"
        return self.set(field, value, source)

    def override(self, field: str, key: str, vtype: str, value: Any) -> Any:
        self.meta.get(key, vtype)  # llama.cpp requires the key even though it discards the value
        return self.set(field, value, "override")

    def tensor_dim(self, field: str, name: str, axis: int) -> int:
        return self.set(field, self.shape_of(name)[axis], f"tensor:{name}")

    def set(self, field: str, value: Any, source: str) -> Any:
        self.values[field] = value
        self.sources[field] = source
        return value

    def fail(self, field: str, expected: str) -> None:
        source = self.sources[field]
        label = source[4:] if source.startswith("key:") else field
        if source.startswith("tensor:"):
            label = f"{field} from {source[7:]}"
        raise MmprojContentError(self.meta.path, f"{label} = {self.values[field]!r}", expected)

    def build(self, cls: type | None = None) -> tuple[HParams, dict[str, str]]:
        return (cls or HParams)(**self.values), dict(self.sources)


def _read_shared(r: _Reading, projector: str) -> ArchConstants:
    """Keys and shapes common to both DeepSeek-OCR versions (SAM, preprocessing, projector output)."""
    consts = ARCH_CONSTANTS[projector]
    r.set("projector", projector, "key:clip.projector_type")
    r.override("image_size", "clip.vision.image_size", "UINT32", IMAGE_SIZE)
    r.override("patch_size", "clip.vision.patch_size", "UINT32", PATCH_SIZE)
    r.key("n_embd", "clip.vision.embedding_length", "UINT32")
    r.key("n_layer", "clip.vision.block_count", "UINT32")
    r.key("n_head", "clip.vision.attention.head_count", "UINT32")
    r.key("projection_dim", "clip.vision.projection_dim", "UINT32")
    r.key("use_gelu", "clip.use_gelu", "BOOL", default=False)
    for field in ("image_mean", "image_std"):
        values = r.key(field, f"clip.vision.{field}", "ARRAY[FLOAT32]")
        r.set(field, tuple(float(v) for v in values), r.sources[field])
    r.key("window_size", "clip.vision.window_size", "UINT32")
    r.key("min_tiles", "clip.vision.preproc_min_tiles", "UINT32", default=MIN_TILES_DEFAULT)
    r.key("max_tiles", "clip.vision.preproc_max_tiles", "UINT32", default=consts.max_tiles_default)
    r.set("tile_size", consts.tile_size, "fixed")
    r.key("sam_n_layer", "clip.vision.sam.block_count", "UINT32")
    r.key("sam_n_embd", "clip.vision.sam.embedding_length", "UINT32")
    r.key("sam_n_head", "clip.vision.sam.head_count", "UINT32")
    r.set("sam_global_layers", SAM_GLOBAL_LAYERS, "fixed")
    r.set("sam_eps", SAM_EPS, "fixed")
    r.set("n_queries_tile", consts.n_queries_tile, "fixed")
    r.set("n_queries_global", consts.n_queries_global, "fixed")
    r.set("rope_theta", consts.rope_theta, "fixed")
    _check_shared_keys(r)
    # Widths no key stores: the tensors define them, and every other tensor is checked against them later.
    r.tensor_dim("sam_n_ff", "v.sam.blk.0.mlp.lin1.weight", 1)
    r.tensor_dim("sam_neck_channels", "v.sam.neck.0.weight", 3)
    r.tensor_dim("sam_net2_channels", "v.sam.net_2.weight", 3)
    r.tensor_dim("sam_out_channels", "v.sam.net_3.weight", 3)
    r.tensor_dim("proj_dim", "mm.model.fc.weight", 1)
    if r.values["sam_out_channels"] != r.values["n_embd"]:
        r.fail("sam_out_channels", f"clip.vision.embedding_length = {r.values['n_embd']}: SAM feeds the body")
    return consts


def _check_shared_keys(r: _Reading) -> None:
    v = r.values

    def positive(field: str, limit: int) -> None:
        if not 0 < v[field] <= limit:
            r.fail(field, f"1 .. {limit}")

    for field, limit in (("n_embd", MAX_WIDTH), ("sam_n_embd", MAX_WIDTH), ("n_layer", MAX_LAYERS),
                         ("n_head", MAX_HEADS), ("sam_n_head", MAX_HEADS),
                         ("window_size", WINDOW_SIZE_LIMIT)):
        positive(field, limit)
    if v["n_embd"] % v["n_head"]:
        r.fail("n_head", f"a divisor of clip.vision.embedding_length = {v['n_embd']}")
    if v["sam_n_embd"] % v["sam_n_head"]:
        r.fail("sam_n_head", f"a divisor of clip.vision.sam.embedding_length = {v['sam_n_embd']}")
    if v["sam_n_layer"] != SAM_N_LAYER:
        r.fail("sam_n_layer", f"{SAM_N_LAYER}: llama.cpp hard-codes 12 SAM blocks")
    if not v["min_tiles"] <= v["max_tiles"] <= MAX_TILES_LIMIT:
        r.fail("max_tiles", f"preproc_min_tiles = {v['min_tiles']} <= max tiles <= {MAX_TILES_LIMIT}")
    for field in ("image_mean", "image_std"):
        values = v[field]
        if len(values) != 3 or not all(math.isfinite(x) for x in values):
            r.fail(field, "3 finite values, one per RGB channel")
    if min(v["image_std"]) <= 0:
        r.fail("image_std", "positive values")


def read_deepseekocr(meta: Metadata, shape_of: ShapeLookup) -> tuple[HParams, dict[str, str]]:
    """v1: SAM + CLIP-L body + linear projector."""
    split = _has(shape_of, "v.blk.0.attn_q.weight") and not _has(shape_of, "v.blk.0.attn_qkv.weight")
    if split and _has(shape_of, "v.class_embd"):
        # llama.cpp would accept these; no converter writes them for DeepSeek-OCR, so npggml does not
        raise MmprojContentError(meta.path, "v1 CLIP with split attn_q/attn_k/attn_v tensors is not supported",
                                 "fused v.blk.N.attn_qkv.weight as llama.cpp's converter writes it")
    r = _Reading(meta, shape_of)
    consts = _read_shared(r, "deepseekocr")
    r.override("eps", "clip.vision.attention.layer_norm_epsilon", "FLOAT32", consts.eps_override)
    r.set("n_head_kv", r.values["n_head"], "default")
    # The converter writes feed_forward_length = 4 * heads (a bug); llama.cpp takes the width from the tensors.
    meta.get("clip.vision.feed_forward_length", "UINT32")
    r.tensor_dim("n_ff", "v.blk.0.ffn_up.weight", 1)
    if r.values["n_ff"] > MAX_WIDTH * 4:
        r.fail("n_ff", f"at most {MAX_WIDTH * 4}")
    return r.build()


def read_deepseekocr2(meta: Metadata, shape_of: ShapeLookup) -> tuple[HParams, dict[str, str]]:
    """v2: SAM + Qwen2 encoder with learned queries + linear projector."""
    r = _Reading(meta, shape_of)
    _read_shared(r, "deepseekocr2")
    eps = r.key("eps", "clip.vision.attention.layer_norm_epsilon", "FLOAT32")
    if not (math.isfinite(eps) and 0 < eps < 1):
        r.fail("eps", "a finite epsilon in (0, 1)")
    n_ff = r.key("n_ff", "clip.vision.feed_forward_length", "UINT32")
    if not 0 < n_ff <= MAX_WIDTH * 4:
        r.fail("n_ff", f"1 .. {MAX_WIDTH * 4}")
    n_head_kv = r.key("n_head_kv", "clip.vision.attention.head_count_kv", "UINT32")
    if n_head_kv == 0 or r.values["n_head"] % n_head_kv:
        r.fail("n_head_kv", f"a divisor of clip.vision.attention.head_count = {r.values['n_head']}")
    if (r.values["n_embd"] // r.values["n_head"]) % 2:
        r.fail("n_head", "an even head size for NEOX RoPE")
    return r.build()


def _has(shape_of: ShapeLookup, name: str) -> bool:
    try:
        shape_of(name)
    except MissingTensorError:
        return False
    return True


# --- LLaVA `mlp` projector: CLIP ViT + two-layer MLP (llama.cpp PROJECTOR_TYPE_MLP, legacy llava converter) -----

LLAVA_PAD_COLOR = (122, 116, 104)  # clip.cpp: image_pad_color for the llava projector types


@dataclass(frozen=True)
class LlavaHParams:
    projector: str  # "mlp"
    image_size: int  # square input side (336 for CLIP-L/14-336)
    patch_size: int
    n_embd: int
    n_ff: int
    n_layer: int  # stored blocks; the legacy converter already dropped the last CLIP layer
    n_head: int
    n_head_kv: int
    eps: float
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    projection_dim: int  # the clip.vision.projection_dim key (CLIP's projection); informative only
    use_gelu: bool  # FFN activation: gelu if set, silu if use_silu, else quick GELU (CLIP's quick_gelu)
    use_silu: bool
    ffn_swapped: bool  # the legacy converter stores fc1 as ffn_down (llama.cpp swaps by shape)
    has_pre_ln: bool
    has_post_ln: bool
    has_patch_bias: bool
    mm_hidden: int  # mm.0 output width
    proj_dim: int  # mm.2 output width: the LLM embedding width
    pad_color: tuple[int, int, int]

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def n_pos(self) -> int:
        """Patches plus the class token."""
        return self.n_patches + 1


def read_mlp(meta: Metadata, shape_of: ShapeLookup) -> tuple[LlavaHParams, dict[str, str]]:
    """LLaVA-1.5 style: CLIP ViT (class token, learned positions, pre-LN) + mm.0 -> GELU -> mm.2."""
    for key, what in (("clip.vision.image_grid_pinpoints", "LLaVA-1.6 any-resolution tiling"),
                      ("clip.vision.feature_layer", "multi-layer features (Granite Vision)")):
        if key in meta:
            raise MmprojContentError(meta.path, f"key {key} is set: {what} is not supported",
                                     "a single-view LLaVA-1.5 style mmproj")
    if _has(shape_of, "mm.3.weight"):
        raise MmprojContentError(meta.path, "tensor mm.3.weight present: the Yi-VL MLP_NORM projector is not "
                                 "supported", "the two-layer mm.0 / mm.2 projector")
    r = _Reading(meta, shape_of)
    r.set("projector", "mlp", "key:clip.projector_type")
    r.key("image_size", "clip.vision.image_size", "UINT32")
    r.key("patch_size", "clip.vision.patch_size", "UINT32")
    r.key("n_embd", "clip.vision.embedding_length", "UINT32")
    r.key("n_ff", "clip.vision.feed_forward_length", "UINT32")
    r.key("n_layer", "clip.vision.block_count", "UINT32")
    r.key("n_head", "clip.vision.attention.head_count", "UINT32")
    r.key("n_head_kv", "clip.vision.attention.head_count_kv", "UINT32", default=r.values["n_head"])
    eps = r.key("eps", "clip.vision.attention.layer_norm_epsilon", "FLOAT32")
    r.key("projection_dim", "clip.vision.projection_dim", "UINT32")
    for field in ("image_mean", "image_std"):
        values = r.key(field, f"clip.vision.{field}", "ARRAY[FLOAT32]")
        r.set(field, tuple(float(v) for v in values), r.sources[field])
    r.key("use_gelu", "clip.use_gelu", "BOOL", default=False)
    r.key("use_silu", "clip.use_silu", "BOOL", default=False)
    v = r.values
    for field, limit in (("n_embd", MAX_WIDTH), ("n_ff", MAX_WIDTH * 4), ("n_layer", MAX_LAYERS),
                         ("n_head", MAX_HEADS), ("image_size", MAX_WIDTH), ("patch_size", MAX_WIDTH)):
        if not 0 < v[field] <= limit:
            r.fail(field, f"1 .. {limit}")
    if v["n_embd"] % v["n_head"]:
        r.fail("n_head", f"a divisor of clip.vision.embedding_length = {v['n_embd']}")
    if v["n_head_kv"] != v["n_head"]:
        r.fail("n_head_kv", f"clip.vision.attention.head_count = {v['n_head']}: the llava graph has no GQA")
    if v["image_size"] % v["patch_size"]:
        r.fail("image_size", f"a multiple of clip.vision.patch_size = {v['patch_size']}")
    if not (math.isfinite(eps) and 0 < eps < 1):
        r.fail("eps", "a finite epsilon in (0, 1)")
    if v["use_gelu"] and v["use_silu"]:
        r.fail("use_silu", "false when clip.use_gelu is true (llama.cpp rejects both)")
    for field in ("image_mean", "image_std"):
        if len(v[field]) != 3 or not all(math.isfinite(x) for x in v[field]):
            r.fail(field, "3 finite values, one per RGB channel")
    if min(v["image_std"]) <= 0:
        r.fail("image_std", "positive values")
    # llama.cpp swaps ffn_up/ffn_down when ffn_down's ne0 is the embedding width (legacy converter naming)
    r.set("ffn_swapped", shape_of("v.blk.0.ffn_down.weight")[0] == v["n_embd"], "tensor:v.blk.0.ffn_down.weight")
    for field, name in (("has_pre_ln", "v.pre_ln.weight"), ("has_post_ln", "v.post_ln.weight"),
                        ("has_patch_bias", "v.patch_embd.bias")):
        r.set(field, _has(shape_of, name), f"tensor:{name}")
    r.tensor_dim("mm_hidden", "mm.0.weight", 1)
    r.tensor_dim("proj_dim", "mm.2.weight", 1)
    r.set("pad_color", LLAVA_PAD_COLOR, "fixed")
    n_pos = (v["image_size"] // v["patch_size"]) ** 2 + 1
    if shape_of("v.position_embd.weight")[1] != n_pos:
        r.set("n_pos_table", shape_of("v.position_embd.weight")[1], "tensor:v.position_embd.weight")
        r.fail("n_pos_table", f"{n_pos} rows: (image_size / patch_size)^2 patches + the class token")
    return r.build(LlavaHParams)
