"""LLaVA `mlp` family: loader, make-gguf layout, and the builder against an independent NumPy implementation.

`numpy_llava` is written from the model's math (CLIP ViT-L + LLaVA projector) on weights read with `gguf`
directly, not through npggml's loader or graph: patch embedding as a matrix product over flattened patches,
class token, learned positions, pre-LN, pre-norm attention blocks with quick GELU MLPs, the patch features, and
`mm.2(GELU(mm.0(x)))`. Its llama.cpp variant appends the class token last and runs one layer fewer, as llama.cpp
0c1e57098's graph does.
"""

import math

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize

from npggml.errors import GGUFError
from npggml.graph.interp import Interpreter
from npggml.models.batch import Batch
from npggml.models.encode import Encoder
from npggml.models.gguf_io import load_mmproj
from npggml.models.gguf_synth import make_mmproj, preset_hparams
from npggml.models.llava import Llava, fixed_size_view
from npggml.models.projectors import PROJECTORS


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_mmproj("mlp", "tiny", "f32", 3, tmp_path_factory.mktemp("llava") / "mlp-tiny.gguf")


def read_weights(path) -> tuple[dict[str, np.ndarray], dict]:
    r = gguf.GGUFReader(path)
    w = {t.name: np.asarray(dequantize(t.data, t.tensor_type), np.float64).reshape(t.data.shape)
         for t in r.tensors}
    keys = {f.name: f.contents() for f in r.fields.values() if not f.name.startswith("GGUF.")}
    return w, keys


