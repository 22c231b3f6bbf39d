"""Command line: `onnxmerge IN OUT --speedup X`, and `inspect`, `fuse`, `profile`, `demo`,
`finetune`.

Parsing and printing only (cli.commands); the work is in onnxmerge.api. Every user error is
one line on stderr and exit code 2; a bug is one line and exit code 1 (ONNXMERGE_DEBUG=1
for the traceback); Ctrl-C is exit code 130 with what was measured kept in the caches.
"""

from __future__ import annotations

import os
import sys

from onnxmerge.errors import OnnxMergeError


def main(argv: list[str] | None = None) -> int:
    """Run one command line; return the exit code."""
    from onnxmerge.cli.commands import COMMANDS, cmd_compress

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        command = COMMANDS.get(argv[0]) if argv else None
        return command(argv[1:]) if command else cmd_compress(argv)
    except OnnxMergeError as exc:
        print(f"onnxmerge: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `onnxmerge inspect m.onnx | head`: the reader has gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("onnxmerge: interrupted (cached measurements are kept)", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one line unless debugging
        if os.environ.get("ONNXMERGE_DEBUG"):
            raise
        print(
            f"onnxmerge: internal error: {type(exc).__name__}: {exc} "
            "(set ONNXMERGE_DEBUG=1 for a traceback and please report it)",
            file=sys.stderr,
        )
        return 1
