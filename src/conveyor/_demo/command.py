"""``conveyor demo``: its options, and its parts run in order.

Each part lives in a module of this package (``pool`` also holds the pipeline and work
queue parts) and is imported only when it runs, so ``conveyor demo --only pool`` loads
no channel or shared-state code.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

DEMO_PARTS = ("pool", "pipeline", "channel", "shared", "batch", "trace")


def _channel() -> None:
    from conveyor._demo import channel

    print("\n== A channel: producer-consumer with a bounded buffer, 2 producers -> 3 consumers"
          " ==", flush=True)
    channel.run()


def _shared() -> None:
    from conveyor._demo import shared

    print("\n== Shared state and teams ==", flush=True)
    shared.run()


def _batch() -> None:
    from conveyor._demo import batch

    print("\n== A batch job from the shell, interrupted and resumed ==", flush=True)
    batch.run()


def _trace() -> None:
    from conveyor._demo import trace

    print("\n== A trace: where a pool's time went, as an HTML report ==", flush=True)
    trace.run()


_OTHER_DEMOS: list[tuple[str, Callable[[], None]]] = [
    ("channel", _channel), ("shared", _shared), ("batch", _batch), ("trace", _trace),
]


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
    for name, run in _OTHER_DEMOS:
        if name in parts:
            run()
    print("\nAll demos finished.")
    return 0


def add_parser(sub: Any, positive_int: Callable[[str], int]) -> None:
    """Add ``demo`` to the command's subparsers ``sub``."""
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
