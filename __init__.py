"""npggml: a ggml-style compute-graph interpreter for llama.cpp mmproj encoders."""

from npggml.errors import GGUFError, ImageError, KernelError, NpggmlError, ShapeError

__all__ = ["NpggmlError", "ShapeError", "KernelError", "GGUFError", "ImageError", "eval_op", "debug"]


def __getattr__(name):  # lazy: importing npggml must stay cheap for the CLI
    if name == "eval_op":
        from npggml.ops.eager import eval_op

        return eval_op
    if name == "debug":  # `with npggml.debug(3): ...`: the verbosity ladder (npggml.graph.debug)
        from npggml.graph.debug import debug

        return debug
    raise AttributeError(name)
