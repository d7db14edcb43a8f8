"""Invalid inputs raise npggml.ShapeError naming the op and the input shapes (and the builder line)."""

from __future__ import annotations

import pytest

import npggml
from npggml.graph.context import Context


def T(ctx, name, ne, dtype="f32"):
    return ctx.input(dtype, ne, name)


def _permuted(ctx, name, ne, axes, dtype="f32"):
    return ctx.permute(T(ctx, name, ne, dtype), *axes)


CASES = {
    # movement
    "reshape_2d of a permuted tensor": lambda c: c.reshape_2d(_permuted(c, "a", (2, 3), (1, 0, 2, 3)), 6, 1),
    "reshape_2d count": lambda c: c.reshape_2d(T(c, "a", (2, 3)), 4, 2),
    "view_2d out of bounds": lambda c: c.view_2d(T(c, "a", (4, 4)), 4, 4, 16, 8),
    "permute not a permutation": lambda c: c.permute(T(c, "a", (2, 3)), 0, 0, 1, 2),
    "concat ne mismatch": lambda c: c.concat(T(c, "a", (2, 3)), T(c, "b", (2, 4)), 0),
    "cont_2d count": lambda c: c.cont_2d(T(c, "a", (2, 3)), 5, 1),
    "get_rows index type": lambda c: c.get_rows(T(c, "a", (4, 5)), T(c, "b", (3,), "f32")),
    # elementwise, reductions, linalg
    "add not broadcastable": lambda c: c.add(T(c, "a", (4, 3)), T(c, "b", (3, 3))),
    "mul_mat inner dims": lambda c: c.mul_mat(T(c, "a", (4, 3)), T(c, "b", (5, 3))),
    "mul_mat batch": lambda c: c.mul_mat(T(c, "a", (4, 3, 2)), T(c, "b", (4, 3, 3))),
    "gelu strided rows": lambda c: c.gelu(_permuted(c, "a", (4, 3), (1, 0, 2, 3))),
    "argmax 3-d": lambda c: c.argmax(T(c, "a", (4, 3, 2))),
    "group_norm groups": lambda c: c.group_norm(T(c, "a", (4, 3, 2)), 0, 1e-5),
    "soft_max mask rows": lambda c: c.soft_max_ext(T(c, "a", (4, 3)), T(c, "m", (4, 2), "f16"), 1.0, 0.0),
    # rope
    "rope positions": lambda c: c.rope_ext(T(c, "a", (8, 2, 5)), T(c, "p", (4,), "i32"), None, 8, 0, 0, 1e4,
                                           1.0, 0.0, 1.0, 0.0, 0.0),
    "rope odd n_dims": lambda c: c.rope_ext(T(c, "a", (8, 2, 5)), T(c, "p", (5,), "i32"), None, 3, 2, 0, 1e4,
                                            1.0, 0.0, 1.0, 0.0, 0.0),
    "rope mode 1": lambda c: c.rope_ext(T(c, "a", (8, 2, 5)), T(c, "p", (5,), "i32"), None, 8, 1, 0, 1e4,
                                        1.0, 0.0, 1.0, 0.0, 0.0),
    "rope_ext with mrope mode": lambda c: c.rope_ext(T(c, "a", (8, 2, 5)), T(c, "p", (20,), "i32"), None, 8, 8,
                                                     0, 1e4, 1.0, 0.0, 1.0, 0.0, 0.0),
    "rope vision n_dims": lambda c: c.rope_multi(T(c, "a", (8, 2, 5)), T(c, "p", (20,), "i32"), None, 8,
                                                 (2, 2, 0, 0), 24, 0, 1e4, 1.0, 0.0, 1.0, 0.0, 0.0),
    "rope mrope positions": lambda c: c.rope_multi(T(c, "a", (8, 2, 5)), T(c, "p", (5,), "i32"), None, 8,
                                                   (2, 2, 0, 0), 8, 0, 1e4, 1.0, 0.0, 1.0, 0.0, 0.0),
    "rope freq factors": lambda c: c.rope_ext(T(c, "a", (8, 2, 5)), T(c, "p", (5,), "i32"), T(c, "f", (2,)), 8,
                                              2, 0, 1e4, 1.0, 0.0, 1.0, 0.0, 0.0),
    # flash attention
    "fa head dims": lambda c: c.flash_attn_ext(T(c, "q", (8, 3, 2)), T(c, "k", (4, 5, 2), "f16"),
                                               T(c, "v", (4, 5, 2), "f16"), None, 1.0, 0.0, 0.0),
    "fa heads": lambda c: c.flash_attn_ext(T(c, "q", (8, 3, 3)), T(c, "k", (8, 5, 2), "f16"),
                                           T(c, "v", (8, 5, 2), "f16"), None, 1.0, 0.0, 0.0),
    "fa mask type": lambda c: c.flash_attn_ext(T(c, "q", (8, 3, 2)), T(c, "k", (8, 5, 2), "f16"),
                                               T(c, "v", (8, 5, 2), "f16"), T(c, "m", (5, 3)), 1.0, 0.0, 0.0),
    "fa mask too small": lambda c: c.flash_attn_ext(T(c, "q", (8, 3, 2)), T(c, "k", (8, 5, 2), "f16"),
                                                    T(c, "v", (8, 5, 2), "f16"), T(c, "m", (5, 2), "f16"), 1.0,
                                                    0.0, 0.0),
    "fa alibi without mask": lambda c: c.flash_attn_ext(T(c, "q", (8, 3, 2)), T(c, "k", (8, 5, 2), "f16"),
                                                        T(c, "v", (8, 5, 2), "f16"), None, 1.0, 8.0, 0.0),
    # convolution and pooling
    "im2col channels": lambda c: c.im2col(T(c, "k", (3, 3, 2, 4)), T(c, "x", (8, 8, 3)), 1, 1, 0, 0, 1, 1, True,
                                          "f16"),
    "im2col too small": lambda c: c.im2col(T(c, "k", (5, 5, 1, 4)), T(c, "x", (3, 3, 1)), 1, 1, 0, 0, 1, 1, True,
                                           "f32"),
    "im2col f32 from f16": lambda c: c.im2col(T(c, "k", (3, 3, 1, 4)), T(c, "x", (8, 8, 1), "f16"), 1, 1, 0, 0,
                                              1, 1, True, "f32"),
    "conv_2d channels": lambda c: c.conv_2d(T(c, "k", (3, 3, 2, 4)), T(c, "x", (8, 8, 3)), 1, 1, 1, 1, 1, 1),
    "conv_2d stride 0": lambda c: c.conv_2d(T(c, "k", (3, 3, 3, 4)), T(c, "x", (8, 8, 3)), 0, 1, 1, 1, 1, 1),
    "conv_2d_dw channels": lambda c: c.conv_2d_dw(T(c, "k", (3, 3, 1, 3)), T(c, "x", (8, 8, 4)), 1, 1, 1, 1, 1,
                                                  1),
    "pool op": lambda c: c.pool_2d(T(c, "x", (8, 8, 3)), 2, 2, 2, 2, 2, 0.0, 0.0),
    "pool too small": lambda c: c.pool_2d(T(c, "x", (2, 2, 3)), 1, 3, 3, 1, 1, 0.0, 0.0),
    # resampling and SAM
    "interpolate type": lambda c: c.interpolate(T(c, "x", (4, 4), "f16"), 8, 8, 1, 1, 1),
    "interpolate mode": lambda c: c.interpolate(T(c, "x", (4, 4)), 8, 8, 1, 1, 3),
    "interpolate antialias nearest": lambda c: c.interpolate(T(c, "x", (4, 4)), 8, 8, 1, 1, 512),
    "win_part ne3": lambda c: c.win_part(T(c, "x", (4, 6, 6, 2)), 3),
    "win_unpart windows": lambda c: c.win_unpart(T(c, "x", (4, 3, 3, 3)), 6, 6, 3),
    "get_rel_pos length": lambda c: c.get_rel_pos(T(c, "r", (4, 6), "f16"), 3, 3),
    "get_rel_pos qh != kh": lambda c: c.get_rel_pos(T(c, "r", (4, 5), "f16"), 3, 2),
    "add_rel_pos shapes": lambda c: c.add_rel_pos(T(c, "a", (9, 6, 2)), T(c, "pw", (3, 3, 2, 2)),
                                                  T(c, "ph", (3, 2, 3, 2))),
    "arange empty": lambda c: c.arange(5.0, 5.0, 1.0),
}


