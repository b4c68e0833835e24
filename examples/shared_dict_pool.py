"""A dict filled by a pool of workers, as a ``multiprocessing.Manager`` dict would be.

``multiprocessing.Manager().dict()`` runs a server process and turns every ``d[k] += 1``
into two round trips (and a race: the read and the write are separate requests).
``SharedDict`` lives in shared memory, ``add`` is one atomic step, and the dict can be
passed to a pool that is already running.

Run: python examples/shared_dict_pool.py
"""

from __future__ import annotations

import conveyor

LINES = [
    "the quick brown fox jumps over the lazy dog the dog sleeps and the fox runs",
    "into the woods where the quick birds sing over the brown river",
]
TEXT = [word for line in LINES for word in line.split()]


def count_words(counts: conveyor.SharedDict, words: list[str]) -> int:
    for w in words:
        counts.add(w, 1)            # atomic read-add-write, in the worker
    return len(words)


def main() -> None:
    chunks = [TEXT[i : i + 5] for i in range(0, len(TEXT), 5)] * 20
    with conveyor.SharedDict() as counts:
        with conveyor.Pool(workers=3) as pool:
            words = sum(pool.map(count_words, [counts] * len(chunks), chunks))
        top = sorted(counts.items(), key=lambda kv: -kv[1])[:5]
        print(f"{words} words counted by the pool; {len(counts)} distinct")
        print("most common:", ", ".join(f"{w}={n}" for w, n in top))
        assert counts["the"] == 20 * TEXT.count("the")


if __name__ == "__main__":
    main()
