"""`npggml make-gguf`: write a random-weight mmproj GGUF (DeepSeek-OCR v1/v2, LLaVA `mlp`) in the converter's
layout."""

from __future__ import annotations

import argparse
import sys

from npggml.models.gguf_synth import ARCHS, DTYPES, SIZES, make_mmproj


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "make-gguf", help="write a random-weight mmproj GGUF (llama.cpp converter layout)",
        description="Write a random-weight mmproj GGUF with llama.cpp's converter key set, tensor names, "
                    "shapes and storage types (DeepSeek-OCR v1/v2; LLaVA-1.5 'mlp' as the legacy llava "
                    "converter writes it).")
    p.add_argument("--arch", required=True, choices=ARCHS,
                   help="projector type: deepseekocr, deepseekocr2, or mlp (LLaVA CLIP ViT + MLP projector)")
    p.add_argument("--size", default="tiny", choices=SIZES,
                   help="tiny: the fixtures' tiny dims (default); full: the published model's dims")
    p.add_argument("--dtype", default="f32", choices=tuple(DTYPES),
                   help="converter --outtype for the matrices (default f32)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("-o", "--out", required=True, help="output .gguf path")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path = make_mmproj(args.arch, args.size, args.dtype, args.seed, args.out)
    sys.stdout.write(f"wrote {path}\n")
    return 0
