"""The ``conveyor`` command.

``conveyor demo`` runs the library's patterns live on real work: a pool with a progress
bar, a pipeline, a work queue, a channel between producers and consumers, shared state,
a team of processes, and a batch job that is interrupted and resumed.

``conveyor map``, ``run``, ``status`` and ``results`` run batch jobs from the shell with a
journal, so a job that is stopped resumes where it stopped (``_batch_cmd`` and the
``_batch_*`` modules it uses).

Usage errors are one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

DEMO_PARTS = ("pool", "pipeline", "channel", "shared", "batch")

# Demo parts in their own modules: (name, module, title).
_OTHER_DEMOS = [
    ("channel", "conveyor._demo.channel",
     "A channel: producer-consumer with a bounded buffer, 2 producers -> 3 consumers"),
    ("shared", "conveyor._demo.shared", "Shared state and teams"),
    ("batch", "conveyor._demo.batch", "A batch job from the shell, interrupted and resumed"),
]


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: ``conveyor demo: error: ...``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def demo(args: argparse.Namespace) -> int:
    if args.blocks > args.limit:
        args.parser.error(f"--blocks ({args.blocks}) must not exceed --limit ({args.limit}): "
                          "each block needs at least one number")
    if args.no_progress:
        os.environ["CONVEYOR_PROGRESS"] = "off"
    from conveyor._demo import pool as _demo_pool
    from conveyor._demo.pool import available_cpus

    parts = set(args.only or DEMO_PARTS)
    print(f"conveyor demo: Python {sys.version.split()[0]}, {available_cpus()} of "
          f"{os.cpu_count()} CPUs available, {args.workers} workers")
    if "pool" in parts:
        _demo_pool.demo_pool(args.workers, args.limit, args.blocks)
    if "pipeline" in parts:
        _demo_pool.demo_pipeline(args.workers)
    for name, module_name, title in _OTHER_DEMOS:
        if name not in parts:
            continue
        module = importlib.import_module(module_name)
        print(f"\n== {title} ==", flush=True)
        module.run()
    print("\nAll demos finished.")
    return 0


def build_parser() -> Parser:
    from conveyor import __version__

    parser = Parser(prog="conveyor", description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"conveyor {__version__}",
                        help="print the version of conveyor and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=Parser)
    p_demo = sub.add_parser("demo", help="run the library's patterns live on real work",
                            description="Run the library's patterns live on real CPU work.")
    p_demo.add_argument("-j", "--workers", type=positive_int, metavar="N",
                        default=os.cpu_count() or 2,
                        help="worker processes for the pool, pipeline and work queue "
                             "(default: the number of CPUs, %(default)s)")
    p_demo.add_argument("--limit", type=positive_int, default=2_000_000, metavar="N",
                        help="count the primes below N (default: %(default)s)")
    p_demo.add_argument("--blocks", type=positive_int, default=60, metavar="N",
                        help="split the prime counting into N tasks (default: %(default)s)")
    p_demo.add_argument("--only", action="append", choices=DEMO_PARTS, metavar="PART",
                        help="run only this part (repeatable): " + ", ".join(DEMO_PARTS))
    p_demo.add_argument("--no-progress", action="store_true",
                        help="show no progress bars or progress lines "
                             "(same as CONVEYOR_PROGRESS=off)")
    p_demo.set_defaults(run=demo, parser=p_demo)
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
