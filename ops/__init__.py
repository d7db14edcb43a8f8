"""Op declarations: importing this package registers every op (see `npggml.ops.registry`)."""

from npggml.ops import (  # noqa: F401
    attention,
    conv,
    elementwise,
    interpolate,
    linalg,
    misc,
    movement,
    reduce,
    rope,
    sam,
)

# isort: split
from npggml.ops import fast  # noqa: F401,E402  (fast kernels and fused ops; imported last)
