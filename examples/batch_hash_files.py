"""Hash every file of a directory with ``conveyor run``, stop the job, and resume it.

What the README's "Batch jobs from the shell" section shows, as a script: the journal is
keyed on each file's path (the item's content), so the resumed run hashes only the files
that were not done, and its output lists every file once.

Run: ``python examples/batch_hash_files.py``
"""

from __future__ import annotations

import hashlib
import json
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FILES = 200


def ok_in(journal: Path) -> int:
    try:
        with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as db:
            return int(db.execute("SELECT count(*) FROM items WHERE status='ok'").fetchone()[0])
    except sqlite3.Error:
        return 0


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "photos").mkdir()
        for i in range(FILES):
            (d / "photos" / f"img {i:03}.jpg").write_bytes(bytes([i % 256]) * 50_000)
        # `sleep 0.02;` stands for slower work, so there is time to interrupt the job.
        job = [sys.executable, "-m", "conveyor._cli", "run", "sleep 0.02; sha256sum {}",
               "--glob", "photos/*.jpg", "--journal", "hashes.db", "-j", "2"]
        first = subprocess.Popen(job, cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while ok_in(d / "hashes.db") < FILES // 4 and first.poll() is None:
            time.sleep(0.02)
        first.send_signal(signal.SIGINT)  # what Ctrl-C does
        first.communicate()
        print(f"first run: exit code {first.returncode}, {ok_in(d / 'hashes.db')} files hashed")

        second = subprocess.run([*job, "--resume"], cwd=d, capture_output=True, text=True,
                                check=True)
        lines = [json.loads(x) for x in second.stdout.splitlines()]
        hashes = {x["input"]: x["stdout"].split()[0] for x in lines}
        for path, digest in hashes.items():
            assert digest == hashlib.sha256((d / path).read_bytes()).hexdigest(), path
        print(f"resumed: {len(hashes)} files, each once, every hash checked")
        print(second.stderr.strip().splitlines()[0])


if __name__ == "__main__":
    main()
