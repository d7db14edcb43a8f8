"""Optional: npggml's reference kernels against a real ggml CPU build, on the random cases of tests/strategies.py.

Skipped unless NPGGML_GGML_BUILD (or NPGGML_GGML_LIB + NPGGML_GGML_INCLUDE) is set; see tests/ggml_ref.py.
Ops in BIT_EXACT must match ggml bit for bit (as built here: x86-64, -march=native with FMA and AVX-512, GCC's
default FP contraction, one thread); the mul_mat-based ones only to float32 summation-order tolerance.
"""

from __future__ import annotations

import ggml_ref
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import STRATEGIES, run_case, src_values

from npggml.graph.interp import f32_to_bf16

pytestmark = pytest.mark.skipif(ggml_ref.available() is not None, reason=str(ggml_ref.available()))


def _rope_args(p, multi):
    fl = [p["freq_base"], p["freq_scale"], p["ext_factor"], p["attn_factor"], p["beta_fast"], p["beta_slow"]]
    if multi:
        return [p["n_dims"], *p["sections"], p["mode"], p["n_ctx_orig"]], fl
    return [p["n_dims"], p["mode"], p["n_ctx_orig"]], fl


def _geo(p):
    return [p["s0"], p["s1"], p["p0"], p["p1"], p["d0"], p["d1"]]


HARNESS = {  # op -> params -> (ints, floats)
    "rope_ext": lambda p: _rope_args(p, False),
    "rope_multi": lambda p: _rope_args(p, True),
    "flash_attn_ext": lambda p: ([], [p["scale"], p["max_bias"], p["logit_softcap"]]),
    "im2col": lambda p: ([*_geo(p), int(p["is_2D"]), int(p["dst_type"] == "f16")], []),
    "conv_2d": lambda p: (_geo(p), []),
    "conv_2d_dw": lambda p: (_geo(p), []),
    "pool_2d": lambda p: ([p["op"], p["k0"], p["k1"], p["s0"], p["s1"]], [p["p0"], p["p1"]]),
    "interpolate": lambda p: ([p["ne0"], p["ne1"], p["ne2"], p["ne3"], p["mode"]], []),
    "win_part": lambda p: ([p["w"]], []),
    "win_unpart": lambda p: ([p["w0"], p["h0"], p["w"]], []),
    "get_rel_pos": lambda p: ([p["qh"], p["kh"]], []),
    "add_rel_pos": lambda p: ([], []),
    "arange": lambda p: ([], [p["start"], p["stop"], p["step"]]),
    "group_norm": lambda p: ([p["n_groups"]], [p["eps"]]),
    "argmax": lambda p: ([], []),
    "soft_max_ext": lambda p: ([], [p["scale"], p["max_bias"]]),
    "norm": lambda p: ([], [p["eps"]]),
    "rms_norm": lambda p: ([], [p["eps"]]),
    "sum_rows": lambda p: ([], []),
    "mean": lambda p: ([], []),
    "scale": lambda p: ([], [p["s"]]),
    "mul_mat": lambda p: ([], []),
    "swiglu": lambda p: ([int(p["swapped"])], []),
    "geglu": lambda p: ([int(p["swapped"])], []),
    "concat": lambda p: ([p["dim"]], []),
    "pad_ext": lambda p: ([p[k] for k in ("lp0", "rp0", "lp1", "rp1", "lp2", "rp2", "lp3", "rp3")], []),
    "repeat_4d": lambda p: ([p["ne0"], p["ne1"], p["ne2"], p["ne3"]], []),
    "clamp": lambda p: ([], [p["min"], p["max"]]),
    **{b: (lambda p: ([], [])) for b in ("add", "sub", "mul", "div", "swiglu_split", "geglu_split", "get_rows",
                                         "sqr", "sqrt", "relu", "add1")},
    **{u: (lambda p: ([], [])) for u in ("gelu", "gelu_erf", "gelu_quick", "silu", "tanh", "sigmoid", "exp")},
}
TOLERANCE = {"conv_2d", "conv_2d_dw", "mul_mat"}  # float32 sums in another order (ggml's GEMM kernels)
BIT_EXACT = sorted(set(HARNESS) - TOLERANCE)
F32_ONLY = {"gelu", "gelu_erf", "gelu_quick", "silu", "tanh", "sigmoid", "exp", "scale", "relu", "sqr", "sqrt",
            "clamp", "add1", "swiglu", "geglu", "swiglu_split", "geglu_split", "add", "sub", "mul", "div"}


def _ggml_inputs(case):
    out = []
    for s, v in zip(case.srcs, src_values(case)):
        if s is None:
            out.append(None)
        elif s.dtype == "bf16":
            out.append(ggml_ref.as_bf16(f32_to_bf16(v.astype(np.float32)).reshape(v.shape)))
        else:
            out.append(np.ascontiguousarray(v))
    return out


def _skip(op, case) -> bool:
    if op in F32_ONLY and any(s is not None and s.dtype != "f32" for s in case.srcs):
        return True  # f16/bf16 activations have their own scalar paths in ggml (not covered here)
    if op == "interpolate" and case.params["mode"] & 0xFF == 2 and case.params["mode"] & 512:
        return True  # npggml's antialiased bicubic extension: ggml rejects it
    return False


@pytest.mark.parametrize("op", sorted(HARNESS))
@given(data=st.data())
def test_matches_ggml(op, data):
    case = data.draw(STRATEGIES[op]())
    if _skip(op, case):
        return
    node, ours = run_case(case, "ggml")
    ints, floats = HARNESS[op](case.params)
    theirs = ggml_ref.run(op, _ggml_inputs(case), ints, floats)
    theirs = theirs.reshape(ours.shape)
    if op in TOLERANCE:
        scale = max(1.0, float(np.abs(theirs.astype(np.float64)).max()))
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6 * scale)
    else:
        np.testing.assert_array_equal(ours.view(np.uint8), theirs.astype(ours.dtype).view(np.uint8))


def test_tiled_flash_attention_matches_ggml():
    """n_q >= 64: ggml's tiled flash-attention path (not reached by the small random cases)."""
    from strategies import values

    rng = np.random.default_rng(11)
    for kt, (nq, nkv, d) in [("f16", (70, 150, 32)), ("f32", (64, 64, 16)), ("f32", (66, 130, 24))]:
        q = values(1, (d, nq, 2, 1), "f32")
        k, v = values(2, (d, nkv, 1, 1), kt), values(3, (d, nkv, 1, 1), kt)
        m = values(4, (nkv, nq, 1, 1), "f16")
        m[rng.random(m.shape) < 0.2] = -np.inf
        m[0, 0, 5] = -np.inf
        from strategies import Case, Src

        case = Case("flash_attn_ext", [Src(q, "f32"), Src(k, kt), Src(v, kt), Src(m, "f16")],
                    {"scale": 0.2, "max_bias": 0.0, "logit_softcap": 0.0})
        _, ours = run_case(case)
        theirs = ggml_ref.run("flash_attn_ext", [q, k, v, m], [], [0.2, 0.0, 0.0]).reshape(ours.shape)
        np.testing.assert_array_equal(ours, theirs)
