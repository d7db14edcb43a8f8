#!/usr/bin/env python3
"""PyTorch-eager CPU timing of the DeepSeek-OCR v1 / v2 vision encoders at full size, random weights.

    python bench_torch.py --model v1|v2 --views global|page --repeat R --threads 2 [--flops] [--seed S]

v2: transformers' native DeepseekOcr2Model (SAM ViT-B -> Qwen2-0.5B-shaped encoder with 256/144 learned
    queries -> Linear 896->1280), built with the full vision config and a 1-layer tiny language model (never run);
    timed call = model.get_image_features(pixel_values, pixel_values_local, num_local_patches).
v1: transformers 5.24 has no DeepSeek-OCR v1 model, so it is composed from transformers modules:
    DeepseekOcr2SamVisionEncoder (SAM ViT-B, net_3 -> 1024 channels as in v1) -> CLIP-L body
    (CLIPVisionModel's class/position embeddings (257 positions), pre_layrnorm and 24-layer CLIPEncoder, run on
    the SAM features as patch tokens: CLS + 256 for the 1024 view, CLS + 100 for a 640 tile) ->
    cat(CLIP[:, 1:], SAM) 2048 -> Linear 2048->1280 -> newline / view-separator weave.

Page = 6 tiles (3x2 grid) as one batch + the 1024x1024 global view. float32, torch.inference_mode(), eager.
One warm-up run, then R timed runs; prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("v1", "v2"), required=True)
    p.add_argument("--views", choices=("global", "page"), default="global")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--flops", action="store_true",
                   help="also count FLOPs with torch.utils.flop_counter (one extra, untimed run)")
    p.add_argument("--no-sgemm", action="store_true", help="skip the 4096^3 sgemm reference measurement")
    return p.parse_args()


ARGS = parse_args()
# Pin the thread pools before torch is imported (OpenMP / MKL read these at load time).
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = str(ARGS.threads)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from torch import nn  # noqa: E402
from transformers import CLIPVisionConfig, CLIPVisionModel  # noqa: E402
from transformers.models.deepseek_ocr2.configuration_deepseek_ocr2 import (  # noqa: E402
    DeepseekOcr2Config,
    DeepseekOcr2SamVisionConfig,
)
from transformers.models.deepseek_ocr2.modeling_deepseek_ocr2 import (  # noqa: E402
    DeepseekOcr2Model,
    DeepseekOcr2SamVisionEncoder,
)

GLOBAL_SIZE = 1024
TILE_SIZE = {"v1": 640, "v2": 768}
GRID = (3, 2)  # (cols, rows): 6 tiles
PROJ_DIM = 1280  # DeepSeek-3B-MoE hidden size (the projector's output)
ATTN_IMPL = "sdpa"

# ---------------------------------------------------------------------------------------------- configs

SAM_FULL = dict(  # SAM ViT-B as in both DeepSeek-OCR releases (= DeepseekOcr2SamVisionConfig defaults)
    hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4.0, image_size=1024, patch_size=16,
    window_size=14, global_attn_indexes=[2, 5, 8, 11], output_channels=256, layer_norm_eps=1e-6,
    qkv_bias=True, use_abs_pos=True, use_rel_pos=True, hidden_act="gelu",
)
QWEN2_ENCODER_FULL = dict(  # Qwen2-0.5B shape, used by DeepSeek-OCR-2 as its vision encoder
    hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
    hidden_act="silu", rms_norm_eps=1e-6, max_position_embeddings=32768, use_sliding_window=False,
    rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0}, vocab_size=151936,
)
TINY_TEXT = dict(  # a 1-layer dense stand-in LM: only its hidden_size (1280) matters (projector width)
    hidden_size=PROJ_DIM, intermediate_size=64, num_hidden_layers=1, num_attention_heads=10,
    num_key_value_heads=10, vocab_size=32, n_routed_experts=2, n_shared_experts=1, num_experts_per_tok=1,
    moe_intermediate_size=16, mlp_layer_types=["dense"], max_position_embeddings=64,
)
CLIP_L_FULL = dict(  # DeepSeek-OCR v1 CLIP-L/14-224 body (257 positions), quick_gelu, eps 1e-5
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=224,
    patch_size=14, num_channels=3, hidden_act="quick_gelu", layer_norm_eps=1e-5,
)


def v2_config() -> DeepseekOcr2Config:
    sam = dict(SAM_FULL, downsample_channels=[512, 896])
    cfg = DeepseekOcr2Config(
        vision_config={"sam_config": sam, "encoder_config": QWEN2_ENCODER_FULL},
        text_config=TINY_TEXT,
    )
    cfg._attn_implementation = ATTN_IMPL
    return cfg


# ---------------------------------------------------------------------------------------------- models


class DeepseekOcrV1Vision(nn.Module):
    """DeepSeek-OCR v1 vision path composed from transformers modules (see module docstring)."""

    def __init__(self):
        super().__init__()
        sam_cfg = DeepseekOcr2SamVisionConfig(**dict(SAM_FULL, downsample_channels=[512, 1024]))
        sam_cfg._attn_implementation = ATTN_IMPL
        self.sam = DeepseekOcr2SamVisionEncoder(sam_cfg)
        clip_cfg = CLIPVisionConfig(**CLIP_L_FULL)
        clip_cfg._attn_implementation = ATTN_IMPL
        clip = CLIPVisionModel(clip_cfg)
        # Keep what the v1 VitModel has: embeddings (class, 257 positions; its 14x14 patch conv is stored in
        # the real checkpoint but unused when SAM features are passed in), pre_layrnorm, 24 layers; no post-LN.
        self.class_embedding = clip.embeddings.class_embedding
        self.position_embedding = clip.embeddings.position_embedding
        self.clip_patch_embedding = clip.embeddings.patch_embedding  # unused in forward, as in the real model
        self.pre_layrnorm = clip.pre_layrnorm
        self.clip_encoder = clip.encoder
        self.projector = nn.Linear(2048, PROJ_DIM)
        self.image_newline = nn.Parameter(torch.zeros(PROJ_DIM))
        self.view_seperator = nn.Parameter(torch.zeros(PROJ_DIM))

    def clip_positions(self, side: int) -> torch.Tensor:
        table = self.position_embedding.weight  # [257, 1024]
        src = int(math.isqrt(table.shape[0] - 1))
        if side == src:
            return table.unsqueeze(0)
        cls, grid = table[:1], table[1:]
        grid = grid.reshape(1, src, src, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(side, side), mode="bicubic", antialias=True, align_corners=False)
        grid = grid.permute(0, 2, 3, 1).reshape(side * side, -1)
        return torch.cat([cls, grid], 0).unsqueeze(0)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> projected features [B, (S/64)^2, 1280]."""
        sam = self.sam(pixels).last_hidden_state  # [B, 1024, S/64, S/64]
        b, c, h, w = sam.shape
        sam_tokens = sam.flatten(2).transpose(1, 2)  # [B, h*w, 1024]
        cls = self.class_embedding.expand(b, 1, -1)
        x = torch.cat([cls, sam_tokens], 1) + self.clip_positions(h)
        x = self.pre_layrnorm(x)
        x = self.clip_encoder(inputs_embeds=x).last_hidden_state  # [B, 1 + h*w, 1024]
        feats = torch.cat([x[:, 1:], sam_tokens], -1)  # [B, h*w, 2048]
        return self.projector(feats)

    def forward(self, global_pixels: torch.Tensor, tile_pixels: torch.Tensor | None, grid=GRID) -> torch.Tensor:
        g = self.encode(global_pixels)[0]  # [256, 1280]
        side = int(math.isqrt(g.shape[0]))
        g = g.reshape(side, side, -1)
        g = torch.cat([g, self.image_newline.expand(side, 1, -1)], 1).reshape(-1, g.shape[-1])
        parts = []
        if tile_pixels is not None:
            t = self.encode(tile_pixels)  # [n_tiles, 100, 1280]
            n_cols, n_rows = grid
            ts = int(math.isqrt(t.shape[1]))
            t = t.reshape(n_rows, n_cols, ts, ts, -1).permute(0, 2, 1, 3, 4).reshape(n_rows * ts, n_cols * ts, -1)
            t = torch.cat([t, self.image_newline.expand(n_rows * ts, 1, -1)], 1).reshape(-1, t.shape[-1])
            parts.append(t)
        parts += [g, self.view_seperator.unsqueeze(0)]
        return torch.cat(parts, 0)


