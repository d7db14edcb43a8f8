"""Command-line tools: one module per `npggml` subcommand."""
