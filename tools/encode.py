"""`npggml encode`: encode a page image with an mmproj GGUF and write embeddings, metadata and the grid."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from npggml.errors import NpggmlError

EMBEDDED = ("deepseekocr", "tiny", "f32", 0)  # the model used when --mmproj is not given


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Options shared by every command that encodes a page (encode, trace, bench)."""
    p.add_argument("--mmproj", help="mmproj GGUF (default: an embedded tiny random v1 model)")
    p.add_argument("--image", required=True, help="page image (PNG, JPEG, ...)")
    p.add_argument("--mode", choices=["reference", "llama.cpp"], default="reference",
                   help="reference: HF model math (default); llama.cpp: reproduce llama.cpp 0c1e57098")
    p.add_argument("--no-tiles", action="store_true", help="encode the global view only")
    p.add_argument("--no-fast", action="store_true", help="use the NumPy reference kernels only")
    p.add_argument("--no-fuse", action="store_true", help="run the graph as built (no fused ops)")


def register(sub) -> None:
    p = sub.add_parser("encode", help="encode a page image into LLM embeddings",
                       description=__doc__.splitlines()[0])
    add_model_args(p)
    p.add_argument("--out", default="out", help="output folder (default: ./out)")
    p.set_defaults(func=run)


def embedded_model_path() -> Path:
    """The embedded tiny model, made once by the make-gguf code and cached."""
    from npggml.models.gguf_synth import make_mmproj

    arch, size, dtype, seed = EMBEDDED
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "npggml"
    path = cache / f"mmproj-{size}-{arch}-{dtype}-seed{seed}.gguf"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        make_mmproj(arch, size, dtype, seed, tmp)
        tmp.replace(path)
    return path


def open_encoder(args):
    from npggml.models.encode import Encoder

    path = args.mmproj
    if path is None:
        path = embedded_model_path()
        print(f"npggml: no --mmproj given, using the embedded tiny random v1 model ({path})", file=sys.stderr)
    return Encoder(path, args.mode, fast=not args.no_fast, fuse=not args.no_fuse)


class Progress:
    """Shows encode progress on a terminal (nothing when stderr is not one)."""

    def __init__(self, label: str, stream=sys.stderr):
        self.label, self.stream = label, stream
        self.enabled = stream.isatty()
        self.t0 = time.perf_counter()
        self.shown = -1

    def __call__(self, i: int, n: int) -> None:
        pct = 100 * i // max(n, 1)
        if self.enabled and pct != self.shown and time.perf_counter() - self.t0 > 0.5:
            self.shown = pct
            self.stream.write(f"\r{self.label}: {pct:3d}% ({i}/{n} nodes)")
            if i == n:
                self.stream.write("\n")
            self.stream.flush()


def draw_grid(image_path: str, views, out: Path) -> None:
    """The page with the chosen tile grid drawn on it, tiles numbered in encoding (row-major) order."""
    from PIL import ImageDraw, ImageFont

    from npggml.preprocess import load_image

    img = load_image(image_path).convert("RGB")
    draw = ImageDraw.Draw(img)
    w, h = img.size
    width = max(2, min(w, h) // 200)
    font = ImageFont.load_default(size=max(12, min(w, h) // 25))
    red = (220, 0, 0)
    if views.grid is not None:
        gw, gh = views.grid
        xs = [round(i * w / gw) for i in range(gw + 1)]
        ys = [round(j * h / gh) for j in range(gh + 1)]
        for x in xs[1:-1]:
            draw.line([(x, 0), (x, h)], fill=red, width=width)
        for y in ys[1:-1]:
            draw.line([(0, y), (w, y)], fill=red, width=width)
        for k in range(gw * gh):
            c, r = k % gw, k // gw
            draw.text(((xs[c] + xs[c + 1]) / 2, (ys[r] + ys[r + 1]) / 2), str(k), fill=red, font=font,
                      anchor="mm", stroke_width=2, stroke_fill=(255, 255, 255))
        label = f"{gw}x{gh} tiles of {views.tile_size} + global 1024"
    else:
        label = "no tiles: global 1024 view only"
    draw.rectangle([0, 0, w - 1, h - 1], outline=red, width=width)
    draw.text((2 * width, 2 * width), label, fill=red, font=font, stroke_width=2, stroke_fill=(255, 255, 255))
    img.save(out)


def run(args) -> int:
    out = Path(args.out)
    enc = open_encoder(args)
    views = enc.preprocess(args.image, no_tiles=args.no_tiles)
    result = enc.encode(args.image, views=views, progress=Progress("encoding"))
    try:
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / "embeddings.npy", result.embeddings)
        meta = result.meta(str(args.mmproj or "embedded:tiny-deepseekocr-f32-seed0"), args.mode)
        (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        draw_grid(args.image, views, out / "tiles.png")
    except OSError as e:
        raise NpggmlError(f"{out}: cannot write outputs ({e.strerror})") from None
    grid = "x".join(map(str, views.grid)) if views.grid else "none"
    print(f"{args.image}: grid {grid}, {result.embeddings.shape[0]} tokens x {result.embeddings.shape[1]} "
          f"({args.mode}), {result.timings['compute']:.2f} s -> {out}/embeddings.npy, meta.json, tiles.png")
    return 0
