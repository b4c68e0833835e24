"""The ``conveyor`` command.

``conveyor demo`` runs the library's patterns live on real work: a pool with a progress
bar, a pipeline, a work queue, a channel between producers and consumers, shared state,
a team of processes, a batch job that is interrupted and resumed, and a traced pool
written as an HTML report.

``conveyor map``, ``run``, ``status`` and ``results`` run batch jobs from the shell with a
journal, so a job that is stopped resumes where it stopped.

Usage errors are one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: ``conveyor demo: error: ...``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def whole_number(text: str, minimum: int) -> int:
    """``text`` as an int of at least ``minimum``, or an argparse error saying why."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(
            f"must be at least 1, got {value}" if minimum == 1 else
            f"must be {minimum} or more, got {value}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    return whole_number(text, 1)


def build_parser() -> Parser:
    from conveyor import __version__

    parser = Parser(prog="conveyor", description=(__doc__ or "").replace("``", ""),
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"conveyor {__version__}",
                        help="print the version of conveyor and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=Parser)
    from conveyor._demo.command import add_parser as add_demo_parser

    add_demo_parser(sub, positive_int)
    from conveyor._cli import batch as _batch_cmd

    _batch_cmd.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # Inputs after options (`conveyor map m:f -k a.txt -`): argparse has already
        # filled the positional list, so the inputs it left over are added here.
        stray = [a for a in extra if a.startswith("-") and a != "-"]
        if stray or not hasattr(args, "inputs"):
            sub = getattr(args, "parser", parser)
            sub.error(f"unrecognized arguments: {' '.join(stray or extra)}")
        args.inputs += extra
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for "retry the failures"
    try:
        return int(args.run(args))
    except BrokenPipeError:  # `conveyor results ... | head`: the reader left; not an error
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
