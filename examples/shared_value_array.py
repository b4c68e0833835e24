"""Shared memory (``Value`` and ``Array``), with conveyor.

The standard library's version needs ``multiprocessing.Value('i', 0)`` and ``Array('d', 10)`` created
before the processes start, and their locks cannot be sent to a pool that is already running.
``SharedCounter`` and ``SharedArray`` can be sent anywhere (only a handle travels), lock
themselves, and free their memory when the ``with`` block ends, even on an error.

Run: python examples/shared_value_array.py
"""

from __future__ import annotations

import conveyor


def square_into(squares: conveyor.SharedArray, done: conveyor.SharedCounter, i: int) -> None:
    squares[i] = i * i          # writes straight into the shared array
    done.increment()            # atomic, from any process


def main() -> None:
    with conveyor.SharedCounter() as done, conveyor.SharedArray(10, "float64") as squares:
        with conveyor.Pool(workers=3) as pool:
            # Only handles travel to the workers: a few hundred bytes per task.
            pool.map(square_into, [squares] * 10, [done] * 10, range(10))
        print(f"tasks done: {done.value}")
        print(f"squares: {squares.array.tolist()}")
        assert squares.array.sum() == sum(i * i for i in range(10))


if __name__ == "__main__":
    main()
