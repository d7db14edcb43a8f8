"""npggml.models."""
