"""What each pool does when things go wrong, measured, in one run.

    python benchmarks/reliability.py           # every fault x every library, about 3 minutes
    python benchmarks/reliability.py --quick   # three faults, three libraries

Every (fault, library) pair runs in a fresh interpreter in its own session, under an outer
timeout; afterwards the whole process group is killed, so a hung pool cannot outlive its
scenario. Tasks are submitted one call per task (``submit``, ``apply_async``, ``schedule``)
so that each task's outcome is seen separately; the parent polls them every 2 ms.

The faults:

- a worker dies in task 5 of 20 (the others sleep 50 ms): SIGKILL, SIGSEGV, ``os._exit(1)``.
  The dying task writes ``time.time()`` to a file first; "error after" is from that moment
  to the first failure the parent sees. Pending tasks still unresolved 10 s later hang.
- a task runs too long: a 1 s task timeout where the library has one.
- an idle worker is killed from outside between two calls: do the next two calls work?
- Ctrl-C (SIGINT to the process group) during ``map``, inside the library's ``with``
  block: time until the parent raises KeyboardInterrupt, workers alive 1 s later.
- the parent is SIGKILLed during ``map``: are its workers gone 1 s later?

The full run then repeats every fault for conveyor alone under spawn and forkserver.

Scenario children restore Python's SIGINT handler first: a benchmark started in the
background by a shell inherits SIGINT ignored, and Ctrl-C would then test nothing.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import kill_group, machine, table, versions, write_result

WORKERS = 2
START_METHOD = os.environ.get("CONVEYOR_BENCH_START_METHOD", "fork")  # set by --start-method
LIBS = ["conveyor", "mp", "cf", "loky", "mpire", "pebble"]
LABELS = {
    "conveyor": "conveyor.Pool",
    "mp": "multiprocessing.Pool",
    "cf": "ProcessPoolExecutor",
    "loky": "loky (reusable executor)",
    "mpire": "mpire.WorkerPool",
    "pebble": "pebble.ProcessPool",
}
FAULTS = ["sigkill", "sigsegv", "exit", "timeout", "idle_kill", "ctrl_c", "parent_kill"]
FAULT_LABELS = {
    "sigkill": "worker SIGKILLed in task 5 of 20",
    "sigsegv": "worker segfaults in task 5 of 20",
    "exit": "worker calls os._exit(1) in task 5 of 20",
    "timeout": "task runs too long (1 s timeout)",
    "idle_kill": "idle worker SIGKILLed between two calls",
    "ctrl_c": "Ctrl-C (SIGINT to the group) during map",
    "parent_kill": "parent SIGKILLed during map",
}
QUICK_FAULTS = ["sigkill", "timeout", "idle_kill"]
QUICK_LIBS = ["conveyor", "mp", "cf"]
DIE_AT = 5
BATCH = 20
OUTER_TIMEOUT = 20.0
POLL = 0.002


# ----------------------------------------------------------------------- task functions


def batch_task(i: int, how: str, marker: str) -> int:
    """Task ``DIE_AT`` kills its worker in the way ``how`` names; the others sleep 50 ms."""
    if i == DIE_AT:
        Path(marker).write_text(repr(time.time()))
        if how == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif how == "sigsegv":
            ctypes.string_at(0)
        elif how == "exit":
            os._exit(1)
        time.sleep(60)
    time.sleep(0.05)
    return i


def pid_task(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def long_task(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def logged_task(i: int, pid_file: str) -> int:
    """Records which process runs it, then sleeps long enough to be interrupted."""
    with open(pid_file, "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(2.0)
    return i


# --------------------------------------------------------------------------- contenders


class Handle:
    """One submitted task, whatever the library's result type."""

    def __init__(self, lib: str, obj: Any) -> None:
        self.lib = lib
        self.obj = obj

    def done(self) -> bool:
        return bool(self.obj.ready() if self.lib in ("mp", "mpire") else self.obj.done())

    def outcome(self) -> tuple[bool, Any]:
        """(True, value) or (False, exception); only once ``done()``."""
        try:
            value = self.obj.get(0) if self.lib in ("mp", "mpire") else self.obj.result(0)
        except BaseException as exc:
            return False, exc
        return True, value


