"""A 3-stage pipeline of cheap functions over N items: conveyor vs pypeln vs a
hand-written multiprocessing.Queue pipeline with sentinels; and ``work_queue`` with one
handler that adds a million tasks (time and peak memory).

Each contender runs in a fresh interpreter (so peak memory is its own), 2 workers per
stage, all in the same run. Reports items/s and peak RSS (parent and children).

Run: python benchmarks/bench_pipeline.py [--items N] [--tasks N] [--quick]
Writes: benchmarks/results/pipeline.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

# The smoke tests point this elsewhere, so a quick run never overwrites real results.
RESULTS = Path(os.environ.get("CONVEYOR_BENCH_RESULTS") or Path(__file__).parent / "results")


def parse(x: int) -> int:
    return x * 3 + 1


def keep(x: int) -> bool:
    return x % 2 == 0


def finish(x: int) -> int:
    return x // 2


# ----------------------------------------------------------------------- contenders


def run_conveyor(n: int) -> int:
    import conveyor as cv

    pipe = cv.Pipeline(range(n)).map(parse, workers=2).filter(keep, workers=2).map(finish, workers=2)
    return sum(1 for _ in pipe)


def run_pypeln(n: int) -> int:
    import pypeln as pl

    stage = pl.process.map(parse, range(n), workers=2, maxsize=1000)
    stage = pl.process.filter(keep, stage, workers=2, maxsize=1000)
    stage = pl.process.map(finish, stage, workers=2, maxsize=1000)
    return sum(1 for _ in stage)


_DONE = None


def _stage(fn_name: str, inq, outq, n_up: int) -> None:  # type: ignore[no-untyped-def]
    fn = {"parse": parse, "keep": keep, "finish": finish}[fn_name]
    ended = 0
    while True:
        x = inq.get()
        if x is _DONE:
            ended += 1
            if ended == n_up:  # every upstream worker has finished
                break
            continue
        if fn_name == "keep":
            if fn(x):
                outq.put(x)
        else:
            outq.put(fn(x))
    outq.put(_DONE)


def run_mp_queue(n: int) -> int:
    import multiprocessing as mp

    q0, q1, q2, q3 = (mp.Queue(maxsize=1000) for _ in range(4))
    procs = []
    for name, inq, outq, n_up in (("parse", q0, q1, 1), ("keep", q1, q2, 1), ("finish", q2, q3, 1)):
        for _ in range(2):
            p = mp.Process(target=_stage, args=(name, inq, outq, n_up))
            p.start()
            procs.append(p)
    # The source feeds from a thread, as a real program would, so the consumer can drain.
    import threading

    def feed() -> None:
        for i in range(n):
            q0.put(i)
        for _ in range(2):
            q0.put(_DONE)  # one sentinel per first-stage worker: the producer must know

    threading.Thread(target=feed, daemon=True).start()
    # Each worker stops at its first sentinel and passes one on: with equal worker
    # counts per stage, the consumer sees one sentinel per last-stage worker.
    total = ended = 0
    while ended < 2:
        x = q3.get()
        if x is _DONE:
            ended += 1
        else:
            total += 1
    for p in procs:
        p.join()
    return total


def add_tasks(task: int, add) -> int:  # type: ignore[no-untyped-def]
    """A handler that discovers a lot of work at once: task -n adds tasks 0..n-1."""
    if task < 0:
        for i in range(-task):
            add(i)
    return task


def run_work_queue(n: int) -> int:
    import conveyor as cv

    return len(cv.work_queue([-n], add_tasks, workers=2))


CONTENDERS = {"conveyor": run_conveyor, "pypeln (process)": run_pypeln,
              "multiprocessing.Queue + sentinels": run_mp_queue}
# pypeln's process stages move about 1,000 items/s here; a million would take 20 minutes,
# so it runs on fewer items (its rate is flat in N; the table says how many it ran).
CAP = {"pypeln (process)": 20_000}


def child(name: str, n: int) -> None:
    import resource

    start = time.perf_counter()
    total = run_work_queue(n) if name == "work_queue" else CONTENDERS[name](n)
    elapsed = time.perf_counter() - start
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"total": total, "seconds": elapsed, "rss_parent_mb": own / 1024,
                      "rss_child_max_mb": kids / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--child", nargs=2)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    n = 50_000 if args.quick else args.items
    repeat = 1 if args.quick else args.repeat
    rows = []
    best: dict[str, dict[str, float]] = {}
    for _ in range(repeat):  # interleaved, so machine noise hits everyone alike
        for name in CONTENDERS:
            items = min(n, CAP.get(name, n))
            expected = sum(1 for x in range(items) if keep(parse(x)))
            out = subprocess.run([sys.executable, __file__, "--child", name, str(items)],
                                 capture_output=True, text=True, timeout=900)
            if out.returncode != 0:
                best.setdefault(name, {"error": 1.0})
                print(f"{name}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            assert r["total"] == expected, (name, r["total"], expected)
            r["items"] = items
            r["rate"] = items / r["seconds"]
            if name not in best or r["rate"] > best[name].get("rate", 0):
                best[name] = r
    tasks = 50_000 if args.quick else args.tasks
    queue_best: dict[str, float] = {}
    for _ in range(repeat):
        out = subprocess.run([sys.executable, __file__, "--child", "work_queue", str(tasks)],
                             capture_output=True, text=True, timeout=900)
        if out.returncode != 0:
            print(f"work_queue: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        assert r["total"] == tasks + 1, r
        if not queue_best or r["seconds"] < queue_best["seconds"]:
            queue_best = r
    if queue_best:
        queue_row = (f"| conveyor.work_queue | {tasks:,} | {queue_best['seconds']:.2f} | "
                     f"{tasks / queue_best['seconds']:,.0f} | {queue_best['rss_parent_mb']:.0f} | "
                     f"{queue_best['rss_child_max_mb']:.0f} |")
    else:
        queue_row = "| conveyor.work_queue | failed | | | | |"
    ref = best.get("conveyor", {}).get("rate")
    for name, r in best.items():
        if "error" in r:
            rows.append(f"| {name} | failed | | | | |")
            continue
        ratio = ref / r["rate"] if ref else float("nan")
        rows.append(f"| {name} | {r['items']:,} | {r['rate']:,.0f} | {ratio:.2f}x | "
                    f"{r['rss_parent_mb']:.0f} | {r['rss_child_max_mb']:.0f} |")
    table = "\n".join([
        f"## Pipeline: 3 stages (map -> filter -> map), 2 workers each, {n:,} items",
        "",
        f"Python {platform.python_version()}, best of {repeat}, each contender in a fresh "
        "interpreter. Ratio: conveyor's items/s over the contender's.",
        "",
        "| contender | items run | items/s | conveyor faster by | peak RSS parent MB | "
        "peak RSS worker MB |",
        "|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"## work_queue: one handler adds {tasks:,} tasks, 2 workers",
        "",
        "Tasks wait in a queue in the parent and go out in chunks, a bounded number at a "
        f"time. Best of {repeat}; peak RSS is the whole run's (the added list is built in "
        "the worker and arrives in one message). The aim: under 300 MB in the parent and "
        "a few seconds (a future per task took 18-25 s and 2.1 GB).",
        "",
        "| what | tasks | seconds | tasks/s | peak RSS parent MB | peak RSS worker MB |",
        "|---|---:|---:|---:|---:|---:|",
        queue_row,
        "",
    ])
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "pipeline.md").write_text(table)


if __name__ == "__main__":
    main()