class DeepseekOcrV2Vision(nn.Module):
    """transformers' DeepseekOcr2Model; only get_image_features is run."""

    def __init__(self):
        super().__init__()
        self.model = DeepseekOcr2Model(v2_config())

    def forward(self, global_pixels: torch.Tensor, tile_pixels: torch.Tensor | None, grid=GRID) -> torch.Tensor:
        n_local = [tile_pixels.shape[0]] if tile_pixels is not None else None
        out = self.model.get_image_features(global_pixels, tile_pixels, n_local)
        return out.pooler_output[0]

    def vision_parameters(self):
        m = self.model
        yield from m.vision_tower.parameters()
        yield from m.multi_modal_projector.parameters()
        yield m.view_separator


# ---------------------------------------------------------------------------------------------- helpers


@torch.no_grad()
def randomize(module: nn.Module, seed: int) -> None:
    """Seeded random weights that keep activations O(1): matrices / convs ~ N(0, 1/fan_in), norm weights ~ 1,
    biases and embeddings / queries / position tables ~ N(0, 0.02^2). (transformers' own init draws SAM weights
    with std 1e-10, which would make the run numerically degenerate.)"""
    gen = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        small = any(k in name for k in ("embed", "query", "rel_pos", "newline", "seperator", "separator"))
        if p.dim() >= 2 and not small:
            fan_in = math.prod(p.shape[1:])
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
        elif p.dim() == 1 and leaf == "weight":  # LayerNorm / RMSNorm scale
            p.copy_(1.0 + 0.02 * torch.randn(p.shape, generator=gen))
        else:
            p.copy_(0.02 * torch.randn(p.shape, generator=gen))


