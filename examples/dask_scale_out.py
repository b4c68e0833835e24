"""The same pool code on a Dask cluster: cluster= and use_cluster().

Needs the extra: pip install 'conveyor[dask]'. "local" starts a cluster on this
machine; on several machines start `dask scheduler` and `dask worker tcp://HOST:8786`,
then pass cluster="tcp://HOST:8786" instead.

What stays as it is locally: a task that kills its process fails alone
(WorkerLostError) and the Dask worker goes on; task_timeout stops a task that runs too
long; the results come back in order.

Run: python examples/dask_scale_out.py
"""

from __future__ import annotations

import os
import signal
import time

import conveyor as cv


def fragile(x: int) -> int:
    if x == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # stands for a segfault in a C extension
    if x == 5:
        time.sleep(60)  # stands for a task that hangs
    return x * 10


def third_party(data: list[int]) -> int:
    """Code you do not control, which makes its own pool."""
    with cv.Pool(2) as pool:
        return sum(pool.map(abs, data))


def main() -> None:
    with cv.use_cluster("local") as client:
        print(f"cluster: {len(client.nthreads())} Dask workers")
        with cv.Pool(task_timeout=2) as pool:  # on the cluster: made inside use_cluster
            for x, fut in enumerate([pool.submit(fragile, x) for x in range(8)]):
                try:
                    print(f"task {x}: {fut.result(timeout=60)}")
                except cv.WorkerLostError as exc:
                    print(f"task {x}: lost -> {exc.signal_name}")
                except cv.TaskTimeoutError:
                    print(f"task {x}: stopped after 2 s")
            print("in order:", pool.map(fragile, [6, 7, 8]))
        print("a library's own pool ran there too:", third_party(list(range(-5, 5))))


if __name__ == "__main__":
    main()
