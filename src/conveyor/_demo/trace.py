"""``conveyor demo`` part: a traced pool, written as a self-contained HTML report.

Blocks of uneven size (the later ones hold bigger numbers, so they take longer) show in
the report what a timeline is for: the tail where one worker still runs while the
others wait, and the overhead table saying the time went into running, not into moving
data. The report goes to a fresh temporary folder, left for the reader to open.
"""

from __future__ import annotations

import tempfile
from pathlib import Path


def run(workers: int = 2) -> Path:
    import conveyor as cv
    from conveyor._demo.pool import count_primes

    folder = Path(tempfile.mkdtemp(prefix="conveyor-trace-"))
    path = folder / "pool-trace.html"
    blocks = [(i * 4_000, i * 4_000 + 1_500 + 150 * i) for i in range(40)]
    with cv.trace(path) as t, cv.Pool(workers) as pool:
        found = sum(pool.map(count_primes, blocks, chunksize=1))
    print(f"{found:,} primes counted in {len(blocks)} traced tasks on {workers} workers")
    print(t.summary())
    print(f"report: {path}  (one file, no network needed; open it in a browser)")
    print(f"  {path.as_uri()}")
    return path
