"""What tracing costs, and what a trace weighs, in one run on this machine.

    python benchmarks/bench_trace.py            # about 3 minutes on 2 busy cores
    python benchmarks/bench_trace.py --quick    # smoke test: small N, one repetition

The cost: ``conveyor.Pool(2)`` runs bench_pool's scenario 1 (``map`` of 1,000,000 tiny
tasks, automatic chunks) and scenario 2 (50,000 ``submit`` calls: one task per chunk),
with tracing off and on (``with conveyor.trace():`` around everything), taking turns,
each measurement in a fresh interpreter (``--one``). Wall-clock rates on a shared
machine swing by tens of percent from one run to the next, so the CPU time the parent
process spent per task (all its threads: callers and the pool's supervisor) is reported
too: it is what tracing adds to, and it is steadier.

The weight: bytes per span of the Chrome trace and of the HTML report; and whether the
recorded run times of sleep tasks add up to the time slept.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import machine, run_json, table, write_result


def square(x: int) -> int:
    return x * x


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one(scenario: str, traced: bool, n: int) -> dict[str, Any]:
    """Runs in a fresh interpreter: one timed run, tracing off or on."""
    import conveyor

    if traced:
        conveyor.trace().__enter__()  # active until this process exits
    pool = conveyor.Pool(2)
    pool.submit(square, 1).result()
    pids = pool.statistics().worker_pids
    if scenario == "map":
        pool.map(square, range(1000))

        def run() -> list[int]:
            return pool.map(square, range(n))
    else:
        [f.result() for f in [pool.submit(square, x) for x in range(100)]]

        def run() -> list[int]:
            return [f.result() for f in [pool.submit(square, x) for x in range(n)]]
    cpu0, workers0, t0 = time.process_time(), sum(map(_cpu_seconds, pids)), time.perf_counter()
    out = run()
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    workers = sum(map(_cpu_seconds, pids)) - workers0
    assert len(out) == n and out[-1] == (n - 1) ** 2
    return {"rate": n / wall, "parent_us": cpu / n * 1e6, "workers_us": workers / n * 1e6}


def cost_table(quick: bool, reps: int) -> str:
    script = os.path.abspath(__file__)
    rows = []
    for scenario, n, call, limit in (("map", 50_000 if quick else 1_000_000,
                                      "1. `map`, automatic chunks", 0.01),
                                     ("submit", 5_000 if quick else 50_000,
                                      "2. `submit`: one task per chunk", 0.05)):
        got: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
        for r in range(reps):
            for traced in ((False, True) if r % 2 == 0 else (True, False)):
                res, problem = run_json([script, "--one", scenario, str(int(traced)), str(n)],
                                        180)
                if res is None:
                    raise SystemExit(f"{scenario} traced={traced}: {problem}")
                got[traced].append(res)
                print(f"  {scenario:7} traced={traced!s:5} rep {r + 1}: rate {res['rate']:,.0f}/s,"
                      f" parent {res['parent_us']:.3f} µs/task", file=sys.stderr, flush=True)

        def med(traced: bool, key: str, got: dict[bool, list[dict[str, Any]]] = got) -> float:
            return statistics.median(r[key] for r in got[traced])

        rate_cost = 1 - med(True, "rate") / med(False, "rate")
        cpu_off, cpu_on = med(False, "parent_us"), med(True, "parent_us")
        cpu_cost = cpu_on / cpu_off - 1 if cpu_off > 0 else 0.0
        rows.append([call, f"{med(False, 'rate'):,.0f}", f"{med(True, 'rate'):,.0f}",
                     f"{rate_cost:+.1%}", f"{cpu_off:.3f}", f"{cpu_on:.3f}", f"{cpu_cost:+.1%}",
                     f"≤ {limit:.0%}: {'met' if max(cpu_cost, 0) <= limit else '**not met**'}"
                     " (parent CPU)"])
    return table(["scenario", "tasks/s off", "tasks/s traced", "rate cost", "parent CPU µs/task "
                  "off", "traced", "CPU cost", "target"], rows)


def weight_table(quick: bool) -> tuple[str, str]:
    import conveyor as cv

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        sizes: dict[str, list[int]] = {".json": [], ".html": []}
        counts = (200, 2200) if quick else (1000, 21000)
        for n in counts:
            with cv.trace() as t, cv.Pool(2) as pool:
                pool.map(square, range(n), chunksize=1)
            for suffix in sizes:
                path = Path(folder) / f"run{n}{suffix}"
                t.write(path)
                sizes[suffix].append(path.stat().st_size)
        extra = counts[1] - counts[0]
        json_per = sizes[".json"][1] / counts[1]
        html_per = (sizes[".html"][1] - sizes[".html"][0]) / extra
        html_fixed = sizes[".html"][0] - html_per * counts[0]
        rows.append(["Chrome trace (.json)", f"{json_per:.0f}", "-", "≤ ~120 bytes/span: "
                     + ("met" if json_per <= 120 else "**not met**")])
        rows.append(["HTML report", f"{html_per:.1f}", f"{html_fixed / 1000:.1f} kB",
                     "≤ ~20 bytes/span + ~60 kB: "
                     + ("met" if html_per <= 20 and html_fixed <= 60_000 else "**not met**")])
    tasks, seconds = (20, 0.01) if quick else (200, 0.01)
    with cv.trace() as t, cv.Pool(2) as pool:
        pool.map(nap, [seconds] * tasks, chunksize=1)
    recorded = sum(s.run_ns for s in t.spans) / 1e9
    slept = tasks * seconds
    sleep_line = (f"{tasks} tasks sleeping {seconds * 1000:.0f} ms each: recorded run times add "
                  f"up to {recorded:.3f} s for {slept:.3f} s slept ({recorded / slept - 1:+.1%}; "
                  f"target within 5%: {'met' if abs(recorded / slept - 1) <= 0.05 else 'not met'})"
                  ". `time.sleep` overshoots by its timer slack; that is in the figure.")
    return table(["format", "bytes per span", "fixed", "target"], rows), sleep_line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small N, one repetition")
    ap.add_argument("--reps", type=int, default=5, help="repetitions (default 5)")
    ap.add_argument("--one", nargs=3, metavar=("SCENARIO", "TRACED", "N"),
                    help="internal: one measurement in this fresh interpreter")
    args = ap.parse_args()
    if args.one:
        scenario, traced, n = args.one
        print(json.dumps(one(scenario, traced == "1", int(n))), flush=True)
        os._exit(0)  # teardown is not measured
    reps = 1 if args.quick else args.reps
    costs = cost_table(args.quick, reps)
    weights, sleep_line = weight_table(args.quick)
    text = (
        "## Tracing: what it costs and what a trace weighs\n\n"
        f"Machine: {machine()}. Command: `python benchmarks/bench_trace.py"
        f"{' --quick' if args.quick else ''}`.\n\n"
        f"`conveyor.Pool(2)`, tracing off and on taking turns, median of {reps} "
        "repetition(s), each in a fresh interpreter. The parent's CPU time per task (all "
        "its threads) is steadier than the wall-clock rate on a shared machine, and is "
        "where tracing adds its work, so the target is judged on it.\n\n"
        + costs + "\n\n" + weights + "\n\n" + sleep_line + "\n")
    print(text)
    path = write_result("trace", text)
    print(f"written to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