class Lib:
    """One library's pool, 2 workers, fork (loky: its own start method)."""

    def __init__(self, lib: str, task_timeout: float | None = None) -> None:
        self.lib = lib
        self.task_timeout = task_timeout
        if lib == "conveyor":
            import conveyor

            self.pool: Any = conveyor.Pool(WORKERS, start_method=START_METHOD,
                                           task_timeout=task_timeout)
        elif lib == "mp":
            import multiprocessing

            self.pool = multiprocessing.get_context(START_METHOD).Pool(WORKERS)
        elif lib == "cf":
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self.pool = ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context(START_METHOD))
        elif lib == "loky":
            self.pool = self._loky()
        elif lib == "mpire":
            from mpire import WorkerPool

            self.pool = WorkerPool(n_jobs=WORKERS, start_method=START_METHOD, keep_alive=True)
        elif lib == "pebble":
            import multiprocessing

            from pebble import ProcessPool

            self.pool = ProcessPool(WORKERS, context=multiprocessing.get_context(START_METHOD))
        else:
            raise ValueError(lib)

    @staticmethod
    def _loky() -> Any:
        from loky import get_reusable_executor

        return get_reusable_executor(max_workers=WORKERS)

    @staticmethod
    def has_task_timeout(lib: str) -> bool:
        return lib in ("conveyor", "mpire", "pebble")

    def new_call(self) -> None:
        """Between calls: loky's documented usage fetches the executor again (a broken
        one is replaced); the other pools are reused as they are."""
        if self.lib == "loky":
            self.pool = self._loky()

    def submit(self, fn: Any, *args: Any) -> Handle:
        if self.lib in ("conveyor", "cf", "loky"):
            return Handle(self.lib, self.pool.submit(fn, *args))
        if self.lib == "mp":
            return Handle(self.lib, self.pool.apply_async(fn, args))
        if self.lib == "mpire":
            return Handle(self.lib, self.pool.apply_async(fn, args,
                                                          task_timeout=self.task_timeout))
        return Handle(self.lib, self.pool.schedule(fn, args=args, timeout=self.task_timeout))

    def map_in_with(self, fn: Any, items: list[Any]) -> list[Any]:
        """``map`` inside the library's ``with`` block, as a user would write it."""
        with self.pool as pool:
            if self.lib in ("conveyor", "mp"):
                return list(pool.starmap(fn, items))
            if self.lib in ("cf", "loky"):
                return list(pool.map(fn, *zip(*items, strict=True)))
            if self.lib == "mpire":
                return list(pool.map(fn, items))
            return list(pool.map(fn, *zip(*items, strict=True)).result())


def wait_all(handles: list[Handle], deadline: float) -> list[tuple[float, bool, Any] | None]:
    """Poll until every handle is done or the deadline passes; per handle: (time seen,
    ok, value or exception), or None if still pending."""
    seen: list[tuple[float, bool, Any] | None] = [None] * len(handles)
    while time.monotonic() < deadline and any(s is None for s in seen):
        for k, h in enumerate(handles):
            if seen[k] is None and h.done():
                seen[k] = (time.time(), *h.outcome())
        time.sleep(POLL)
    return seen


def usable(lib: Lib, timeout: float) -> str:
    """Does a fresh call still work?"""
    try:
        lib.new_call()
        h = lib.submit(pid_task, 0.0)
    except BaseException as exc:
        return f"no ({type(exc).__name__} on submit)"
    got = wait_all([h], time.monotonic() + timeout)[0]
    if got is None:
        return f"no (hangs > {timeout:.0f} s)"
    return "yes" if got[1] else f"no ({type(got[2]).__name__})"


# ------------------------------------------------------------------------ the scenarios


def run_death(lib_name: str, how: str, tmp: str, inner: float) -> dict[str, Any]:
    lib = Lib(lib_name)
    wait_all([lib.submit(pid_task, 0.0) for _ in range(WORKERS)], time.monotonic() + 30)
    marker = os.path.join(tmp, "died_at")
    handles = [lib.submit(batch_task, i, how, marker) for i in range(BATCH)]
    seen = wait_all(handles, time.monotonic() + inner)
    died_at = float(Path(marker).read_text()) if os.path.exists(marker) else None
    failed = {i: type(s[2]).__name__ for i, s in enumerate(seen) if s is not None and not s[1]}
    pending = [i for i, s in enumerate(seen) if s is None]
    delivered = sum(1 for i, s in enumerate(seen) if s is not None and s[1] and i != DIE_AT)
    first_error = min((s[0] for s in seen if s is not None and not s[1]), default=None)
    return {
        "failed": failed, "pending": pending, "delivered": delivered,
        "error_after": (first_error - died_at) if first_error and died_at else None,
        "usable": usable(lib, 5.0), "inner": inner,
    }


