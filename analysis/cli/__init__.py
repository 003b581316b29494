"""Command line: ``python -m analysis <command>``. Bad input exits 2 with one line on stderr."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from analysis.cli import attention, evaluate, pruning, task_vectors
from analysis.cli.common import EXIT_BAD_INPUT, OneLineParser, quiet_libraries
from analysis.errors import PrunescopeError

__all__ = ["build_parser", "main"]


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="python -m analysis", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    evaluate.register(commands)
    pruning.register(commands)
    task_vectors.register(commands)
    attention.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "quiet", True):
            quiet_libraries()
        return args.run(args)
    except PrunescopeError as exc:
        print(f"prunescope: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("prunescope: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the CLI's one error boundary: one line, exit 2 (--debug: the traceback)
        if args.debug:
            raise
        if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":  # torch's (CUDA) OOM
            print("prunescope: error: out of memory; use fewer prompts, a smaller batch size or a smaller model",
                  file=sys.stderr)
        else:
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            print(f"prunescope: error: unexpected {type(exc).__name__}{': ' + first if first else ''} (run with "
                  "--debug for the traceback)", file=sys.stderr)
        return EXIT_BAD_INPUT
