"""npggml.graph."""
