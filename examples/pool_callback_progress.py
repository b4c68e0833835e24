"""A pool with callbacks: a callback per finished task drives a progress bar.

The usual recipe updates a tqdm bar from apply_async's callback. That works here too (callbacks
run in the parent, on a thread of their own, so a slow callback never idles a worker); and
``progress=True`` does it for you.

Run: python examples/pool_callback_progress.py
"""

from __future__ import annotations

import math

from tqdm import tqdm

import conveyor as cv


def count_primes_below(n: int) -> int:
    return sum(1 for k in range(2, n) if all(k % d for d in range(2, math.isqrt(k) + 1)))


def main() -> None:
    sizes = [20_000 + 1_000 * i for i in range(24)]

    # 1. The usual recipe: apply_async + callback updating a bar.
    results: dict[int, int] = {}
    # The bar is the outer block: the pool's block waits for every task (and callback).
    with tqdm(total=len(sizes), desc="callback") as bar, cv.Pool(workers=2) as pool:

        def done(pair: tuple[int, int]) -> None:
            results[pair[0]] = pair[1]
            bar.update(1)

        for n in sizes:
            pool.apply_async(lambda m: (m, count_primes_below(m)), (n,), callback=done)
    print(f"callback collected {len(results)} results")

    # 2. Built in: a bar per call, total known from the input's length.
    with cv.Pool(workers=2, progress=True) as pool:
        counts = pool.map(count_primes_below, sizes, chunksize=1)
    assert counts == [results[n] for n in sizes]
    print(f"progress=True: same {len(counts)} results; primes below {sizes[-1]}: {counts[-1]}")


if __name__ == "__main__":
    main()
