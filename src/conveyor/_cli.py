"""The ``conveyor`` command.

``conveyor demo`` runs the seed tutorial's patterns, live, on real work.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any


def count_primes(block: tuple[int, int]) -> int:
    """Count the primes in [lo, hi) by trial division: honest CPU work for the demo."""
    lo, hi = block
    count = 0
    for n in range(max(lo, 2), hi):
        if n % 2 == 0:
            count += n == 2
            continue
        limit = math.isqrt(n)
        d = 3
        while d <= limit and n % d:
            d += 2
        count += d > limit
    return count


def _section(title: str) -> None:
    print(f"\n== {title} ==", flush=True)


def demo_pool(workers: int, limit: int, blocks: int) -> None:
    import conveyor as cv

    step = limit // blocks
    work = [(i * step, (i + 1) * step) for i in range(blocks)]

    _section(f"Pool + progress bar (seed 6-7): primes below {limit:,} in {blocks} blocks")
    t0 = time.perf_counter()
    serial = sum(count_primes(b) for b in work)
    t_serial = time.perf_counter() - t0

    done: list[int] = []
    with cv.Pool(workers, progress=True) as pool:
        t0 = time.perf_counter()
        parallel = sum(pool.map(count_primes, work, chunksize=1))
        t_pool = time.perf_counter() - t0

        # apply_async + callback, as the seed does it: callbacks run in the parent.
        results = [pool.apply_async(count_primes, (b,), callback=done.append) for b in work[:8]]
        first8 = [r.get(timeout=60) for r in results]

    if parallel != serial or sorted(done) != sorted(first8):
        raise SystemExit("demo: the pool's results differ from the serial results")
    print(f"primes found: {parallel:,} (serial agrees)")
    print(f"serial: {t_serial:.2f} s   pool of {workers}: {t_pool:.2f} s   "
          f"speed-up: {t_serial / t_pool:.2f}x on {os.cpu_count()} CPUs")
    print(f"apply_async with callback: {len(done)} callbacks ran in the parent")


def _words(n: int):  # type: ignore[no-untyped-def]
    """A slow-ish source: the seed's producer that pauses now and then."""
    for i in range(n):
        if i % 2000 == 0:
            time.sleep(0.02)
        yield f"item-{i}"


def _checksum(word: str) -> int:
    return sum(word.encode()) * 2654435761 % 1000


def _is_small(n: int) -> bool:
    return n < 500


def _subtree(node: tuple[int, int], add: Any) -> int:
    depth, ident = node
    if depth < 7:
        add((depth + 1, ident * 2))
        add((depth + 1, ident * 2 + 1))
    return count_primes((ident * 50, ident * 50 + 50))


def demo_pipeline(workers: int) -> None:
    import conveyor as cv

    _section("Pipeline (seed 1 + 5): producer -> 2 stages -> consumer, ending by itself")
    pipe = (cv.Pipeline(_words(40_000))
            .map(_checksum, workers=workers)
            .filter(_is_small, workers=workers)
            .batch(100))
    batches = pipe.run(progress=True)
    print(f"{sum(len(b) for b in batches):,} items kept in {len(batches)} batches; "
          "no sentinel, no task_done(), no consumer count")
    print(pipe.stats)

    _section("Work queue (seed 5): tasks that add tasks, ending when all work is done")
    results = cv.work_queue([(0, 1)], _subtree, workers=workers, progress=True)
    print(f"{len(results)} tasks ran (a binary tree discovered while running); "
          f"{sum(results):,} primes counted")


# Each capability that lands adds its seed pattern here: (module, title).
_OTHER_DEMOS = [
    ("conveyor._demo_channel", "Channel: the seed's bounded buffer, 2 producers -> 3 consumers"),
    ("conveyor._demo_shared", "Shared state and teams"),
]


def demo(args: argparse.Namespace) -> int:
    print(f"conveyor demo: Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    demo_pool(args.workers, args.limit, args.blocks)
    demo_pipeline(args.workers)
    for module_name, title in _OTHER_DEMOS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            continue
        _section(title)
        module.run()
    print("\nAll demos finished.")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="conveyor", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="run the seed's patterns live on real work")
    p_demo.add_argument("-j", "--workers", type=int, default=os.cpu_count() or 2)
    p_demo.add_argument("--limit", type=int, default=2_000_000, help="count primes below this")
    p_demo.add_argument("--blocks", type=int, default=60)
    p_demo.set_defaults(run=demo)
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
