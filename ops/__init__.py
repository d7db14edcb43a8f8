"""Op declarations: importing this package registers every op (see `npggml.ops.registry`)."""

from npggml.ops import attention, elementwise, linalg, movement, reduce  # noqa: F401
