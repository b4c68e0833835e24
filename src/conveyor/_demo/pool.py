"""``conveyor demo`` parts: a pool with a progress bar, a pipeline and a work queue.

Each part runs real CPU work (counting primes by trial division), checks the parallel
answer against a serial one and prints what happened. When the pool's speed-up is poor,
``speedup_note`` says why in terms a newcomer can check: how many CPUs this process may
use, and how busy the machine was (its load average).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from typing import Any

from conveyor._pool.progress import progress_mode


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


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def speedup_note(speedup: float, workers: int, cpus: int, machine_cpus: int,
                 load: float) -> str | None:
    """Why a speed-up is below what ``workers`` processes could give, or None if it is not.

    ``cpus`` is what this process may use, ``machine_cpus`` what the machine has, and
    ``load`` the 1-minute load average measured after the run (it includes the demo's own
    workers, so up to ``workers`` of it is ours)."""
    ideal = min(workers, cpus)
    if ideal <= 1 or speedup >= 0.7 * ideal:
        return None
    reasons = []
    if cpus < machine_cpus:
        reasons.append(f"this process may use only {cpus} of the machine's {machine_cpus} CPUs")
    if workers > cpus:
        reasons.append(f"{workers} workers share {cpus} CPUs")
    others = load - min(workers, cpus)
    if others >= 0.5:
        reasons.append(f"the machine is busy: load average {load:.1f} on {machine_cpus} CPUs, "
                       f"so other programs were using about {others:.1f} CPUs")
    if not reasons:
        return (f"below the {ideal}x that {ideal} CPUs allow, though the machine looks idle "
                f"(load average {load:.1f}): the blocks may be too small for the start-up "
                "cost; try a larger --limit")
    return (f"below the {ideal}x that {ideal} CPUs allow because " + "; ".join(reasons)
            + ". The pool is not slower than serial work; the CPUs were shared.")


def _section(title: str) -> None:
    print(f"\n== {title} ==", flush=True)


def demo_pool(workers: int, limit: int, blocks: int) -> None:
    import conveyor as cv

    step = limit // blocks
    work = [(i * step, (i + 1) * step) for i in range(blocks)]
    bars = progress_mode() != "off"

    _section(f"A pool with a progress bar and callbacks: primes below {limit:,} "
             f"in {blocks} blocks")
    t0 = time.perf_counter()
    serial = sum(count_primes(b) for b in work)
    t_serial = time.perf_counter() - t0

    done: list[int] = []
    with cv.Pool(workers, progress=bars) as pool:
        t0 = time.perf_counter()
        parallel = sum(pool.map(count_primes, work, chunksize=1))
        t_pool = time.perf_counter() - t0

        # apply_async with a callback: the callbacks run in the parent, one at a time.
        results = [pool.apply_async(count_primes, (b,), callback=done.append) for b in work[:8]]
        first8 = [r.get(timeout=60) for r in results]

    if parallel != serial or sorted(done) != sorted(first8):
        raise SystemExit("demo: the pool's results differ from the serial results")
    speedup = t_serial / t_pool
    cpus = available_cpus()
    machine = os.cpu_count() or cpus
    print(f"primes found: {parallel:,} (serial agrees)")
    print(f"serial: {t_serial:.2f} s   pool of {workers}: {t_pool:.2f} s   "
          f"speed-up: {speedup:.2f}x with {cpus} CPUs available")
    note = speedup_note(speedup, workers, cpus, machine, os.getloadavg()[0])
    if note:
        print(f"  The speed-up is {note}")
    print(f"apply_async with callback: {len(done)} callbacks ran in the parent")


def _words(n: int) -> Iterator[str]:
    """A slow-ish source: a producer that pauses now and then."""
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

    # The pipeline and work queue draw tqdm bars: only where a bar can be redrawn.
    bars = progress_mode() == "bar"
    _section("A pipeline: producer -> 2 stages of workers -> consumer, ending by itself")
    pipe = (cv.Pipeline(_words(40_000))
            .map(_checksum, workers=workers)
            .filter(_is_small, workers=workers)
            .batch(100))
    batches = pipe.run(progress=bars)
    print(f"{sum(len(b) for b in batches):,} items kept in {len(batches)} batches; "
          "no sentinel, no task_done(), no consumer count")
    print(pipe.stats)

    _section("A work queue: tasks that add tasks, ending when all work is done")
    results = cv.work_queue([(0, 1)], _subtree, workers=workers, progress=bars)
    print(f"{len(results)} tasks ran (a binary tree discovered while running); "
          f"{sum(results):,} primes counted")
