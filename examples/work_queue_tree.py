"""A work queue whose tasks add tasks: walk a directory tree, one directory per task.

No task knows how many directories there are, and no consumer needs to know when to
stop: the run ends by itself when no directory is queued and none is being read.

Run: python examples/work_queue_tree.py [DIRECTORY]
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable

import conveyor as cv


def scan(directory: str, add: Callable[[str], None]) -> tuple[str, int, int]:
    files = size = 0
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return directory, 0, 0
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            add(entry.path)  # more work, found while working
        elif entry.is_file(follow_symlinks=False):
            files += 1
            size += entry.stat(follow_symlinks=False).st_size
    return directory, files, size


def make_tree(root: str, depth: int, fan: int) -> None:
    if depth == 0:
        return
    for i in range(fan):
        sub = os.path.join(root, f"d{i}")
        os.mkdir(sub)
        with open(os.path.join(sub, "data.txt"), "w") as f:
            f.write("x" * (100 * (i + 1)))
        make_tree(sub, depth - 1, fan)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = sys.argv[1] if len(sys.argv) > 1 else tmp
        if len(sys.argv) == 1:
            make_tree(root, depth=4, fan=4)
        results = cv.work_queue([root], scan, workers=2, progress=True)
        files = sum(r[1] for r in results)
        size = sum(r[2] for r in results)
        print(f"{len(results)} directories, {files} files, {size:,} bytes under {root}")


if __name__ == "__main__":
    main()
