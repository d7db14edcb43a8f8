"""npggml.ops."""