def sgemm_rate(n: int = 4096, tries: int = 3) -> dict:
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    c = torch.empty(n, n)
    torch.mm(a, b, out=c)  # warm-up
    best = float("inf")
    for _ in range(tries):
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        best = min(best, time.perf_counter() - t0)
    return {"n": n, "best_seconds": best, "gflops": 2 * n**3 / best / 1e9, "tries": tries}


def backend_info() -> dict:
    b = torch.backends
    info = {
        "cpu_capability": b.cpu.get_cpu_capability(),
        "mkl_available": b.mkl.is_available(),
        "mkldnn_available": b.mkldnn.is_available(),
        "mkldnn_enabled": b.mkldnn.enabled,
        "openmp_available": b.openmp.is_available(),
    }
    cfg = torch.__config__.show()
    info["config_lines"] = [l.strip() for l in cfg.splitlines()
                            if l.strip().startswith("- ") and not l.strip().startswith("- Build settings")]
    settings = {}
    for kv in cfg.split(","):
        kv = kv.strip().split(": ")[-1]
        if "=" in kv:
            k, v = kv.split("=", 1)
            if k in ("BLAS_INFO", "LAPACK_INFO", "USE_MKL", "USE_MKLDNN", "USE_OPENMP", "PERF_WITH_AVX512",
                     "TORCH_VERSION", "COMMIT_SHA", "USE_CUDA"):
                settings[k] = v
    info["build_settings"] = settings
    info["parallel_info"] = [l.strip() for l in torch.__config__.parallel_info().splitlines() if l.strip()]
    return info


