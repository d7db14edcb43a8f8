"""npggml: encode pages with llama.cpp mmproj GGUFs (DeepSeek-OCR v1/v2) and debug the graph op by op.

The console entry point. Each subcommand lives in its own module under `npggml.tools` and exposes
`register(subparsers)`, which adds its parser and sets `func(args) -> int`.
User errors (`NpggmlError`) become one line on stderr and exit status 2. A reader that stops early
(`npggml graph ... | head`) ends the command quietly with status 141, as if SIGPIPE had killed it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from npggml.errors import NpggmlError
from npggml.ops.malloc import retain_freed_memory

SUBCOMMANDS = ["encode", "inspect", "make_gguf", "graph", "trace", "compare", "bench"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's default prints usage; keep it to one line and exit 2
        sys.stderr.write(f"npggml: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="npggml", description=__doc__.splitlines()[0])
    parser.add_argument("--malloc", choices=["retain", "default"], default="retain",
                        help="retain (default): keep freed memory in the process for the kernels' temporaries "
                             "(glibc: no mmap'd chunks, no trimming; npggml.ops.malloc); default: glibc's policy")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in SUBCOMMANDS:
        importlib.import_module(f"npggml.tools.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.malloc == "retain":
        retain_freed_memory()
    try:
        rc = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows up here, not in the interpreter's flush at exit
        return rc
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more reaches the closed pipe
        return 141
    except NpggmlError as e:
        sys.stderr.write(f"npggml: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("npggml: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
