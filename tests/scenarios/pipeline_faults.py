"""Pipeline scenarios run in a fresh interpreter by tests/test_pipeline.py."""

from __future__ import annotations

import faulthandler
import itertools
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import conveyor as cv


def slow(x: int) -> int:
    time.sleep(0.2)
    return x


def ctrl_c() -> None:
    pipe = cv.Pipeline(range(1000)).map(abs, workers=2).map(slow, workers=2)
    it = iter(pipe)
    next(it)
    print(json.dumps({"ready": True}), flush=True)
    try:
        for _ in it:
            pass
    except KeyboardInterrupt:
        print(json.dumps({"interrupted": True, "at": time.time()}), flush=True)
        raise


# ------------------------------------------------------------ many Ctrl-Cs in a row
#
# The test process sends SIGINT at random moments; this process runs one pipeline per
# trial and reports, after each, how it ended and what it left behind. The pipelines
# have items that take no time and show progress bars, the case where a Ctrl-C used to
# land in a garbage-collected multiprocessing finalizer (and was lost) or in a lock's
# release (and came out as RuntimeError).

_armed = False
_late = 0


def _on_sigint(signum: int, frame: Any) -> None:
    """For bursts of Ctrl-C: the first of a trial raises, the rest are counted, so the
    ones that arrive after the pipeline has stopped do not break this script."""
    global _armed, _late
    if _armed:
        _armed = False
        raise KeyboardInterrupt
    _late += 1


def _leftovers(fds_before: int) -> dict[str, Any]:
    from multiprocessing import forkserver, resource_tracker

    me = os.getpid()
    # The standard library's forkserver and resource tracker outlive pools on purpose.
    singletons = {str(getattr(forkserver._forkserver, "_forkserver_pid", None)),
                  str(getattr(resource_tracker._resource_tracker, "_pid", None))}
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name not in singletons:
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == me:
                children.append(f"{entry.name}:{fields[0]}")  # zombies count: never joined
    threads = [t.name for t in threading.enumerate()
               if t is not threading.main_thread() and t.name != "tqdm_monitor"]
    segments = [n for n in os.listdir("/dev/shm") if n.startswith(f"conveyor_{me}_")]
    fds = len(os.listdir("/proc/self/fd"))
    return {"children": children, "threads": threads, "segments": segments,
            "fds_added": fds - fds_before}


def _pipeline(source: Any) -> cv.Pipeline:
    return (cv.Pipeline(source, start_method=os.environ.get("CONVEYOR_START_METHOD"))
            .map(abs, workers=2)
            .filter(bool, workers=2)
            .map(abs, kind="thread", workers=2))


def _grow(task: int, add: Any) -> int:
    """A work queue that never ends by itself: every task adds two."""
    add(task + 1)
    add(task + 2)
    return task


def ctrl_c_storm() -> None:
    """argv: trials, mode. Modes:

    * ``single``: the default handler; one SIGINT per trial; an endless source, read by
      ``run(progress=True)`` or (every other trial) by a loop over ``iter()``.
    * ``burst``: several SIGINTs per trial, some arriving while the pipeline stops.
    * ``finish``: a short source; the SIGINT may come before, during or after the end.
    * ``queue``: the same as ``single`` for ``work_queue`` (and ``iter_work_queue``).
    """
    global _armed
    faulthandler.register(signal.SIGUSR1)  # the test asks for every stack if a trial hangs
    trials, mode = int(sys.argv[2]), sys.argv[3]
    if mode in ("burst", "finish"):
        signal.signal(signal.SIGINT, _on_sigint)
    _pipeline(range(100)).run(progress=True)  # imports and tqdm's lock, before counting fds
    fds_before = len(os.listdir("/proc/self/fd"))
    for trial in range(trials):
        n = (trial * 7919) % 20_000 if mode == "finish" else None
        source = itertools.count() if n is None else range(n)
        got: list[Any] = []
        outcome = "finished"
        print(json.dumps({"trial": trial, "running": True}), flush=True)
        _armed = True
        try:
            pipe = _pipeline(source)
            if mode == "queue":
                if trial % 2:
                    for x in cv.iter_work_queue([0], _grow, workers=2, progress=True):
                        got.append(x)
                else:
                    got = cv.work_queue([0], _grow, workers=2, progress=True)
            elif mode == "single" and trial % 2:
                for x in pipe.iter(progress=True):
                    got.append(x)
            else:
                got = pipe.run(progress=True)
        except KeyboardInterrupt:
            outcome = "KeyboardInterrupt"
        except BaseException as exc:
            outcome = f"{type(exc).__name__}: {exc}"
        _armed = False
        report = {"trial": trial, "outcome": outcome,
                  "complete": n is not None and got == list(range(1, n))}
        report.update(_leftovers(fds_before))
        print(json.dumps(report), flush=True)
    print(json.dumps({"late": _late}), flush=True)
    sys.stdin.readline()  # exit only once the test sends no more signals


if __name__ == "__main__":
    globals()[sys.argv[1]]()
