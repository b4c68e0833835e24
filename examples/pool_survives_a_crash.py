"""What the usual examples do not show: a worker that dies.

multiprocessing.Pool hangs forever when a worker is killed mid-task (an OOM kill, a
segfault in a C extension). conveyor fails that one task with WorkerLostError, replaces
the worker and delivers every other result.

Run: python examples/pool_survives_a_crash.py
"""

from __future__ import annotations

import os
import signal

import conveyor as cv


def fragile(x: int) -> int:
    if x == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # stands for the OOM killer
    return x * 10


def main() -> None:
    with cv.Pool(workers=2) as pool:
        futures = [pool.submit(fragile, x) for x in range(6)]
        for x, fut in enumerate(futures):
            try:
                print(f"task {x}: {fut.result(timeout=30)}")
            except cv.WorkerLostError as exc:
                print(f"task {x}: lost -> {exc.signal_name}, pid {exc.pid}")
        print("the pool goes on:", pool.map(fragile, [7, 8]))


if __name__ == "__main__":
    main()
