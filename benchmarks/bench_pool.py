"""conveyor.Pool against the pools it replaces, in one run, on this machine.

    python benchmarks/bench_pool.py            # full run, 5 to 8 minutes on 2 busy cores
    python benchmarks/bench_pool.py --quick    # smoke test: small N, one repetition
    python benchmarks/bench_pool.py --scenarios 6   # one scenario (here: latency)

Contenders (2 workers each, fork unless said): conveyor.Pool, multiprocessing.Pool,
concurrent.futures.ProcessPoolExecutor, mpire.WorkerPool, joblib.Parallel (loky backend),
pebble.ProcessPool. Every single measurement runs in a fresh interpreter, started by this
script (``--one``), so peak RSS belongs to one contender and no library's leftovers slow
the next. Contenders take turns: repetition r runs them all, in an order rotated by r,
before repetition r + 1 starts; the tables show the best and the median repetition.

Pool start-up and teardown are outside the timed region except in scenario 5; each pool
runs a small warm-up call first.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import machine, run_json, table, versions, write_result

WORKERS = 2
LIBS = ["conveyor", "mp", "cf", "mpire", "joblib", "pebble"]
LABELS = {
    "conveyor": "conveyor.Pool",
    "mp": "multiprocessing.Pool",
    "cf": "ProcessPoolExecutor",
    "mpire": "mpire.WorkerPool",
    "joblib": "joblib (loky)",
    "pebble": "pebble.ProcessPool",
}
EXECUTOR_CHUNK = 1000  # Executor.map / pebble map in scenario 1: default chunksize=1 is far slower
IMAP_CHUNK = 100  # scenario 3, for every library that takes a chunk size


# ----------------------------------------------------------------------- task functions


def square(x: int) -> int:
    return x * x


def busy(k: int) -> int:
    """A pure-Python loop; ``k`` is calibrated so that one call takes about 5 ms."""
    acc = 0
    for i in range(k):
        acc += i * i
    return acc


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def busy_pid(k: int) -> int:
    """``busy``, returning the pid of the worker that ran it."""
    busy(k)
    return os.getpid()


def calibrate(target: float = 0.005) -> int:
    k = 20_000
    while True:
        t = min(_timed(busy, k) for _ in range(3))
        if t > 0.002:
            return max(1, int(k * target / t))
        k *= 2


def _timed(fn: Callable[[int], Any], arg: int) -> float:
    t0 = time.perf_counter()
    fn(arg)
    return time.perf_counter() - t0


def rss_kib(field: str) -> int:
    """VmRSS / VmHWM of this process, in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status")


# --------------------------------------------------------------------------- contenders