def run_timeout(lib_name: str, inner: float) -> dict[str, Any]:
    if not Lib.has_task_timeout(lib_name):
        return {"supported": False}
    lib = Lib(lib_name, task_timeout=1.0)
    wait_all([lib.submit(pid_task, 0.0) for _ in range(WORKERS)], time.monotonic() + 30)
    t0 = time.time()
    h = lib.submit(long_task, 30.0)
    got = wait_all([h], time.monotonic() + inner)[0]
    result: dict[str, Any] = {"supported": True, "inner": inner}
    if got is None:
        result["outcome"] = "hangs"
    elif got[1]:
        result["outcome"] = "returned normally"
    else:
        result["outcome"] = type(got[2]).__name__
        result["after"] = got[0] - t0
    result["usable"] = usable(lib, 5.0)
    return result


def run_idle_kill(lib_name: str, inner: float) -> dict[str, Any]:
    lib = Lib(lib_name)
    first = wait_all([lib.submit(pid_task, 0.05) for _ in range(8)], time.monotonic() + 30)
    pids = sorted({s[2] for s in first if s is not None and s[1]})
    os.kill(pids[0], signal.SIGKILL)
    time.sleep(0.5)
    calls = []
    for _ in range(2):
        try:
            lib.new_call()
            handles = [lib.submit(pid_task, 0.01) for _ in range(4)]
        except BaseException as exc:
            calls.append(f"{type(exc).__name__} on submit")
            continue
        seen = wait_all(handles, time.monotonic() + inner)
        ok = sum(1 for s in seen if s is not None and s[1])
        errors = sorted({type(s[2]).__name__ for s in seen if s is not None and not s[1]})
        pending = sum(1 for s in seen if s is None)
        if ok == 4:
            calls.append("works")
        elif pending:
            calls.append(f"hangs ({pending}/4 pending after {inner:.0f} s)")
            calls.append("not tried")
            break
        else:
            calls.append(f"fails: {', '.join(errors)} ({ok}/4 ok)")
    return {"calls": calls}


