"""Why is my parallel job only 1.3x faster? Trace it and look.

Twenty tasks, the last ten ten times heavier than the first ten. With ``chunksize=10``
each worker gets one chunk: one worker runs all the heavy tasks while the other idles,
and the report's Gantt chart shows the long tail. With ``chunksize=1`` the work
balances. The utilisation per worker says the same in numbers.

Run: python examples/trace_uneven_tasks.py [FOLDER]   (the reports go to FOLDER, or to
a new temporary folder; open the .html files in a browser, or the .json in Perfetto)
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import conveyor as cv


def work(x: int) -> int:
    time.sleep(0.002 if x < 10 else 0.02)  # the last ten are heavy
    return x


def traced_map(path: Path, chunksize: int) -> cv.TraceSummary:
    with cv.trace(path) as t, cv.Pool(workers=2) as pool:
        assert pool.map(work, range(20), chunksize=chunksize) == list(range(20))
    return t.summary()


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())
    folder.mkdir(parents=True, exist_ok=True)
    for chunksize, name in ((10, "wrong-chunks.html"), (1, "right-chunks.html")):
        summary = traced_map(folder / name, chunksize)
        busy = " / ".join(f"{lane.utilisation:.0%}" for lane in summary.lanes)
        print(f"chunksize={chunksize}: {summary.spans} spans, {summary.items} tasks, "
              f"workers busy {busy}, wall {summary.wall_ns / 1e6:.0f} ms -> {folder / name}")
    summary = traced_map(folder / "right-chunks.json", 1)  # the same, for Perfetto
    print(f"Chrome trace for Perfetto: {folder / 'right-chunks.json'}")
    print(summary)


if __name__ == "__main__":
    main()
