"""Op declarations: importing this package registers every op (see `npggml.ops.registry`)."""

from npggml.ops._cache import use_versioned_cache

use_versioned_cache()  # before any cached kernel is declared (see `npggml.ops._cache`)

# isort: split
from npggml.ops import (  # noqa: F401,E402
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