def count_flops(fn) -> dict:
    from torch.utils import flop_counter as fc

    # CPU SDPA dispatches to a kernel the counter does not know; count it like the GPU flash kernel.
    target = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if target not in fc.flop_registry:
        @fc.register_flop_formula(target)
        def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return fc.sdpa_flop_count(query_shape, key_shape, value_shape)

    mode = fc.FlopCounterMode(display=False)
    with mode:
        fn()
    by_op = {str(k): v for k, v in mode.get_flop_counts().get("Global", {}).items()}
    return {"total": mode.get_total_flops(), "by_op": by_op}


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    args = ARGS
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    result = {
        "model": args.model, "views": args.views, "threads": args.threads, "repeat": args.repeat,
        "dtype": "float32", "mode": "eager, torch.inference_mode()", "attn_implementation": ATTN_IMPL,
        "torch_version": torch.__version__, "transformers_version": transformers.__version__,
        "python": sys.version.split()[0], "platform": platform.platform(), "processor": platform.processor(),
        "torch_num_threads": torch.get_num_threads(), "torch_num_interop_threads": torch.get_num_interop_threads(),
        "backends": backend_info(),
    }
    if not args.no_sgemm:
        result["sgemm_4096"] = sgemm_rate()

    t0 = time.perf_counter()
    model = DeepseekOcrV1Vision() if args.model == "v1" else DeepseekOcrV2Vision()
    randomize(model, args.seed)
    model.eval()
    result["build_seconds"] = time.perf_counter() - t0
    params = list(model.vision_parameters()) if args.model == "v2" else list(model.parameters())
    n_params = sum(p.numel() for p in params)
    if args.model == "v1":
        unused = model.clip_patch_embedding.weight.numel()
        result["params"] = {"vision_total_incl_projector": n_params, "of_which_unused_clip_patch_conv": unused,
                            "sam": sum(p.numel() for p in model.sam.parameters()),
                            "clip": n_params - unused - sum(p.numel() for p in model.sam.parameters())
                            - sum(p.numel() for p in model.projector.parameters()) - 2 * PROJ_DIM,
                            "projector": sum(p.numel() for p in model.projector.parameters())}
    else:
        m = model.model
        result["params"] = {"vision_total_incl_projector": n_params,
                            "sam": sum(p.numel() for p in m.vision_tower.sam_encoder.parameters()),
                            "qwen2_encoder": sum(p.numel() for p in m.vision_tower.vision_encoder.parameters()),
                            "queries": m.vision_tower.query_768_resolution.weight.numel()
                            + m.vision_tower.query_1024_resolution.weight.numel(),
                            "projector": sum(p.numel() for p in m.multi_modal_projector.parameters()),
                            "stand_in_lm_not_run": sum(p.numel() for p in m.language_model.parameters())}

    gen = torch.Generator().manual_seed(args.seed + 1)
    global_px = torch.randn(1, 3, GLOBAL_SIZE, GLOBAL_SIZE, generator=gen)  # ~ normalized pixels
    tile_px = None
    if args.views == "page":
        ts = TILE_SIZE[args.model]
        tile_px = torch.randn(GRID[0] * GRID[1], 3, ts, ts, generator=gen)
    tiled = tile_px is not None
    result["inputs"] = {"global": list(global_px.shape), "tiles": list(tile_px.shape) if tiled else None,
                        "grid_cols_rows": list(GRID) if tiled else None}

    def run():
        return model(global_px, tile_px)

    with torch.inference_mode():
        t0 = time.perf_counter()
        out = run()
        result["warmup_seconds"] = time.perf_counter() - t0
        result["output_shape"] = list(out.shape)
        result["output_finite"] = bool(torch.isfinite(out).all())
        result["output_rms"] = float(out.pow(2).mean().sqrt())
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        result["seconds"] = times
        result["median_seconds"] = statistics.median(times) if times else None
        if args.flops:
            fl = count_flops(run)
            result["flops"] = fl
            if times:
                result["achieved_gflops_at_median"] = fl["total"] / result["median_seconds"] / 1e9
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