def layer_norm(x, g, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def gelu_erf(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def numpy_llava(path, pixels: np.ndarray, *, llamacpp: bool) -> np.ndarray:
    """pixels (B, 3, S, S) float32 -> (B, n_patches, proj_dim) float64."""
    w, k = read_weights(path)
    p = int(k["clip.vision.patch_size"])
    n_head = int(k["clip.vision.attention.head_count"])
    eps = float(k["clip.vision.attention.layer_norm_epsilon"])
    n_layer = int(k["clip.vision.block_count"])
    B, _, S, _ = pixels.shape
    g = S // p
    x = pixels.astype(np.float64)
    kernel = w["v.patch_embd.weight"]  # (n_embd, 3, p, p)
    if llamacpp:  # ggml_conv_2d's im2col holds the patches in F16
        x = x.astype(np.float16).astype(np.float64)
    patches = x.reshape(B, 3, g, p, g, p).transpose(0, 2, 4, 1, 3, 5).reshape(B, g * g, 3 * p * p)
    emb = patches @ kernel.reshape(kernel.shape[0], -1).T  # (B, g*g, n_embd), patch index = row * g + col
    cls = np.broadcast_to(w["v.class_embd"], (B, 1, emb.shape[-1]))
    seq = np.concatenate([emb, cls] if llamacpp else [cls, emb], axis=1)
    seq = seq + w["v.position_embd.weight"][: seq.shape[1]]
    h = layer_norm(seq, w["v.pre_ln.weight"], w["v.pre_ln.bias"], eps)
    d = h.shape[-1] // n_head
    for il in range(n_layer - 1 if llamacpp else n_layer):
        b = f"v.blk.{il}."

        def lin(t, name, b=b):
            return t @ w[b + name + ".weight"].T + w[b + name + ".bias"]

        a = layer_norm(h, w[b + "ln1.weight"], w[b + "ln1.bias"], eps)
        q, kk, v = (lin(a, n).reshape(B, -1, n_head, d).transpose(0, 2, 1, 3)
                    for n in ("attn_q", "attn_k", "attn_v"))
        s = q @ kk.transpose(0, 1, 3, 2) / math.sqrt(d)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        h = h + lin((s @ v).transpose(0, 2, 1, 3).reshape(h.shape), "attn_out")
        a = layer_norm(h, w[b + "ln2.weight"], w[b + "ln2.bias"], eps)
        # the legacy converter stores CLIP's fc1 as ffn_down and fc2 as ffn_up
        f = lin(a, "ffn_down")
        h = h + lin(f / (1 + np.exp(-1.702 * f)), "ffn_up")  # quick GELU
    feats = h[:, 1 : g * g + 1]
    y = feats @ w["mm.0.weight"].T + w["mm.0.bias"]
    y = gelu_tanh(y) if llamacpp else gelu_erf(y)
    return y @ w["mm.2.weight"].T + w["mm.2.bias"]


def random_pixels(seed: int, n: int, side: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-2, 2, (n, 3, side, side)).astype(np.float32)


def run_builder(path, mode, pixels, numerics):
    b = Llava(load_mmproj(path), mode)
    bg = b.build_batch(len(pixels), b.image_shape())
    values = dict(bg.inputs)
    values[bg.pixels] = pixels
    outs = Interpreter(bg.graph, numerics=numerics).run(values)
    return np.stack([o.reshape(t.ne[1], t.ne[0]) for o, t in zip(outs, bg.outputs)])


def rel_err(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_reference_mode_equals_numpy_clip_llava(tiny):
    px = random_pixels(1, 3, 56)
    ours = run_builder(tiny, "reference", px, "exact")
    want = numpy_llava(tiny, px, llamacpp=False)
    assert ours.shape == want.shape == (3, 16, 48)
    assert rel_err(ours, want) < 2e-6


def test_llamacpp_mode_equals_numpy_with_llamacpp_layout(tiny):
    """Class token last, one layer fewer, tanh GELU, F16 im2col: the same model math otherwise."""
    px = random_pixels(2, 2, 56)
    ours = run_builder(tiny, "llama.cpp", px, "exact")
    want = numpy_llava(tiny, px, llamacpp=True)
    assert rel_err(ours, want) < 2e-6
    # the deviations are real: the HF-layout result is far from llama.cpp's
    assert rel_err(numpy_llava(tiny, px, llamacpp=False), want) > 1e-2


def test_llamacpp_mode_with_ggml_numerics_tracks_the_math(tiny):
    px = random_pixels(3, 2, 56)
    enc = Encoder(tiny, "llama.cpp")
    batch = Batch(enc)
    from npggml.models.batch import ImageChunk

    chunks = [ImageChunk(p, Llava(enc.model, "llama.cpp").image_shape(), batch.model) for p in px]
    for c in chunks:
        batch.add(c)
    batch.encode()
    ours = np.stack([batch.output(c) for c in chunks])
    assert rel_err(ours, numpy_llava(tiny, px, llamacpp=True)) < 5e-3  # F16 activation rounding in mul_mat


def test_preprocessing_pads_to_a_centred_square():
    img = np.full((30, 90, 3), 200, np.uint8)
    view = fixed_size_view(img, 56, "llama.cpp", (122, 116, 104))
    # 90x30 -> scale 56/90: 56 x ceil(18.67) = 19 rows, centred at y = (56 - 19) // 2 = 18
    rows = np.where((view != (122, 116, 104)).any(axis=(1, 2)))[0]
    assert (rows.min(), rows.max()) == (18, 36)
    assert (view[18:37] == 200).all()


@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
def test_make_gguf_round_trip(tmp_path, dtype):
    path = make_mmproj("mlp", "tiny", dtype, 5, tmp_path / "m.gguf")
    m = load_mmproj(path)
    assert m.projector == "mlp" and m.hparams == preset_hparams("mlp", "tiny")
    assert not m.unused
    specs = PROJECTORS["mlp"].tensors(m.hparams)
    assert [s.name for s in specs] == list(m.weights)
    types = {w.name: w.ggml_type for w in m.weights.values()}
    # the legacy llava converter: patch kernel and projector matrices always F16
    assert types["v.patch_embd.weight"] == types["mm.0.weight"] == types["mm.2.weight"] == "f16"
    assert types["v.blk.0.attn_q.weight"] == dtype
    assert types["v.position_embd.weight"] == ("f16" if dtype == "f16" else "f32")


def test_full_preset_is_llava_15_clip_l_336():
    hp = preset_hparams("mlp", "full")
    specs = PROJECTORS["mlp"].tensors(hp)
    n = sum(math.prod(s.concrete_ne) for s in specs)
    # CLIP ViT-L/14-336 vision model: 303,507,456 parameters with 24 layers and a post-LN; the converter drops
    # the last layer (12,596,224) and the post-LN (2,048); the projector adds 1024*4096+4096 + 4096*4096+4096
    assert n == 303_507_456 - 12_596_224 - 2_048 + 20_979_712
    assert hp.n_patches == 576


def _rewrite(src, dst, extra_keys=(), drop=(), extra_tensors=()):
    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(dst, "clip")
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        if f.types[0] == gguf.GGUFValueType.ARRAY:
            w.add_array(f.name, list(f.contents()))
        else:
            w.add_key_value(f.name, f.contents(), f.types[0])
    for key, value in extra_keys:
        w.add_array(key, value)
    for t in r.tensors:
        if t.name not in drop:
            w.add_tensor(t.name, np.array(t.data), raw_shape=tuple(t.data.shape), raw_dtype=t.tensor_type)
    for name, value in extra_tensors:
        w.add_tensor(name, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def test_unsupported_llava_variants_are_clear_errors(tiny, tmp_path):
    anyres = _rewrite(tiny, tmp_path / "anyres.gguf", [("clip.vision.image_grid_pinpoints", [56, 112, 112, 56])])
    with pytest.raises(GGUFError, match="image_grid_pinpoints is set: LLaVA-1.6"):
        load_mmproj(anyres)
    yi = _rewrite(tiny, tmp_path / "yi.gguf", extra_tensors=[("mm.3.weight", np.zeros((48, 48), np.float32))])
    with pytest.raises(GGUFError, match="mm.3.weight present: the Yi-VL MLP_NORM projector is not supported"):
        load_mmproj(yi)
    with pytest.raises(GGUFError, match="missing tensor v.blk.1.attn_q.weight"):
        load_mmproj(_rewrite(tiny, tmp_path / "missing.gguf", drop=("v.blk.1.attn_q.weight",)))
    assert load_mmproj(_rewrite(tiny, tmp_path / "same.gguf")).projector == "mlp"  # the rewrite keeps a valid file
