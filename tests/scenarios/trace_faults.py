"""Trace scenarios that kill workers or interrupt the block, each run in a fresh
interpreter by tests/test_trace.py.

Usage: python trace_faults.py SCENARIO OUT_DIR; prints one JSON object per line (facts
for the test to check) and exits 0 unless the scenario itself broke.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import conveyor as cv


def emit(**facts: Any) -> None:
    print(json.dumps(facts), flush=True)


def task(x: int, mark: str = "") -> int:
    if x == 5:
        Path(mark).write_text(str(time.monotonic_ns()))  # the moment of death
        os._exit(3)
    time.sleep(0.01)
    return x


def death(out: Path) -> None:
    mark = str(out / "death-ns")
    with cv.trace(out / "death.json") as t, cv.Pool(2) as pool:
        futures = [pool.submit(task, x, mark) for x in range(12)]
        outcomes = []
        for f in futures:
            try:
                outcomes.append(f.result(timeout=30))
            except cv.WorkerLostError as exc:
                outcomes.append(type(exc).__name__)
        pids = pool.statistics().worker_pids
    t.write(out / "death.html")
    lost = [s for s in t.spans if s.status != "ok"]
    emit(outcomes=outcomes, death_ns=int(Path(mark).read_text()),
         lost=[s._asdict() for s in lost], pids=list(pids),
         events=[e._asdict() for e in t.worker_events])


def exception(out: Path) -> None:
    try:
        with cv.trace(out / "exc.json"), cv.Pool(2) as pool:
            pool.map(abs, range(10))
            raise KeyError("the block failed")
    except KeyError:
        emit(raised=True)


def sigint(out: Path) -> None:
    try:
        with cv.trace(out / "int.html"), cv.Pool(2) as pool:
            pool.map(abs, range(10))
            emit(ready=True, pids=pool.statistics().worker_pids)
            time.sleep(30)  # the test sends SIGINT now
    except KeyboardInterrupt:
        emit(interrupted=True)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    {"death": death, "exception": exception, "sigint": sigint}[sys.argv[1]](Path(sys.argv[2]))