class Contender:
    """One library's pool, driven through the calls the scenarios need."""

    def __init__(self, lib: str, start_method: str = "fork") -> None:
        """``start_method`` is ignored by joblib, except that "fork" is refused in
        scenario 5 (loky has none); elsewhere joblib runs with its default."""
        self.lib = lib
        self.method = start_method
        self.pool: Any = None
        if lib == "conveyor":
            import conveyor

            self.pool = conveyor.Pool(WORKERS, start_method=start_method)
        elif lib == "mp":
            import multiprocessing

            self.pool = multiprocessing.get_context(start_method).Pool(WORKERS)
        elif lib == "cf":
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self.pool = ProcessPoolExecutor(
                WORKERS, mp_context=multiprocessing.get_context(start_method))
        elif lib == "mpire":
            from mpire import WorkerPool

            self.pool = WorkerPool(n_jobs=WORKERS, start_method=start_method, keep_alive=True)
        elif lib == "joblib":
            from joblib import Parallel

            self.pool = Parallel(n_jobs=WORKERS, backend="loky")
        elif lib == "pebble":
            import multiprocessing

            from pebble import ProcessPool

            self.pool = ProcessPool(WORKERS, context=multiprocessing.get_context(start_method))
        else:
            raise ValueError(lib)

    def first(self, fn: Callable[[int], int], x: int) -> int:
        """Run one task and wait for it (pool start-up included on lazy pools)."""
        if self.lib in ("conveyor", "cf"):
            return int(self.pool.submit(fn, x).result())
        if self.lib == "mp":
            return int(self.pool.apply_async(fn, (x,)).get())
        if self.lib == "mpire":
            # mpire 2.10 bug: with keep_alive=True, a map() after an apply_async() that
            # came first fails: "square() takes 1 positional argument but 2 were given".
            # Warming up with map() avoids it.
            return int(self.pool.map(fn, [x])[0])
        if self.lib == "pebble":
            return int(self.pool.schedule(fn, args=(x,)).result())
        from joblib import delayed

        return int(self.pool([delayed(fn)(x)])[0])

    def map(self, fn: Callable[[int], int], items: range) -> list[int]:
        if self.lib in ("conveyor", "mp"):
            return list(self.pool.map(fn, items))
        if self.lib == "cf":
            return list(self.pool.map(fn, items, chunksize=EXECUTOR_CHUNK))
        if self.lib == "mpire":
            return list(self.pool.map(fn, items))
        if self.lib == "pebble":
            return list(self.pool.map(fn, items, chunksize=EXECUTOR_CHUNK).result())
        from joblib import delayed

        return list(self.pool(delayed(fn)(x) for x in items))

    def submit_all(self, fn: Callable[[int], int], items: range) -> list[int]:
        if self.lib in ("conveyor", "cf"):
            futs = [self.pool.submit(fn, x) for x in items]
            return [f.result() for f in futs]
        if self.lib in ("mp", "mpire"):
            res = [self.pool.apply_async(fn, (x,)) for x in items]
            return [r.get() for r in res]
        if self.lib == "pebble":
            futs = [self.pool.schedule(fn, args=(x,)) for x in items]
            return [f.result() for f in futs]
        # joblib has no per-task submit; its loky executor is what it runs on.
        from joblib.externals.loky import get_reusable_executor

        ex = get_reusable_executor(max_workers=WORKERS)
        futs = [ex.submit(fn, x) for x in items]
        return [f.result() for f in futs]

    def imap(self, fn: Callable[[int], int], n: int) -> Iterator[int]:
        """Lazy results of ``fn`` over an endless input, or over ``range(n)`` fed as a
        generator for the libraries that read all of their input first."""
        endless = (x for x in itertools.count())
        bounded = (x for x in range(n))
        if self.lib in ("conveyor", "mp"):
            return iter(self.pool.imap(fn, endless, chunksize=IMAP_CHUNK))
        if self.lib == "cf":
            return iter(self.pool.map(fn, bounded, chunksize=IMAP_CHUNK))
        if self.lib == "mpire":
            return iter(self.pool.imap(fn, endless, chunk_size=IMAP_CHUNK))
        if self.lib == "pebble":
            return iter(self.pool.map(fn, bounded, chunksize=IMAP_CHUNK).result())
        from joblib import Parallel, delayed

        gen = Parallel(n_jobs=WORKERS, backend="loky", return_as="generator")
        return iter(gen(delayed(fn)(x) for x in endless))

    def future(self, fn: Callable[[float], float], x: float) -> Any:
        """One task as a concurrent.futures.Future (for an asyncio service)."""
        if self.lib in ("conveyor", "cf"):
            return self.pool.submit(fn, x)
        if self.lib == "pebble":
            return self.pool.schedule(fn, args=(x,))
        if self.lib == "joblib":
            from joblib.externals.loky import get_reusable_executor

            return get_reusable_executor(max_workers=WORKERS).submit(fn, x)
        from concurrent.futures import Future

        fut: Future[float] = Future()
        self.pool.apply_async(fn, (x,), callback=fut.set_result,
                              error_callback=fut.set_exception)
        return fut

    def parallel_map(self, fn: Callable[[int], int], items: list[int]) -> list[int]:
        """Scenario 4: each library's map with its default chunking."""
        if self.lib == "cf":
            return list(self.pool.map(fn, items))
        if self.lib == "pebble":
            return list(self.pool.map(fn, items).result())
        if self.lib in ("conveyor", "mp", "mpire"):
            return list(self.pool.map(fn, items))
        from joblib import delayed

        return list(self.pool(delayed(fn)(x) for x in items))


