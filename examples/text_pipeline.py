"""A 3-stage text pipeline: read -> parse -> aggregate, with per-stage statistics.

Lines are generated (a synthetic web-server log) so the example needs no data file; the
source is read lazily, so a file of any size works the same way.

Run: python examples/text_pipeline.py
"""

from __future__ import annotations

import collections
import random

import conveyor as cv


def log_lines(n: int):  # type: ignore[no-untyped-def]
    rng = random.Random(7)
    paths = ["/", "/login", "/search", "/item/42", "/cart"]
    for i in range(n):
        status = rng.choice([200, 200, 200, 304, 404, 500])
        yield f"10.0.{i % 256}.{rng.randrange(256)} GET {rng.choice(paths)} {status} {rng.randrange(100, 5000)}"


def parse(line: str) -> tuple[str, int, int] | None:
    try:
        _ip, _method, path, status, size = line.split()
        return path, int(status), int(size)
    except ValueError:
        return None


def is_ok(record: tuple[str, int, int] | None) -> bool:
    return record is not None and record[1] < 400


def count_batch(batch: list[tuple[str, int, int]]) -> dict[str, int]:
    counts: collections.Counter[str] = collections.Counter()
    for path, _status, size in batch:
        counts[path] += size
    return dict(counts)


def main() -> None:
    pipe = (cv.Pipeline(log_lines(200_000))
            .map(parse, workers=2)
            .filter(is_ok)
            .batch(500)
            .map(count_batch, workers=2))
    totals: collections.Counter[str] = collections.Counter()
    for partial in pipe:
        totals.update(partial)
    print("bytes served per path (status < 400):")
    for path, size in totals.most_common():
        print(f"  {path:10} {size:>12,}")
    print(pipe.stats)


if __name__ == "__main__":
    main()
