"""conveyor on a Dask cluster vs Dask's own ways to run many tasks (issue 12).

One LocalCluster of 2 worker processes with 1 thread each serves every contender, in
this interpreter; each contender runs a warm-up call first, then is timed ``reps``
times (best and median). Pool start-up is excluded and reported on its own line.

    python benchmarks/bench_dask.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, table, versions, write_result


def square(x: int) -> int:
    return x * x


def busy_10ms(x: int) -> int:
    end = time.perf_counter() + 0.010
    while time.perf_counter() < end:
        pass
    return x


def chunk_of(fn: Callable[[int], int], xs: list[int]) -> list[int]:
    return [fn(x) for x in xs]


def timed(run: Callable[[], Any], expect: Any, reps: int) -> tuple[float, float]:
    assert run() == expect  # warm-up, and the answer is right
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - t0)
        assert out == expect
    return min(times), statistics.median(times)


def contenders(client: Any, pool: Any, local: Any, fn: Callable[[int], int], n: int
               ) -> list[tuple[str, str, Callable[[], Any]]]:
    items = list(range(n))
    per_chunk = max(1, n // 8)  # 8 chunks: 4 per Dask thread

    def client_map() -> list[int]:
        return list(client.gather(client.map(fn, items, pure=False)))

    def client_map_chunked() -> list[int]:
        parts = [items[i:i + per_chunk] for i in range(0, n, per_chunk)]
        futures = client.map(chunk_of, [fn] * len(parts), parts, pure=False)
        return [x for part in client.gather(futures) for x in part]

    rows = [
        ("conveyor.Pool(cluster=client)", "map", lambda: pool.map(fn, items)),
        ("distributed.Client", "map + gather, one task per item", client_map),
        ("distributed.Client", f"map + gather, chunked by hand ({per_chunk} items)",
         client_map_chunked),
    ]
    try:
        import joblib

        def joblib_dask() -> list[int]:
            with joblib.parallel_backend("dask"):
                return list(joblib.Parallel()(joblib.delayed(fn)(x) for x in items))

        rows.append(("joblib", "Parallel, dask backend, batch_size='auto'", joblib_dask))
    except ImportError:
        pass
    rows.append(("conveyor.Pool(2), local", "map", lambda: local.map(fn, items)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    reps = 1 if args.quick else 3
    try:
        import distributed
    except ImportError:  # run_all.py runs every script; this one needs the dask extra
        print("skipped: distributed is not installed (pip install -e '.[dask]')")
        return

    import conveyor as cv

    out = ["## Dask cluster mode", "",
           f"Machine: {machine()}.", "",
           f"Versions: {versions(['conveyor', 'distributed', 'joblib'])}.", "",
           "Command: `python benchmarks/bench_dask.py`. One `LocalCluster` of 2 worker "
           "processes with 1 thread each, in the benchmark's interpreter; each contender "
           f"runs once to warm up, then {reps} timed repetition(s) (best and median). "
           "Pool start-up is excluded from the tables.", ""]
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        t0 = time.perf_counter()
        pool = cv.Pool(cluster=client)
        started = time.perf_counter() - t0
        local = cv.Pool(2)
        try:
            n = 2000
            rows = []
            results = []
            for lib, call, run in contenders(client, pool, local, square, n):
                best, median = timed(run, [x * x for x in range(n)], reps)
                results.append((lib, call, best, median))
            ours = results[0][2]
            for lib, call, best, median in results:
                rows.append([lib, call, f"{best:.3f}", f"{median:.3f}",
                             f"{best / ours:.1f}x"])
            out += ["### 1. 2,000 trivial tasks (`x * x`)", "",
                    f"Start-up of `Pool(cluster=client)` (worker plugin, a conveyor pool "
                    f"on each Dask worker): {started:.2f} s.", "",
                    table(["library", "call", "s (best)", "s (median)",
                           "this ÷ conveyor-on-Dask"], rows), ""]
            n = 400
            ideal = n * 0.010 / 2
            rows = []
            for lib, call, run in contenders(client, pool, local, busy_10ms, n):
                best, median = timed(run, list(range(n)), reps)
                rows.append([lib, call, f"{best:.3f}", f"{median:.3f}",
                             f"{ideal / best:.0%}"])
            out += ["### 2. 400 tasks of 10 ms (a busy loop)", "",
                    f"Ideal: serial time / 2 = {ideal:.2f} s; efficiency = ideal / best.", "",
                    table(["library", "call", "s (best)", "s (median)", "efficiency"], rows),
                    ""]
        finally:
            pool.close()
            pool.join()
            local.close()
            local.join()
    text = "\n".join(out)
    print(text)
    write_result("dask", text)


if __name__ == "__main__":
    main()
