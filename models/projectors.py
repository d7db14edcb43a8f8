"""Registry of supported projector families, keyed by the GGUF `clip.projector_type` string.

A family bundles everything the loader and the file writer need to know about one projector type:
how llama.cpp reads its hyper-parameters, which tensors it expects, and which keys the converter writes.
Supporting a new family means writing those three functions and adding one `ProjectorFamily` to `PROJECTORS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from npggml.models import arch_tensors, hparams
from npggml.models.arch_tensors import TensorSpec
from npggml.models.hparams import HParams, Metadata, ShapeLookup

# Converter quirks of v1: it merges the CLIP-L/14-224 sub-config, so image size and patch size are CLIP's, and it
# writes feed_forward_length as 4 * heads. llama.cpp overrides or ignores all three.
V1_KEY_IMAGE_SIZE = 224
V1_KEY_PATCH_SIZE = 14
CONVERTER_EPS = 1e-6  # the HF configs have no layer_norm_eps, so the converter writes this default

KeySpec = tuple[str, str, Any]  # (key, GGUF type name as in hparams.KeyValue, value)


@dataclass(frozen=True)
class ProjectorFamily:
    name: str
    read_hparams: Callable[[Metadata, ShapeLookup], tuple[HParams, dict[str, str]]]
    tensors: Callable[[HParams], list[TensorSpec]]
    converter_keys: Callable[[HParams], list[KeySpec]]  # the `clip.*` keys, in the converter's order


def _clip_keys(hp: HParams, *, image_size: int, patch_size: int, n_ff: int, eps: float,
               after_gelu: tuple[KeySpec, ...] = (), tail: tuple[KeySpec, ...] = ()) -> list[KeySpec]:
    return [
        ("clip.has_vision_encoder", "BOOL", True),
        ("clip.vision.projection_dim", "UINT32", hp.projection_dim),
        ("clip.vision.image_size", "UINT32", image_size),
        ("clip.vision.patch_size", "UINT32", patch_size),
        ("clip.vision.embedding_length", "UINT32", hp.n_embd),
        ("clip.vision.feed_forward_length", "UINT32", n_ff),
        ("clip.vision.block_count", "UINT32", hp.n_layer),
        ("clip.vision.attention.head_count", "UINT32", hp.n_head),
        ("clip.vision.image_mean", "ARRAY[FLOAT32]", list(hp.image_mean)),
        ("clip.vision.image_std", "ARRAY[FLOAT32]", list(hp.image_std)),
        ("clip.projector_type", "STRING", hp.projector),
        ("clip.vision.attention.layer_norm_epsilon", "FLOAT32", eps),
        ("clip.use_gelu", "BOOL", hp.use_gelu),
        *after_gelu,
        ("clip.vision.window_size", "UINT32", hp.window_size),
        ("clip.vision.preproc_min_tiles", "UINT32", hp.min_tiles),
        ("clip.vision.preproc_max_tiles", "UINT32", hp.max_tiles),
        ("clip.vision.sam.block_count", "UINT32", hp.sam_n_layer),
        ("clip.vision.sam.embedding_length", "UINT32", hp.sam_n_embd),
        ("clip.vision.sam.head_count", "UINT32", hp.sam_n_head),
        *tail,
    ]


def _deepseekocr_keys(hp: HParams) -> list[KeySpec]:
    # scale_factor = (224 // 14) // 16 = 1 differs from the converter's default of 4, so it is written
    return _clip_keys(hp, image_size=V1_KEY_IMAGE_SIZE, patch_size=V1_KEY_PATCH_SIZE, n_ff=4 * hp.n_head,
                      eps=CONVERTER_EPS, after_gelu=(("clip.vision.projector.scale_factor", "UINT32", 1),))


def _deepseekocr2_keys(hp: HParams) -> list[KeySpec]:
    return _clip_keys(hp, image_size=hp.image_size, patch_size=hp.patch_size, n_ff=hp.n_ff, eps=hp.eps,
                      tail=(("clip.vision.attention.head_count_kv", "UINT32", hp.n_head_kv),))


def _mlp_keys(hp) -> list[KeySpec]:
    """The legacy llava converter's `clip.*` keys, in its order (vision-only file with a llava projector)."""
    return [
        ("clip.has_text_encoder", "BOOL", False),
        ("clip.has_vision_encoder", "BOOL", True),
        ("clip.has_llava_projector", "BOOL", True),
        ("clip.projector_type", "STRING", hp.projector),
        ("clip.vision.image_size", "UINT32", hp.image_size),
        ("clip.vision.patch_size", "UINT32", hp.patch_size),
        ("clip.vision.embedding_length", "UINT32", hp.n_embd),
        ("clip.vision.feed_forward_length", "UINT32", hp.n_ff),
        ("clip.vision.projection_dim", "UINT32", hp.projection_dim),
        ("clip.vision.attention.head_count", "UINT32", hp.n_head),
        ("clip.vision.attention.layer_norm_epsilon", "FLOAT32", hp.eps),
        ("clip.vision.block_count", "UINT32", hp.n_layer),
        ("clip.vision.image_mean", "ARRAY[FLOAT32]", list(hp.image_mean)),
        ("clip.vision.image_std", "ARRAY[FLOAT32]", list(hp.image_std)),
        ("clip.use_gelu", "BOOL", hp.use_gelu),
    ]


PROJECTORS: dict[str, ProjectorFamily] = {
    family.name: family
    for family in (
        ProjectorFamily("deepseekocr", hparams.read_deepseekocr, arch_tensors.deepseekocr_tensors,
                        _deepseekocr_keys),
        ProjectorFamily("deepseekocr2", hparams.read_deepseekocr2, arch_tensors.deepseekocr2_tensors,
                        _deepseekocr2_keys),
        ProjectorFamily("mlp", hparams.read_mlp, arch_tensors.llava_tensors, _mlp_keys),
    )
}
