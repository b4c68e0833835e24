"""A pool of workers, apply_async, close/join, results via .get().

The usual example squares numbers in a multiprocessing.Pool; this one does the same
with conveyor.Pool, which also takes lambdas and re-raises task errors with the worker's
traceback.

Run: python examples/pool_apply_async.py
"""

from __future__ import annotations

import os
import time

import conveyor as cv


def slow_square(x: int) -> tuple[int, int, int]:
    time.sleep(0.05)  # stands for real work
    return x, x * x, os.getpid()


def main() -> None:
    pool = cv.Pool(workers=2)
    results = [pool.apply_async(slow_square, (i,)) for i in range(10)]
    pool.close()  # no more tasks; workers leave once the queue is done
    pool.join()
    for res in results:
        x, square, pid = res.get(timeout=10)
        print(f"{x}^2 = {square:3d}   (worker pid {pid})")

    # The same with the Executor interface, and a lambda the standard Pool cannot send.
    with cv.Pool(workers=2) as pool:
        futures = [pool.submit(lambda v: v + 100, i) for i in range(3)]
        print("lambdas:", [f.result() for f in futures])
        try:
            pool.apply(int, ("not a number",))
        except ValueError as exc:
            print("task error re-raised in the parent:", exc)


if __name__ == "__main__":
    main()
