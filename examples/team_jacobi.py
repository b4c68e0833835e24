"""A team runs a heat-diffusion (Jacobi) simulation on a SharedArray, in lock-step.

Each member owns a band of rows of the grid. Every step it computes its band of the next
grid from the current one, then waits at ``ctx.barrier()`` so no one reads a grid that is
still being written. The two grids are ``SharedArray`` s: no data is copied between
processes, only the barrier's small messages. Every 25 steps the members agree on the
largest change with ``ctx.allreduce(..., op="max")``.

Run: python examples/team_jacobi.py
"""

from __future__ import annotations

import os
import time

import numpy as np

import conveyor

N = 1200        # grid is N x N
STEPS = 150


def jacobi(ctx: conveyor.TeamContext, a: conveyor.SharedArray, b: conveyor.SharedArray) -> float:
    src, dst = a.array, b.array
    band = ctx.block(N - 2)                      # interior rows this member computes
    r0, r1 = band.start + 1, band.stop + 1
    change = 0.0
    for step in range(STEPS):
        dst[r0:r1, 1:-1] = 0.25 * (
            src[r0 - 1 : r1 - 1, 1:-1] + src[r0 + 1 : r1 + 1, 1:-1]
            + src[r0:r1, :-2] + src[r0:r1, 2:]
        )
        if step % 25 == 24:
            local = float(np.abs(dst[r0:r1] - src[r0:r1]).max()) if r1 > r0 else 0.0
            change = ctx.allreduce(local, op="max")
        ctx.barrier()                            # everyone finished this step
        src, dst = dst, src
    return change


def simulate(members: int) -> tuple[float, float, float]:
    with conveyor.SharedArray((N, N)) as a, conveyor.SharedArray((N, N)) as b:
        for g in (a, b):
            g[0, :] = 100.0                      # a hot top edge; the others stay at 0
        start = time.perf_counter()
        changes = conveyor.team(members, jacobi, a, b)
        seconds = time.perf_counter() - start
        final = a if STEPS % 2 == 0 else b
        return seconds, changes[0], float(final.array[1:-1, 1:-1].mean())


def main() -> None:
    members = max(2, min(4, os.cpu_count() or 2))
    t1, _, mean1 = simulate(1)
    tn, changen, meann = simulate(members)
    assert abs(mean1 - meann) < 1e-9, (mean1, meann)   # same physics, any team size
    print(f"{N}x{N} grid, {STEPS} steps; mean interior temperature {meann:.4f}, "
          f"last change {changen:.2e}")
    print(f"1 process: {t1:.2f} s   {members} processes: {tn:.2f} s   "
          f"speed-up: {t1 / tn:.2f}x on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
