"""``conveyor demo`` part: shared state, live.

1. A shared struct updated by four processes at once, with a progress bar the parent drives
   by reading the struct (no messages: the struct *is* the progress).
2. A team of processes running a heat-diffusion (Jacobi) simulation on two SharedArrays,
   one barrier per step, timed against a team of one.

Run: ``python -c "from conveyor._demo.shared import run; run()"``.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from typing import Annotated, Any

from conveyor._pool.progress import make_bar
from conveyor._shared.arrays import SharedArray
from conveyor._shared.structs import SharedStruct
from conveyor._team.team import TeamContext, team

TASKS_PER_WORKER = 3000
WORKERS = 4
GRID = 1500
STEPS = 150


class Progress(SharedStruct):
    done: int
    busy_seconds: float
    largest: int
    last_worker: Annotated[str, 24] = "-"


def _worker(progress: Progress, name: str) -> None:
    for i in range(TASKS_PER_WORKER):
        t = time.perf_counter()
        value = sum(range(10_000 + i % 1000))  # a little work per task
        with progress.lock:  # several fields change together
            progress.done += 1
            progress.busy_seconds += time.perf_counter() - t
            if value > progress.largest:
                progress.largest = value
            progress.last_worker = name


def _jacobi(ctx: TeamContext, a: SharedArray, b: SharedArray, show: bool) -> float:
    src, dst = a.array, b.array
    rows = ctx.block(GRID - 2)
    r0, r1 = rows.start + 1, rows.stop + 1
    bar: Any = None
    if show and ctx.rank == 0:
        bar = make_bar(total=STEPS, desc=f"  Jacobi, {ctx.size} process{'es' if ctx.size > 1 else ''}",
                   unit="step", leave=True)
    for _ in range(STEPS):
        dst[r0:r1, 1:-1] = 0.25 * (
            src[r0 - 1 : r1 - 1, 1:-1] + src[r0 + 1 : r1 + 1, 1:-1]
            + src[r0:r1, :-2] + src[r0:r1, 2:]
        )
        ctx.barrier()
        src, dst = dst, src
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    return float(src[r0:r1, 1:-1].sum())


def _simulate(members: int) -> tuple[float, float]:
    with SharedArray((GRID, GRID)) as a, SharedArray((GRID, GRID)) as b:
        a[0, :] = b[0, :] = 100.0
        start = time.perf_counter()
        sums = team(members, _jacobi, a, b, True)
        return time.perf_counter() - start, sum(sums)


def run() -> None:
    """Show shared structs and a team, live; takes a few seconds."""
    print("Shared struct: 4 processes update one Progress struct; the bar reads it.")
    with Progress() as progress:
        procs = [
            multiprocessing.Process(target=_worker, args=(progress, f"worker-{i}"))
            for i in range(WORKERS)
        ]
        total = WORKERS * TASKS_PER_WORKER
        with make_bar(total=total, desc="  tasks", unit="task") as bar:
            for p in procs:
                p.start()
            while any(p.is_alive() for p in procs):
                bar.update(progress.done - bar.n)
                time.sleep(0.05)
            for p in procs:
                p.join()
            bar.update(progress.done - bar.n)
        print(f"  {progress}")
        assert progress.done == total

    print(f"\nTeam: heat diffusion on a {GRID}x{GRID} SharedArray, a barrier per step.")
    members = max(2, min(4, os.cpu_count() or 2))
    t1, s1 = _simulate(1)
    tn, sn = _simulate(members)
    same = "same result" if abs(s1 - sn) <= 1e-9 * abs(s1) else "DIFFERENT result"
    print(f"  1 process {t1:.2f} s, {members} processes {tn:.2f} s: "
          f"speed-up {t1 / tn:.2f}x ({same}, {os.cpu_count()} cores)")
    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1):
        print(f"  (other work is running: load average {load:.1f}, so the speed-up is smaller)")


if __name__ == "__main__":
    run()