def run_map_until_signalled(lib_name: str, tmp: str) -> None:
    """Child side of ctrl_c and parent_kill: map 20 two-second tasks; the parent signals."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    pid_file = os.path.join(tmp, "pids")
    lib = Lib(lib_name)
    wait_all([lib.submit(pid_task, 0.0) for _ in range(WORKERS)], time.monotonic() + 30)
    lib.new_call()
    try:
        lib.map_in_with(logged_task, [(i, pid_file) for i in range(BATCH)])
    except KeyboardInterrupt:
        # Written at once: what follows (the with block's exit) may hang, and is timed apart.
        Path(tmp, "kbi_at").write_text(repr(time.time()))
        raise
    Path(tmp, "finished").write_text("map returned")


def child_main(fault: str, lib: str, tmp: str, quick: bool) -> None:
    inner = 5.0 if quick else 10.0
    if fault in ("sigkill", "sigsegv", "exit"):
        result = run_death(lib, fault, tmp, inner)
    elif fault == "timeout":
        result = run_timeout(lib, inner)
    elif fault == "idle_kill":
        result = run_idle_kill(lib, inner)
    else:
        run_map_until_signalled(lib, tmp)
        return
    print(json.dumps(result), flush=True)
    os._exit(0)  # teardown is not measured here; the parent kills the process group


# ---------------------------------------------------------------------- the parent side


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def descendants_of(root: int) -> set[int]:
    """Live descendants of ``root``, resource trackers excluded (they are not workers).
    Recursive, because forkserver workers are children of the fork server."""
    parent_of: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if fields[0] != "Z" and b"resource_tracker" not in cmdline:
            parent_of[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, ppid in parent_of.items() if ppid in frontier} - found
        found |= frontier
    return found


def worker_pids(proc: subprocess.Popen[str], tmp: str) -> tuple[list[int], list[int]]:
    """(workers, fork servers): the pids the tasks recorded and the parent's other
    descendants (idle workers), apart from the stdlib fork server, a process-wide
    singleton that is counted on its own."""
    servers = {pid for pid in descendants_of(proc.pid) if _is_fork_server(pid, proc.pid)}
    workers = (set(read_pids(tmp)) | descendants_of(proc.pid)) - servers
    return sorted(workers), sorted(servers)


def _is_fork_server(pid: int, parent: int) -> bool:
    try:
        ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return ppid == parent and b"multiprocessing.forkserver import main" in cmdline


def server_note(servers: list[int]) -> str:
    if not servers:
        return ""
    return "; fork server " + ("still alive" if any(alive(p) for p in servers) else "gone")


def map_started(proc: subprocess.Popen[str], tmp: str) -> str:
    """Wait until a task of the map runs; '' when it does, else what went wrong."""
    if not wait_for(lambda: read_pids(tmp) or proc.poll() is not None, 15):
        return "scenario failed: map never started"
    if proc.poll() is not None:
        return f"scenario failed: exit {proc.returncode} before the signal"
    time.sleep(0.5)
    return ""


def read_pids(tmp: str) -> list[int]:
    try:
        return sorted({int(x) for x in Path(tmp, "pids").read_text().split()})
    except (OSError, ValueError):
        return []


def start_child(fault: str, lib: str, tmp: str, quick: bool, method: str, out: Any, err: Any
                ) -> subprocess.Popen[str]:
    argv = [sys.executable, os.path.abspath(__file__), "--one", fault, lib, tmp]
    if quick:
        argv.append("--quick")
    env = {**os.environ, "CONVEYOR_BENCH_START_METHOD": method}
    return subprocess.Popen(argv, stdout=out, stderr=err, text=True, start_new_session=True,
                            env=env)


def wait_for(cond: Any, timeout: float, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return bool(cond())


def scenario(fault: str, lib: str, quick: bool, method: str) -> str:
    """Runs one (fault, library) pair; returns its table cell."""
    with (tempfile.TemporaryDirectory(prefix="conveyor-rel-") as tmp,
          tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err):
        proc = start_child(fault, lib, tmp, quick, method, out, err)
        try:
            if fault == "ctrl_c":
                return ctrl_c(proc, tmp)
            if fault == "parent_kill":
                return parent_kill(proc, tmp)
            try:
                proc.wait(timeout=OUTER_TIMEOUT)
            except subprocess.TimeoutExpired:
                return f"hangs (no answer in {OUTER_TIMEOUT:.0f} s)"
            out.seek(0)
            lines = [ln for ln in out.read().splitlines() if ln.startswith("{")]
            if not lines:
                err.seek(0)
                tail = (err.read().strip().splitlines() or ["no output"])[-1]
                return f"scenario failed: exit {proc.returncode}: {tail[:120]}"
            return describe(fault, json.loads(lines[-1]))
        finally:
            kill_group(proc.pid)
            proc.wait()


def describe(fault: str, r: dict[str, Any]) -> str:
    if fault in ("sigkill", "sigsegv", "exit"):
        failed: dict[str, str] = r["failed"]
        pending: list[int] = r["pending"]
        others = BATCH - 1
        kinds = ", ".join(sorted(set(failed.values())))
        if str(DIE_AT) in map(str, pending):
            what = f"hangs (task {DIE_AT} unresolved after {r['inner']:.0f} s"
            what += f"; {len(pending)} pending)" if len(pending) > 1 else ")"
        elif pending:
            what = f"hangs after the error ({len(pending)} pending after {r['inner']:.0f} s)"
        elif set(failed) == {str(DIE_AT)}:
            what = f"only that task fails ({kinds})"
        elif str(DIE_AT) in failed:
            what = f"every pending task fails ({len(failed)} x {kinds})"
        else:
            what = f"task {DIE_AT} reported success"
        after = f"{r['error_after']:.3f} s" if r["error_after"] is not None else "-"
        return (f"{what}; error after {after}; {r['delivered']}/{others} others delivered; "
                f"pool usable after: {r['usable']}")
    if fault == "timeout":
        if not r["supported"]:
            return "no timeout support"
        after = f" after {r['after']:.2f} s" if "after" in r else ""
        return f"{r['outcome']}{after}; pool usable after: {r['usable']}"
    if fault == "idle_kill":
        calls: list[str] = r["calls"]
        return f"next call {calls[0]}; the one after {calls[1]}"
    raise ValueError(fault)


def ctrl_c(proc: subprocess.Popen[str], tmp: str) -> str:
    problem = map_started(proc, tmp)
    if problem:
        return problem
    pids, servers = worker_pids(proc, tmp)
    t_sig = time.time()
    os.killpg(proc.pid, signal.SIGINT)
    kbi = Path(tmp, "kbi_at")
    wait_for(lambda: kbi.exists() or proc.poll() is not None, 10)
    pids = sorted(set(pids) | set(read_pids(tmp)) - set(servers))
    if not kbi.exists():
        if proc.poll() is None:
            return "hangs (no KeyboardInterrupt within 10 s)"
        if Path(tmp, "finished").exists():
            return "map finished; no KeyboardInterrupt"
        return f"parent died (exit {proc.returncode}) without KeyboardInterrupt"
    t_kbi = float(kbi.read_text())
    time.sleep(max(0.0, t_kbi + 1.0 - time.time()))
    left = [p for p in pids if alive(p)]
    exited = proc.poll() is not None
    if not exited and wait_for(lambda: proc.poll() is not None, 5):
        exit_note = "parent exited within 6 s"
    elif exited:
        exit_note = "parent exited within 1 s"
    else:
        exit_note = "**parent still running 6 s later**"
    return (f"KeyboardInterrupt after {t_kbi - t_sig:.3f} s; {len(left)}/{len(pids)} workers "
            f"alive 1 s later; {exit_note}{server_note(servers)}")


def parent_kill(proc: subprocess.Popen[str], tmp: str) -> str:
    problem = map_started(proc, tmp)
    if problem:
        return problem
    pids, servers = worker_pids(proc, tmp)
    t0 = time.monotonic()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    gone = wait_for(lambda: not any(alive(p) for p in pids), 1.0, step=0.005)
    if gone:
        return (f"all {len(pids)} workers gone after {time.monotonic() - t0:.2f} s"
                f"{server_note(servers)}")
    left = [p for p in pids if alive(p)]
    still = wait_for(lambda: not any(alive(p) for p in pids), 9.0, step=0.05)
    later = f"last gone after {time.monotonic() - t0:.1f} s" if still else "still alive 10 s later"
    return (f"**{len(left)}/{len(pids)} workers alive 1 s later** ({later})"
            f"{server_note(servers)}")


def fault_rows(faults: list[str], columns: list[tuple[str, str]], quick: bool
               ) -> list[list[str]]:
    """One row per fault; one cell per (library, start method)."""
    rows = []
    for fault in faults:
        row = [FAULT_LABELS[fault]]
        for lib, method in columns:
            t = time.monotonic()
            cell = scenario(fault, lib, quick, method)
            print(f"  {fault:12} {LABELS[lib]:26} {method:10} {time.monotonic() - t:5.1f} s  "
                  f"{cell}", file=sys.stderr, flush=True)
            row.append(cell)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="three faults, three libraries")
    ap.add_argument("--faults", default=None, help="comma-separated subset of: " + ",".join(FAULTS))
    ap.add_argument("--libs", default=None, help="comma-separated subset of: " + ",".join(LIBS))
    ap.add_argument("--start-method", default="fork", choices=["fork", "forkserver", "spawn"],
                    help="for every library but loky (default fork)")
    ap.add_argument("--one", nargs=3, metavar=("FAULT", "LIB", "TMPDIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        child_main(*args.one, quick=args.quick)
        return
    method = args.start_method
    faults = args.faults.split(",") if args.faults else (QUICK_FAULTS if args.quick else FAULTS)
    libs = args.libs.split(",") if args.libs else (QUICK_LIBS if args.quick else LIBS)
    t0 = time.monotonic()
    rows = fault_rows(faults, [(lib, method) for lib in libs], args.quick)
    extra = ""
    if not (args.quick or args.faults or args.libs or method != "fork"):
        others = [("conveyor", "spawn"), ("conveyor", "forkserver")]
        extra = ("\n\nconveyor under its other start methods (same faults, same rules):\n\n"
                 + table(["fault", *[f"{LABELS[lib]}, {m}" for lib, m in others]],
                         fault_rows(faults, others, args.quick)))
    text = (
        f"## Reliability: what each pool does when things go wrong\n\n"
        f"Machine: {machine()}.\n\n"
        f"Versions: {versions(['conveyor', 'loky', 'mpire', 'pebble'])}.\n\n"
        f"Command: `python benchmarks/reliability.py{' '.join(['', *sys.argv[1:]])}` "
        f"({time.monotonic() - t0:.0f} s). {WORKERS} workers, {method} (loky: its own start "
        f"method). Each cell is one run in a fresh interpreter under a {OUTER_TIMEOUT:.0f} s "
        f"timeout. Worker deaths: {BATCH} tasks submitted one call each, task {DIE_AT} "
        f"dies, the others sleep 50 ms; \"error after\" runs from the dying task's last "
        f"timestamp to the first failure the parent sees (2 ms polling). Ctrl-C and parent "
        f"kill: a map of {BATCH} two-second tasks inside the library's `with` block; "
        f"worker pids: the parent's descendants just before the signal (resource trackers "
        f"excluded; the fork server included under forkserver) and the pids the tasks "
        f"recorded; zombies count as gone.\n\n"
        + table(["fault", *[LABELS[lib] for lib in libs]], rows) + extra + "\n"
    )
    print(text)
    name = "reliability" if method == "fork" else f"reliability_{method}"
    path = write_result(name, text)
    print(f"written to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