def preimport(lib: str) -> None:
    """Import a contender's modules, so that scenario 5 times the pool, not the import."""
    import importlib

    # Each library's pool module, as multiprocessing.pool is for mp (conveyor's public
    # names load theirs lazily, on first use).
    modules = {"conveyor": ["conveyor", "conveyor._pool.pool"], "mp": ["multiprocessing.pool"],
               "cf": ["concurrent.futures.process"], "mpire": ["mpire"],
               "joblib": ["joblib", "joblib.externals.loky"], "pebble": ["pebble"]}
    for name in modules[lib]:
        importlib.import_module(name)


IMAP_NOTES = {
    "conveyor": f"imap(endless generator, chunksize={IMAP_CHUNK})",
    "mp": f"imap(endless generator, chunksize={IMAP_CHUNK})",
    "cf": f"map(bounded generator, chunksize={IMAP_CHUNK}): reads all input first",
    "mpire": f"imap(endless generator, chunk_size={IMAP_CHUNK})",
    "joblib": "Parallel(return_as='generator') over an endless generator, auto batches",
    "pebble": f"map(bounded generator, chunksize={IMAP_CHUNK}): reads all input first",
}
MAP_NOTES = {
    "conveyor": "map, automatic (guided) chunks",
    "mp": "map, default chunksize (n / 4 workers)",
    "cf": f"map(chunksize={EXECUTOR_CHUNK})",
    "mpire": "map, default chunk_size",
    "joblib": "Parallel(delayed(f)(x) ...), batch_size='auto'",
    "pebble": f"map(chunksize={EXECUTOR_CHUNK})",
}
SUBMIT_NOTES = {
    "conveyor": "submit + Future.result",
    "mp": "apply_async + get",
    "cf": "submit + Future.result",
    "mpire": "apply_async + get",
    "joblib": "no per-task API: its loky executor's submit",
    "pebble": "schedule + Future.result",
}
PAR_NOTES = {
    "conveyor": "map, automatic chunks",
    "mp": "map, default chunksize",
    "cf": "map, chunksize=1 (default)",
    "mpire": "map, default chunk_size",
    "joblib": "Parallel, batch_size='auto'",
    "pebble": "map, chunksize=1 (default)",
}


# ------------------------------------------------------------------ one measurement each


