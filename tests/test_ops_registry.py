"""Every registered op: a strategy exists, and the node built by the shape rule agrees with its reference
kernel's output (shape and dtype kind), on random valid inputs including non-contiguous ones."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import STRATEGIES, build_case, src_values

from npggml.graph.graph import Graph
from npggml.graph.interp import Interpreter
from npggml.ops import registry

ALL_OPS = sorted(registry.all_ops())


def test_every_registered_op_has_a_strategy():
    missing = sorted(set(ALL_OPS) - set(STRATEGIES))
    assert not missing, f"ops without a Hypothesis strategy in tests/strategies.py: {missing}"


def test_every_heavy_op_has_a_flops_estimate():
    for name in ("mul_mat", "conv_2d", "conv_2d_dw", "flash_attn_ext", "rope_ext", "rope_multi"):
        assert registry.get(name).flops is not None, name


_KIND = {"f32": "f", "f16": "f", "bf16": "f", "i32": "iu"}


@pytest.mark.parametrize("name", ALL_OPS)
@given(data=st.data())
def test_rule_matches_kernel(name, data):
    case = data.draw(STRATEGIES[name](), label="case")
    node, inputs = build_case(case)
    d = registry.get(name)
    assert node.op == name
    assert node.shape == tuple(reversed(node.ne))
    g = Graph(node)
    it = Interpreter(g, fast=False)
    (out,) = it.run(inputs)
    assert out.shape == node.shape
    if d.view:
        assert d.ref is None and node.is_view
        return
    srcs = src_values(case)  # the interpreter has released its input buffers by now
    with registry.numerics("ggml"):
        res = np.asarray(d.ref(node, *srcs, **node.params))
    assert res.shape == node.shape, f"{name}: kernel shape {res.shape} != rule shape {node.shape}"
    if name != "cast":  # cast's kernel is the identity: the conversion is the interpreter's store
        assert res.dtype.kind in _KIND[node.dtype], f"{name}: kernel dtype {res.dtype} for a {node.dtype} node"
    with registry.numerics("exact"):
        res2 = np.asarray(d.ref(node, *srcs, **node.params))
    assert res2.shape == node.shape
