"""`conveyor map` and `conveyor run` (batch jobs from the shell) against `xargs -P` and GNU parallel.

    python benchmarks/bench_batch.py            # full run, about 3 minutes on 2 busy cores
    python benchmarks/bench_batch.py --quick    # smoke test: small N, one repetition

Every measurement is one command run the way a user runs it: a fresh process (the
``conveyor`` console script of this interpreter, ``xargs``, ``parallel``) in its own
session, in a temporary directory that holds the input file, the module of the mapped
functions, the output and the journal; wall time is from start to exit, start-up and
teardown included. A journal is a new file for every run (never a resume). Contenders
take turns: repetition r runs them all, in an order rotated by r, before repetition
r + 1 starts; the tables show the best and the median repetition.

A conveyor run counts only if it exits with 0, writes one output line per item and,
with a journal, leaves every item ``ok`` in it; an ``xargs`` or ``parallel`` run only
if it exits with 0. GNU parallel is optional: without it its rows say "not installed".

Memory (section 1): "conveyor process" is the VmHWM of the command's own process, read
from /proc every 20 ms while it runs (the last reading, so a final spike may be missed);
"largest process" is ru_maxrss from ``wait4``: the larger of that process's peak and its
workers' peaks.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import kill_group, machine, table, versions, write_result

JOBS = 2
FUNCS = '''\
"""The functions `conveyor map` calls in bench_batch.py."""
import time


def tiny(item):
    return item


def nap10(item):
    time.sleep(0.01)
    return item
'''


# ------------------------------------------------------------------------- one run


@dataclass
class Contender:
    label: str
    argv: list[str] | None  # None: the tool is not installed
    n: int  # items; a conveyor run must write this many output lines
    output: str | None = None  # conveyor's -o file, relative to the work directory
    journal: str | None = None  # conveyor's --journal file, relative to the work directory

    def shown(self) -> str:
        """The command as a user types it (the console script without its path)."""
        if self.argv is None:
            return "-"
        words = [Path(self.argv[0]).name, *self.argv[1:]]
        return " ".join(w if w and all(c.isalnum() or c in "-_.:/=%{}" for c in w)
                        else f"'{w}'" for w in words)


def conveyor_exe() -> str:
    here = Path(sys.executable).parent / "conveyor"
    found = str(here) if here.exists() else shutil.which("conveyor")
    if not found:
        sys.exit("the conveyor console script is not installed (pip install -e .)")
    return found


def status_kib(pid: int, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None  # gone, or a zombie (no memory any more)


def run_once(c: Contender, work: Path, timeout: float) -> dict[str, Any] | str:
    """Run one contender once; its figures, or why the run does not count."""
    assert c.argv is not None
    for name in (c.journal, c.output):
        for suffix in ("", "-wal", "-shm", "-journal"):
            if name:
                (work / (name + suffix)).unlink(missing_ok=True)
    with open(work / "stdout.txt", "w") as out, open(work / "stderr.txt", "w+") as err:
        done: dict[str, Any] = {}
        t0 = time.perf_counter()
        proc = subprocess.Popen(c.argv, cwd=work, stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL, start_new_session=True)

        def wait() -> None:
            # wait4 here, not Popen.wait: it also gives the peak RSS of the tree.
            _, status, usage = os.wait4(proc.pid, 0)
            done["seconds"] = time.perf_counter() - t0
            done["code"] = os.waitstatus_to_exitcode(status)
            done["maxrss"] = usage.ru_maxrss
            proc.returncode = done["code"]  # so Popen never waits for it again

        waiter = threading.Thread(target=wait, name="bench-batch-wait4", daemon=True)
        waiter.start()
        hwm = 0
        deadline = time.monotonic() + timeout
        while waiter.is_alive() and time.monotonic() < deadline:
            hwm = max(hwm, status_kib(proc.pid, "VmHWM") or 0)
            waiter.join(0.02)
        kill_group(proc.pid)  # whatever it started is gone before the next run
        waiter.join(5)
        if "seconds" not in done:
            return f"timed out after {timeout:.0f} s"
        err.seek(0)
        stderr = err.read()
    if done["code"] != 0:
        tail = (stderr.strip().splitlines() or ["no output"])[-1]
        return f"exit {done['code']}: {tail[:160]}"
    res: dict[str, Any] = {"seconds": done["seconds"], "rate": c.n / done["seconds"],
                           "maxrss": done["maxrss"], "hwm": hwm}
    if c.output:
        with open(work / c.output, "rb") as f:
            lines = sum(1 for _ in f)
        if lines != c.n:
            return f"{lines} output lines for {c.n} items"
    if c.journal:
        db = sqlite3.connect(work / c.journal)
        try:
            ok = db.execute("SELECT count(*) FROM items WHERE status = 'ok'").fetchone()[0]
        finally:
            db.close()
        if ok != c.n:
            return f"{ok} items ok in the journal for {c.n}"
    for line in stderr.splitlines():  # conveyor's summary: "... run in 9.1 s (10,990/s) ..."
        if line.startswith("conveyor:") and "/s)" in line:
            res["own_rate"] = float(line.split("(")[1].split("/s")[0].replace(",", ""))
    return res


def measure(contenders: Sequence[Contender], work: Path, reps: int,
            timeout: float) -> dict[str, list[dict[str, Any] | str]]:
    got: dict[str, list[dict[str, Any] | str]] = {c.label: [] for c in contenders}
    for r in range(reps):
        k = r % len(contenders)
        for c in [*contenders[k:], *contenders[:k]]:
            if c.argv is None:
                continue
            res = run_once(c, work, timeout)
            got[c.label].append(res)
            note = (f"{res['seconds']:.3f} s, {res['rate']:,.0f} items/s"
                    if isinstance(res, dict) else res)
            print(f"  {c.label:34} rep {r + 1}: {note}", file=sys.stderr, flush=True)
    return got


# ------------------------------------------------------------------------- tables


def _values(runs: list[dict[str, Any] | str], key: str) -> list[float]:
    return [float(r[key]) for r in runs if isinstance(r, dict) and key in r]


def _error(runs: list[dict[str, Any] | str]) -> str:
    errors = [r for r in runs if isinstance(r, str)]
    return f"failed: {errors[0]}" if errors else "not measured"


def _verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def rate_section(n: int, contenders: list[Contender], got: dict[str, list[dict[str, Any] | str]],
                 reps: int, load: str) -> str:
    rows = []
    for c in contenders:
        runs = got[c.label]
        rates = _values(runs, "rate")
        if not rates:
            rows.append([c.label, f"`{c.shown()}`", _error(runs), "-", "-", "-", "-", "-", ""])
            continue
        best = max((r for r in runs if isinstance(r, dict)), key=lambda d: d["rate"])
        own = _values(runs, "own_rate")
        target = ""
        if c.journal:
            target = (f"≥ 10,000 items/s (whole command): best {_verdict(max(rates) >= 10_000)}, "
                      f"median {_verdict(statistics.median(rates) >= 10_000)}")
        rows.append([c.label, f"`{c.shown()}`", f"{max(rates):,.0f}",
                     f"{statistics.median(rates):,.0f}",
                     f"{max(own):,.0f}" if own else "-", f"{best['seconds']:.2f}",
                     f"{max(_values(runs, 'hwm')) / 1024:.0f}",
                     f"{max(_values(runs, 'maxrss')) / 1024:.0f}", target])
    labels = [c.label for c in contenders]
    cost = ""
    on, off = (max(_values(got[label], "rate") or [0]) for label in labels[:2])
    if on and off:
        cost = (f" In this run the journal costs {1 - on / off:.0%} of the items/s "
                f"(best with ÷ best without).")
    return (f"### 1. `conveyor map` over {n:,} tiny items (the function returns its "
            f"argument), -j {JOBS}\n\n"
            f"Items are the lines `1` to `{n}` of a file; output to a file. \"Whole command\" "
            f"is items ÷ wall time from start to exit (interpreter and pool start-up "
            f"included); \"own summary\" is the rate conveyor prints on stderr. Memory in MiB, "
            f"the most of any repetition. Best and median of {reps} repetition(s); load "
            f"average {load} when the section started.{cost}\n\n"
            + table(["run", "command", "items/s whole command (best)",
                     "items/s whole command (median)", "items/s own summary (best)",
                     "wall s (best)", "peak RSS, conveyor process (MiB)",
                     "peak RSS, largest process (MiB)", "target"], rows))


def time_section(title: str, intro: str, contenders: list[Contender],
                 got: dict[str, list[dict[str, Any] | str]],
                 extra: Callable[[Contender, float, float], list[str]],
                 extra_headers: list[str]) -> str:
    rows = []
    for c in contenders:
        if c.argv is None:
            rows.append([c.label, "-", "not installed", "-", *["-"] * len(extra_headers)])
            continue
        secs = _values(got[c.label], "seconds")
        if not secs:
            rows.append([c.label, f"`{c.shown()}`", _error(got[c.label]), "-",
                         *["-"] * len(extra_headers)])
            continue
        best, med = min(secs), statistics.median(secs)
        rows.append([c.label, f"`{c.shown()}`", f"{best:.2f}", f"{med:.2f}",
                     *extra(c, best, med)])
    return (f"{title}\n\n{intro}\n\n"
            + table(["run", "command", "wall s (best)", "wall s (median)", *extra_headers], rows))


# ------------------------------------------------------------------------- main


def sections(work: Path, quick: bool, reps: int, wanted: set[str]) -> list[str]:
    conveyor = conveyor_exe()
    xargs = shutil.which("xargs")
    parallel = shutil.which("parallel")
    timeout = 60 if quick else 180
    (work / "batchfuncs.py").write_text(FUNCS)
    parts: list[str] = []

    if "1" in wanted:
        n = 10_000 if quick else 100_000
        (work / "items1.txt").write_text("".join(f"{i}\n" for i in range(1, n + 1)))
        base = [conveyor, "map", "batchfuncs:tiny", "items1.txt", "-j", str(JOBS),
                "-o", "out.jsonl"]
        cs = [Contender("conveyor map, journal", [*base, "--journal", "job.db"], n,
                        output="out.jsonl", journal="job.db"),
              Contender("conveyor map, no journal", base, n, output="out.jsonl")]
        load = _load()
        got = measure(cs, work, reps, timeout)
        parts.append(rate_section(n, cs, got, reps, load))

    if "2" in wanted:
        n = 40 if quick else 400
        ideal = n * 0.01 / JOBS
        (work / "items2.txt").write_text("".join(f"{i}\n" for i in range(1, n + 1)))
        # sleep adds up its arguments: the items 0e1, 0e2, ... are distinct zeros, so the
        # shell runs sleep 10 ms per item and no tool sees duplicate items.
        (work / "zeros.txt").write_text("".join(f"0e{i}\n" for i in range(1, n + 1)))
        cmap = [conveyor, "map", "batchfuncs:nap10", "items2.txt", "-j", str(JOBS),
                "-o", "out.jsonl"]
        crun = [conveyor, "run", "sleep 0.01", "zeros.txt", "-j", str(JOBS), "-o", "out.jsonl"]
        cs = [Contender("conveyor map, journal", [*cmap, "--journal", "job.db"], n,
                        output="out.jsonl", journal="job.db"),
              Contender("conveyor map, no journal", cmap, n, output="out.jsonl"),
              Contender("conveyor run, journal", [*crun, "--journal", "job.db"], n,
                        output="out.jsonl", journal="job.db"),
              Contender("xargs -P", [xargs, "-a", "zeros.txt", "-P", str(JOBS), "-n", "1",
                                     "sleep", "0.01"] if xargs else None, n),
              Contender("GNU parallel", [parallel, "-a", "zeros.txt", "-j", str(JOBS),
                                         "sleep", "0.01"] if parallel else None, n)]
        load = _load()
        got = measure(cs, work, reps, timeout)

        def overhead(c: Contender, best: float, med: float) -> list[str]:
            target = ""
            if c.label == "conveyor map, journal":
                target = (f"≤ 10% over the ideal {ideal:.1f} s: best "
                          f"{_verdict(best <= ideal * 1.10)}, median "
                          f"{_verdict(med <= ideal * 1.10)}")
            return [f"{best / ideal - 1:+.0%}", f"{med / ideal - 1:+.0%}", target]

        parts.append(time_section(
            f"### 2. {n} items of 10 ms, -j {JOBS}: wall time against the ideal {ideal:.1f} s",
            f"`conveyor map` calls `time.sleep(0.01)` on the lines `1` to `{n}`; the shell "
            f"rows run `sleep 0.01 0eN` per item (`0eN` is a distinct zero, so no item is a "
            f"duplicate), which adds a process start to each item. Ideal = {n} x 10 ms ÷ "
            f"{JOBS} jobs. Whole command timed, start-up included. Best and median of "
            f"{reps} repetition(s); load average {load} when the section started.",
            cs, got, overhead, ["overhead (best)", "overhead (median)", "target"]))

    if "3" in wanted:
        n = 200 if quick else 2_000
        (work / "items3.txt").write_text("".join(f"{i}\n" for i in range(1, n + 1)))
        crun = [conveyor, "run", "true", "items3.txt", "-j", str(JOBS), "-o", "out.jsonl"]
        cs = [Contender("conveyor run, no journal", crun, n, output="out.jsonl"),
              Contender("conveyor run, journal", [*crun, "--journal", "job.db"], n,
                        output="out.jsonl", journal="job.db"),
              Contender("xargs -P", [xargs, "-a", "items3.txt", "-P", str(JOBS), "-n", "1",
                                     "true"] if xargs else None, n),
              Contender("GNU parallel", [parallel, "-a", "items3.txt", "-j", str(JOBS),
                                         "true"] if parallel else None, n)]
        load = _load()
        got = measure(cs, work, reps, timeout)
        xa = _values(got.get("xargs -P", []), "seconds")

        def vs_xargs(c: Contender, best: float, med: float) -> list[str]:
            if not xa:
                return ["-", "-", "≤ 1.5x xargs: not measured" if "conveyor" in c.label else ""]
            rb, rm = best / min(xa), med / statistics.median(xa)
            target = (f"≤ 1.5x xargs: best {_verdict(rb <= 1.5)}, median {_verdict(rm <= 1.5)}"
                      if "conveyor" in c.label else "")
            return [f"{rb:.2f}x", f"{rm:.2f}x", target]

        parts.append(time_section(
            f"### 3. `true` over {n:,} items, -j {JOBS}",
            f"One `true ITEM` process per item (conveyor runs a plain-words template without "
            f"a shell, as xargs does). Whole command timed. Best and median of {reps} "
            f"repetition(s); the ratios divide by xargs's best and median of the same run; "
            f"load average {load} when the section started.",
            cs, got, vs_xargs, ["÷ xargs (best)", "÷ xargs (median)", "target"]))
    return parts


def tool_versions() -> str:
    found = [versions(["conveyor"])]
    for tool, flag in (("xargs", "--version"), ("parallel", "--version")):
        path = shutil.which(tool)
        if path is None:
            found.append(f"{tool} (not installed)")
            continue
        out = subprocess.run([path, flag], capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL).stdout
        found.append((out.splitlines() or [tool])[0])
    return ", ".join(found)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small N, one repetition")
    ap.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    ap.add_argument("--sections", default="1,2,3", help="e.g. 1,3")
    args = ap.parse_args()
    reps = 1 if args.quick else args.reps
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-batch-") as tmp:
        parts = sections(Path(tmp), args.quick, reps, set(args.sections.split(",")))
    command = "python benchmarks/bench_batch.py" + (" --quick" if args.quick else "")
    if args.reps != 3 and not args.quick:
        command += f" --reps {args.reps}"
    if args.sections != "1,2,3":
        command += f" --sections {args.sections}"
    header = (
        f"## Batch jobs from the shell: `conveyor map` and `conveyor run`\n\n"
        f"Machine: {machine()}.\n\n"
        f"Versions: {tool_versions()}.\n\n"
        f"Command: `{command}` ({time.monotonic() - t0:.0f} s). -j {JOBS} everywhere; "
        f"every figure is a whole command timed from start to exit, in a fresh temporary "
        f"directory, journal (SQLite) in a new file each run.\n"
    )
    text = "\n\n".join([header, *parts]) + "\n"
    print(text)
    path = write_result("batch", text)
    print(f"written to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
