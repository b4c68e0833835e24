"""What a batch job prints: one JSON line per item, and a summary at the end.

A line is assembled from JSON text pieces (the item's canonical text, the result text
the worker already encoded), so an item's data is never decoded and encoded again::

    {"seq": 3, "input": "b.txt", "ok": true, "result": 42, "attempts": 1,
     "seconds": 0.0102, "worker": 4242}
    {"seq": 4, "input": "c.txt", "ok": false, "error": {"type": "ValueError",
     "message": "...", "traceback": "..."}, "attempts": 2, "seconds": 0.1, "worker": 4243}

Shell mode adds ``exit_code``, ``signal``, ``stdout`` and ``stderr``; its ``error`` has
no traceback. With ``-k`` lines come in input order (``seq``), held back until every
earlier item is out; otherwise as items finish.
"""

from __future__ import annotations

import heapq
import json
import random
import statistics
import sys
from collections import Counter
from typing import IO, Any

_dump = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def record_line(seq: int, row: dict[str, Any], shell: bool) -> str:
    """One output line from journal-shaped fields (``input`` and ``result`` are JSON
    text; ``stderr`` holds the traceback of a failed ``map`` item)."""
    ok = row["status"] == "ok"
    parts = [f'{{"seq":{seq},"input":{row["input"]},"ok":{"true" if ok else "false"}']
    if ok:
        parts.append(f',"result":{row["result"] if row["result"] is not None else "null"}')
    else:
        error: dict[str, Any] = {"type": row["error_type"], "message": row["error_message"]}
        if not shell:
            error["traceback"] = row["stderr"]
        parts.append(f',"error":{_dump(error)}')
    seconds = row["seconds"]
    parts.append(f',"attempts":{row["attempts"] or 0},"seconds":'
                 f'{"null" if seconds is None else round(seconds, 6)},'
                 f'"worker":{_dump(row["worker"])}')
    if shell:
        parts.append(f',"exit_code":{_dump(row["exit_code"])},"signal":{_dump(row["signal"])},'
                     f'"stdout":{_dump(row["stdout"] or "")},"stderr":{_dump(row["stderr"] or "")}')
    parts.append("}\n")
    return "".join(parts)


class Output:
    """Writes lines, in input order with ``keep_order`` (a heap of finished lines)."""

    def __init__(self, stream: IO[str], keep_order: bool) -> None:
        self._stream = stream
        self._keep = keep_order
        self._heap: list[tuple[int, str]] = []
        self._next = 1
        self._gaps: set[int] = set()  # seqs that produce no line (duplicates)

    def write(self, seq: int, line: str) -> None:
        if not self._keep:
            self._stream.write(line)
            return
        heapq.heappush(self._heap, (seq, line))
        self._drain()

    def skip(self, seq: int) -> None:
        """No line will come for ``seq`` (a duplicate): do not wait for it."""
        if self._keep:
            self._gaps.add(seq)
            self._drain()

    def _drain(self) -> None:
        while True:
            if self._next in self._gaps:
                self._gaps.discard(self._next)
                self._next += 1
            elif self._heap and self._heap[0][0] == self._next:
                self._stream.write(heapq.heappop(self._heap)[1])
                self._next += 1
            else:
                return

    @property
    def held(self) -> int:
        return len(self._heap)

    def flush_all(self) -> None:
        """At the end (or when stopped): what is held goes out in order, gaps or not."""
        while self._heap:
            self._stream.write(heapq.heappop(self._heap)[1])
        self._stream.flush()

    def flush(self) -> None:
        self._stream.flush()


class Summary:
    """Counts and timings of one run, in bounded memory (a reservoir of durations)."""

    SAMPLE = 10_000

    def __init__(self) -> None:
        self.ok = 0
        self.failed = 0
        self.skipped_ok = 0
        self.skipped_failed = 0
        self.duplicates = 0
        self.retried = 0
        self.errors: Counter[str] = Counter()
        self._durations: list[float] = []
        self._seen = 0
        self._rng = random.Random(0)

    def finished(self, ok: bool, seconds: float | None, error_type: str | None) -> None:
        if ok:
            self.ok += 1
        else:
            self.failed += 1
            self.errors[error_type or "?"] += 1
        if seconds is not None:
            self._seen += 1
            if len(self._durations) < self.SAMPLE:
                self._durations.append(seconds)
            else:
                k = self._rng.randrange(self._seen)
                if k < self.SAMPLE:
                    self._durations[k] = seconds

    def text(self, wall: float, retry_command: str | None) -> str:
        ran = self.ok + self.failed
        lines = [f"conveyor: {ran:,} items run in {wall:.1f} s ({ran / wall if wall else 0:,.0f}/s): "
                 f"{self.ok:,} ok, {self.failed:,} failed"]
        extra = []
        if self.skipped_ok or self.skipped_failed:
            extra.append(f"{self.skipped_ok + self.skipped_failed:,} already done in the journal "
                         f"({self.skipped_failed:,} of them failed)")
        if self.duplicates:
            extra.append(f"{self.duplicates:,} duplicate inputs not run again")
        if self.retried:
            extra.append(f"{self.retried:,} attempts retried")
        if extra:
            lines.append("  " + "; ".join(extra))
        if self._durations:
            d = sorted(self._durations)
            p95 = d[min(len(d) - 1, int(0.95 * len(d)))]
            lines.append(f"  per item: median {statistics.median(d):.3g} s, 95th percentile "
                         f"{p95:.3g} s")
        if self.errors:
            common = ", ".join(f"{name} x{n:,}" for name, n in self.errors.most_common(3))
            lines.append(f"  most common errors: {common}")
        if retry_command and (self.failed or self.skipped_failed):
            lines.append(f"  retry the failures: {retry_command}")
        return "\n".join(lines)


def warn(message: str) -> None:
    print(f"conveyor: {message}", file=sys.stderr, flush=True)
