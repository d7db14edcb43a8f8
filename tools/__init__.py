"""Command-line tools: `cli` (the entry point), one module per `npggml` subcommand, and `blas_core` (which of
OpenBLAS's kernels to ask for, decided before NumPy loads)."""
