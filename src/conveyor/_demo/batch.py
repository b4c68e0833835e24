"""``conveyor demo`` part: a batch job from the shell, interrupted on purpose and resumed.

In a temporary directory: 300 items of ~10 ms each go through ``conveyor map`` with a
journal; the job is sent SIGINT part way (as Ctrl-C would), then run again with
``--resume``. The counts show that nothing finished was lost and little was redone.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ITEMS = 300
_JOB = '''
import os, time
def work(x):
    time.sleep(0.01)
    with open(os.environ["DEMO_SIDE"], "a") as f:
        f.write(x + "\\n")
    return sum(map(ord, x))
'''


def _ok(journal: Path) -> int:
    try:
        db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
        try:
            return int(db.execute("SELECT count(*) FROM items WHERE status = 'ok'").fetchone()[0])
        finally:
            db.close()
    except sqlite3.Error:
        return 0


def run() -> None:
    """Start a journaled job, interrupt it, resume it, and print the counts."""
    with tempfile.TemporaryDirectory(prefix="conveyor-demo-") as tmp:
        d = Path(tmp)
        (d / "demojob.py").write_text(_JOB)
        (d / "items.txt").write_text("".join(f"item-{i}\n" for i in range(ITEMS)))
        env = {**os.environ, "DEMO_SIDE": str(d / "ran.txt"), "CONVEYOR_PROGRESS": "off"}
        cmd = [sys.executable, "-m", "conveyor._cli", "map", "demojob:work", "items.txt",
               "--journal", "job.db", "-j", "2"]
        print("$ conveyor map demojob:work items.txt --journal job.db -j 2     "
              f"({ITEMS} items of 10 ms)")
        proc = subprocess.Popen(cmd, cwd=d, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while _ok(d / "job.db") < ITEMS // 3 and time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
        done_first = _ok(d / "job.db")
        print(f"  interrupted with SIGINT: exit code {proc.returncode}, "
              f"{done_first} items ok in the journal")
        print("$ conveyor map demojob:work items.txt --journal job.db -j 2 --resume")
        again = subprocess.run([*cmd, "--resume"], cwd=d, env=env, capture_output=True,
                               text=True, timeout=120)
        lines = [json.loads(x) for x in again.stdout.splitlines()]
        ran = Counter((d / "ran.txt").read_text().split())
        print(f"  exit code {again.returncode}: {sum(x['ok'] for x in lines)} items ok in the "
              f"output, {_ok(d / 'job.db')} in the journal; {ITEMS - done_first} ran on resume; "
              f"items that ran twice: {sum(1 for n in ran.values() if n > 1)}")
        print("  (" + again.stderr.strip().splitlines()[0].removeprefix("conveyor: ") + ")")


if __name__ == "__main__":
    run()