@pytest.mark.parametrize("what", sorted(CASES))
def test_invalid_inputs_raise_shape_error(what):
    ctx = Context()
    with pytest.raises(npggml.ShapeError) as e:
        CASES[what](ctx)
    msg = str(e.value)
    assert "test_ops_errors.py:" in msg  # the builder line
    op = msg.split("(", 1)[0]
    assert op in msg and op.replace("_", "").isalnum()
    # every tensor input is named with its ne
    inside = msg[len(op) + 1:msg.index(") at ")]
    if inside:
        for part in inside.split(", "):
            assert part == "NULL" or ("{" in part and "}" in part), part


def test_shape_error_message_names_op_and_inputs():
    ctx = Context()
    with pytest.raises(npggml.ShapeError) as e:
        ctx.conv_2d(T(ctx, "kernel", (3, 3, 2, 4)), T(ctx, "image", (8, 8, 3)), 1, 1, 1, 1, 1, 1)
    msg = str(e.value)
    assert msg.startswith("conv_2d(kernel{3,3,2,4} f32, image{8,8,3} f32) at test_ops_errors.py:")
    assert "a.ne2 = 2" in msg and "b.ne2 = 3" in msg
    with pytest.raises(npggml.ShapeError, match=r"flash_attn_ext\(q\{8,3,2\} f32, k\{4,5,2\} f16, "
                                                r"v\{4,5,2\} f16, NULL\)"):
        CASES["fa head dims"](Context())
