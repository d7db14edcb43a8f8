"""npggml.preprocess."""