def one(scenario: str, lib: str, p: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh interpreter; returns the figures of one measurement."""
    if scenario == "startup":
        preimport(lib)
        t0 = time.perf_counter()
        c = Contender(lib, p["method"])
        assert c.first(square, 3) == 9
        return {"seconds": time.perf_counter() - t0}
    c = Contender(lib)
    c.first(square, 2)  # start the workers before the clock starts
    if scenario == "map":
        n = p["n"]
        c.map(square, range(1000))
        t0 = time.perf_counter()
        out = c.map(square, range(n))
        dt = time.perf_counter() - t0
        assert len(out) == n and out[-1] == (n - 1) ** 2
        return {"rate": n / dt}
    if scenario == "submit":
        n = p["n"]
        c.submit_all(square, range(100))
        t0 = time.perf_counter()
        out = c.submit_all(square, range(n))
        dt = time.perf_counter() - t0
        assert len(out) == n and out[-1] == (n - 1) ** 2
        return {"rate": n / dt}
    if scenario == "imap":
        n = p["n"]
        before = rss_kib("VmRSS")
        quarter = 0
        t0 = time.perf_counter()
        it = c.imap(square, n)
        for i, value in enumerate(itertools.islice(it, n)):
            if i == n // 4:
                quarter = rss_kib("VmRSS")
            assert value == i * i
        dt = time.perf_counter() - t0
        end = rss_kib("VmRSS")
        return {"rate": n / dt, "before": before, "quarter": quarter, "end": end,
                "peak": rss_kib("VmHWM")}
    if scenario == "cpu":
        k, n = p["k"], p["n"]
        items = [k] * n
        if p.get("after_tiny"):
            c.map(square, range(10_000))  # 4b: the pool last ran tiny tasks
        else:
            c.parallel_map(busy, items[: 2 * WORKERS])
        t0 = time.perf_counter()
        for x in items:
            busy(x)
        serial = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = c.parallel_map(busy_pid, items)
        parallel = time.perf_counter() - t0
        assert len(out) == n
        split = sorted((out.count(pid) for pid in set(out)), reverse=True)
        return {"serial": serial, "parallel": parallel,
                "efficiency": serial / (WORKERS * parallel), "split": split}
    if scenario == "mapmem":
        items = [os.urandom(512).hex() for _ in range(p["n"])]  # 1 KB strings
        before = rss_kib("VmRSS")
        t0 = time.perf_counter()
        out = c.map(len, items)  # type: ignore[arg-type]
        dt = time.perf_counter() - t0
        assert out == [1024] * p["n"]
        return {"rate": p["n"] / dt, "growth": rss_kib("VmHWM") - before}
    if scenario == "latency":
        import asyncio

        async def service() -> list[float]:
            # A long job starts; then short requests arrive in bursts of `burst`, one
            # burst every `gap` seconds, as an asyncio service would send them.
            long = asyncio.wrap_future(c.future(nap, p["long"]))
            await asyncio.sleep(0.2)

            async def request(delay: float) -> float:
                await asyncio.sleep(delay)
                t0 = time.perf_counter()
                await asyncio.wrap_future(c.future(nap, p["short"]))
                return time.perf_counter() - t0

            lat = await asyncio.gather(*(request((i // p["burst"]) * p["gap"])
                                         for i in range(p["n"])))
            await long
            return list(lat)

        lat = asyncio.run(service())
        return {"median_ms": statistics.median(lat) * 1000, "worst_ms": max(lat) * 1000}
    raise ValueError(scenario)


def child_main(scenario: str, lib: str, params: str) -> None:
    result = one(scenario, lib, json.loads(params))
    print(json.dumps(result), flush=True)
    # Teardown is not measured, and some pools (an imap left mid-stream on an endless
    # input) take long to stop: the parent kills this process group instead.
    os._exit(0)


# ------------------------------------------------------------------------ orchestration


class Runner:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.script = os.path.abspath(__file__)

    def measure(self, scenario: str, params: dict[str, Any], reps: int,
                libs: Iterable[str] = LIBS) -> dict[str, list[dict[str, Any] | str]]:
        """{lib: [result or error text per repetition]}; contenders take turns."""
        libs = list(libs)
        got: dict[str, list[dict[str, Any] | str]] = {lib: [] for lib in libs}
        for r in range(reps):
            order = libs[r % len(libs):] + libs[: r % len(libs)]
            for lib in order:
                res, problem = run_json([self.script, "--one", scenario, lib, json.dumps(params)],
                                        self.timeout)
                got[lib].append(res if res is not None else problem)
                print(f"  {scenario:8} {LABELS[lib]:22} rep {r + 1}: "
                      f"{_short(res) if res else problem}", file=sys.stderr, flush=True)
        return got


def _short(res: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in res.items())


def _values(runs: list[dict[str, Any] | str], key: str) -> list[float]:
    return [float(r[key]) for r in runs if isinstance(r, dict)]


def _error(runs: list[dict[str, Any] | str]) -> str:
    errors = [r for r in runs if isinstance(r, str)]
    return f"failed: {errors[0]}" if errors else ""


def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def rate_table(got: dict[str, list[dict[str, Any] | str]], notes: dict[str, str],
               target: Callable[[dict[str, float]], str]) -> str:
    best = {lib: max(v) for lib, runs in got.items() if (v := _values(runs, "rate"))}
    conv = best.get("conveyor")
    rows = []
    for lib, runs in got.items():
        vals = _values(runs, "rate")
        if vals:
            ratio = f"{conv / best[lib]:.2f}x" if conv else "-"
            cells = [_fmt_rate(max(vals)), _fmt_rate(statistics.median(vals)), ratio]
        else:
            cells = [_error(runs), "-", "-"]
        rows.append([LABELS[lib], notes[lib], *cells, target(best) if lib == "conveyor" else ""])
    return table(["library", "call", "tasks/s (best)", "tasks/s (median)", "conveyor ÷ this",
                  "target"], rows)


def _verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def scenario_tables(args: argparse.Namespace) -> list[str]:
    quick = args.quick
    reps = 1 if quick else args.reps
    runner = Runner(timeout=90 if quick else 180)
    wanted = set(args.scenarios.split(","))
    parts: list[str] = []

    if "1" in wanted:
        n = 50_000 if quick else 1_000_000
        got = runner.measure("map", {"n": n}, reps)

        def t1(best: dict[str, float]) -> str:
            if "conveyor" not in best or "mp" not in best:
                return "≥ 1.2x multiprocessing.Pool: not measured"
            r = best["conveyor"] / best["mp"]
            return f"≥ 1.2x multiprocessing.Pool: {r:.2f}x, {_verdict(r >= 1.2)}"

        parts.append(f"### 1. `map` of {n:,} tiny tasks (`x * x`)\n\n"
                     f"Best and median of {reps} repetition(s); pool start-up excluded.\n\n"
                     + rate_table(got, MAP_NOTES, t1))

    if "2" in wanted:
        n = 5_000 if quick else 50_000
        got = runner.measure("submit", {"n": n}, reps)

        def t2(best: dict[str, float]) -> str:
            if "conveyor" not in best:
                return "≥ 100,000 tasks/s: not measured"
            return f"≥ 100,000 tasks/s: {_verdict(best['conveyor'] >= 100_000)}"

        parts.append(f"### 2. One call per task: {n:,} tiny tasks submitted, then all awaited\n\n"
                     f"Best and median of {reps} repetition(s).\n\n"
                     + rate_table(got, SUBMIT_NOTES, t2))

    if "3" in wanted:
        n = 20_000 if quick else 300_000
        got = runner.measure("imap", {"n": n}, 1 if quick else max(1, reps - 1))
        parts.append(imap_table(got, n))

    if "4" in wanted:
        k = calibrate()
        n = 40 if quick else 400
        got = runner.measure("cpu", {"k": k, "n": n}, reps)
        parts.append(cpu_table(got, n, k, reps))
        reps4b = 1 if quick else max(1, reps - 1)  # the split shows it; spare the time
        got = runner.measure("cpu", {"k": k, "n": n, "after_tiny": True}, reps4b)
        parts.append(cpu_table(got, n, k, reps4b, after_tiny=True))

    if "5" in wanted:
        reps5 = 1 if quick else 5
        rows = []
        for method in ("fork", "spawn"):
            got = runner.measure("startup", {"method": method}, reps5,
                                 [lib for lib in LIBS if not (lib == "joblib" and method == "fork")])
            rows.extend(startup_rows(got, method))
        rows.append(["joblib (loky)", "fork", "n/a: loky has no fork start method", "-", ""])
        parts.append(f"### 5. Pool start-up to first result\n\n"
                     f"Create the pool, submit one trivial task, get its result; in a fresh "
                     f"interpreter each time (imports done before the clock starts); median of "
                     f"{reps5}. joblib's \"spawn\" row is loky's own start method (fork + exec), "
                     f"its default.\n\n"
                     + table(["library", "start method", "seconds (median)", "conveyor ÷ this",
                              "target"], rows))
    if "7" in wanted:
        parts.append(mapmem_table(runner, quick))

    if "6" in wanted:
        params = {"long": 2.0, "short": 0.05, "n": 12, "burst": 3, "gap": 0.3}
        got = runner.measure("latency", params, 1 if quick else reps)
        parts.append(latency_table(got, params, 1 if quick else reps))
    return parts


def mapmem_table(runner: Runner, quick: bool) -> str:
    n = 40_000 if quick else 400_000
    got = runner.measure("mapmem", {"n": n}, 1 if quick else 2)
    rows = []
    growth = {lib: min(_values(runs, "growth")) for lib, runs in got.items()
              if _values(runs, "growth")}
    for lib, runs in got.items():
        if lib not in growth:
            rows.append([LABELS[lib], _error(runs), "-", ""])
            continue
        target = ""
        if lib == "conveyor" and "mp" in growth:
            target = (f"≤ multiprocessing.Pool's: "
                      f"{_verdict(growth['conveyor'] <= growth['mp'])}")
        rows.append([LABELS[lib], f"{growth[lib] / 1024:+.0f}",
                     _fmt_rate(max(_values(runs, "rate"))), target])
    return (f"### 7. Parent memory of a `map` over {n:,} strings of 1 KB\n\n"
            f"The input list is built first; the figure is the parent's peak RSS "
            f"(VmHWM) at the end minus its RSS just before the call, in MiB (best "
            f"of the repetitions): what the pool adds on top of the input.\n\n"
            + table(["library", "peak growth (MiB)", "tasks/s", "target"], rows))


def latency_table(got: dict[str, list[dict[str, Any] | str]], p: dict[str, Any],
                  reps: int) -> str:
    rows = []
    ideal = p["short"] * 1000
    for lib, runs in got.items():
        ok = [r for r in runs if isinstance(r, dict)]
        if not ok:
            rows.append([LABELS[lib], _error(runs), "-", ""])
            continue
        best = min(ok, key=lambda d: d["worst_ms"])
        worst = max(r["worst_ms"] for r in ok)
        target = ""
        if lib == "conveyor":
            bound = p["short"] * p["burst"] * 1000 * 2
            target = (f"no request waits behind the long job (worst < {bound:.0f} ms, twice "
                      f"a burst's serial time): {_verdict(worst < bound)}")
        rows.append([LABELS[lib], f"{statistics.median(r['median_ms'] for r in ok):.0f}",
                     f"{best['worst_ms']:.0f} / {worst:.0f}", target])
    return (f"### 6. Latency: short requests served while a long job runs\n\n"
            f"An asyncio service (futures awaited through `asyncio.wrap_future`) starts one "
            f"{p['long']:.0f} s job, then sends {p['n']} requests of {ideal:.0f} ms in bursts of "
            f"{p['burst']}, one burst every {p['gap'] * 1000:.0f} ms, on a pool of {WORKERS}: one "
            f"worker is free all along, so a burst is served in about "
            f"{ideal * p['burst']:.0f} ms; a request queued behind the long job waits up to "
            f"{p['long'] * 1000:.0f} ms. {reps} repetition(s).\n\n"
            + table(["library", "request latency ms (median)",
                     "worst request ms (best rep / worst rep)", "target"], rows))


def imap_table(got: dict[str, list[dict[str, Any] | str]], n: int) -> str:
    rows = []
    best = {lib: max(v) for lib, runs in got.items() if (v := _values(runs, "rate"))}
    conv = best.get("conveyor")
    for lib, runs in got.items():
        ok = [r for r in runs if isinstance(r, dict)]
        if not ok:
            rows.append([LABELS[lib], IMAP_NOTES[lib], _error(runs), "-", "-", "-", "-", ""])
            continue
        r = max(ok, key=lambda d: d["rate"])
        growth = (r["end"] - r["quarter"]) / 1024
        target = ""
        if lib == "conveyor":
            target = f"flat memory (< 5 MiB growth after 25%): {_verdict(growth < 5)}"
        rows.append([LABELS[lib], IMAP_NOTES[lib], _fmt_rate(r["rate"]),
                     f"{conv / r['rate']:.2f}x" if conv else "-",
                     f"{r['peak'] / 1024:.0f}", f"{(r['peak'] - r['before']) / 1024:+.1f}",
                     f"{growth:+.1f}", target])
    return (f"### 3. Lazy `imap`: first {n:,} results of an endless input\n\n"
            f"Each contender in a fresh interpreter; RSS of the parent from /proc/self/status. "
            f"\"Peak\" is VmHWM at the end; \"growth\" columns are VmRSS differences (MiB): "
            f"peak minus RSS before the call, and RSS at the end minus RSS after 25% of the "
            f"results (flat memory means about 0).\n\n"
            + table(["library", "call", "tasks/s", "conveyor ÷ this", "peak RSS (MiB)",
                     "peak - before (MiB)", "growth after 25% (MiB)", "target"], rows))


def cpu_table(got: dict[str, list[dict[str, Any] | str]], n: int, k: int, reps: int,
              after_tiny: bool = False) -> str:
    rows = []
    best = {lib: max(v) for lib, runs in got.items() if (v := _values(runs, "efficiency"))}
    conv = best.get("conveyor")
    for lib, runs in got.items():
        ok = [r for r in runs if isinstance(r, dict)]
        if not ok:
            rows.append([LABELS[lib], PAR_NOTES[lib], _error(runs), "-", "-", "-", "-", ""])
            continue
        r = max(ok, key=lambda d: d["efficiency"])
        target = f"≥ 95%: {_verdict(r['efficiency'] >= 0.95)}" if lib == "conveyor" else ""
        splits = "; ".join("/".join(map(str, x["split"])) for x in ok)
        rows.append([LABELS[lib], PAR_NOTES[lib], f"{r['efficiency']:.1%}",
                     f"{statistics.median(_values(runs, 'efficiency')):.1%}",
                     f"{r['serial']:.2f} / {r['parallel']:.2f}", splits,
                     f"{conv / r['efficiency']:.2f}x" if conv else "-", target])
    if after_tiny:
        title = (f"### 4b. The same {n} CPU tasks, on a pool whose previous call was a map "
                 f"of 10,000 tiny tasks\n\nA mixed workload: before the timed map, the "
                 f"pool ran `map(square, range(10_000))` instead of a warm-up on the CPU "
                 f"task itself. ")
    else:
        title = (f"### 4. {n} CPU tasks of about 5 ms (pure-Python loop, {k:,} "
                 f"iterations)\n\nBefore the timed map, each pool ran a warm-up map of "
                 f"{2 * WORKERS} of the same tasks. ")
    return (title + f"Parallel efficiency = serial time / ({WORKERS} x parallel time); the serial run "
            f"is timed in the same interpreter just before the parallel one. Best and median "
            f"of {reps} repetition(s). Other processes on this machine lower every figure; "
            f"the tasks-per-worker split does not depend on them.\n\n"
            + table(["library", "call", "efficiency (best)", "efficiency (median)",
                     "serial / parallel s (best)", "tasks per worker (each rep)",
                     "conveyor ÷ this", "target"], rows))


def startup_rows(got: dict[str, list[dict[str, Any] | str]], method: str) -> list[list[str]]:
    med = {lib: statistics.median(v) for lib, runs in got.items()
           if (v := _values(runs, "seconds"))}
    conv = med.get("conveyor")
    rows = []
    for lib, runs in got.items():
        if lib not in med:
            rows.append([LABELS[lib], method, _error(runs), "-", ""])
            continue
        target = ""
        if lib == "conveyor" and "mp" in med:
            target = (f"no slower than multiprocessing.Pool ({method}): "
                      f"{_verdict(med['conveyor'] <= med['mp'])}")
        rows.append([LABELS[lib], method, f"{med[lib]:.3f}",
                     f"{conv / med[lib]:.2f}x" if conv else "-", target])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small N, one repetition")
    ap.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    ap.add_argument("--scenarios", default="1,2,3,4,5,6,7", help="e.g. 1,3")
    ap.add_argument("--one", nargs=3, metavar=("SCENARIO", "LIB", "PARAMS"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        child_main(*args.one)
        return
    t0 = time.monotonic()
    parts = scenario_tables(args)
    header = (
        f"## Pool throughput and start-up\n\n"
        f"Machine: {machine()}.\n\n"
        f"Versions: {versions(['conveyor', 'mpire', 'joblib', 'loky', 'pebble'])}.\n\n"
        f"Command: `python benchmarks/bench_pool.py{' --quick' if args.quick else ''}` "
        f"({time.monotonic() - t0:.0f} s). {WORKERS} workers everywhere; fork unless said. "
        f"Ratios compare conveyor's figure with each peer's (above 1x means conveyor is "
        f"better; for start-up times, below 1x means conveyor is faster).\n"
    )
    text = "\n\n".join([header, *parts]) + "\n"
    print(text)
    path = write_result("pool", text)
    print(f"written to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
