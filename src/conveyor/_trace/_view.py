"""What a trace says: spans as records, lanes, and the summary (numbers only).

A *lane* is one worker process: a replacement worker in the same slot has a new pid and
so a lane of its own. Formatting happens only in ``__str__`` and in the writers.

Where a task's time went, from the timestamps (see ``_recorder``):

* queue wait: from ``submitted`` to ``started``, less the transfer below (waiting in the
  pool's queue, and in the worker's, behind the records sent ahead of it);
* transferring: from ``dispatched`` (or from when the worker finished the record before
  it, if later) to ``read``: the frame on its way, and the worker getting to read it;
* serialising: unpickling the arguments (``started`` to ``loaded``) and pickling the
  result (``returned`` to ``pickled``), both in the worker;
* running: ``loaded`` to ``returned``;
* returning: ``pickled`` to ``received``: results batched a moment (at most ~2 ms), the
  pipe, and the supervisor reading the frame.
"""

from __future__ import annotations

import math
import signal
from dataclasses import dataclass
from typing import Any, NamedTuple

from conveyor._trace import _recorder as R


class Span(NamedTuple):
    """One record (a task, or a chunk of ``items`` tasks) as a worker ran it. Times are
    CLOCK_MONOTONIC nanoseconds, shared by every process of the machine."""

    pool: int
    worker: int  # the worker slot (0 .. workers-1)
    pid: int  # the worker's; for a command of ``conveyor run``, its runner thread's id
    function: str
    items: int
    arg_bytes: int
    result_bytes: int
    status: str  # ok, error, partial, lost, timeout, cancelled, retried
    submitted_ns: int
    dispatched_ns: int
    read_ns: int
    started_ns: int
    loaded_ns: int
    returned_ns: int
    pickled_ns: int
    sent_ns: int
    received_ns: int
    label: str | None  # a short repr of the call, kept for the slowest spans
    error: str | None  # why it failed, for spans cut short by a worker's death

    @property
    def run_ns(self) -> int:
        return self.returned_ns - self.loaded_ns


class WorkerEvent(NamedTuple):
    pool: int
    worker: int
    pid: int
    kind: str  # "worker started", "worker died", ... (``_recorder.EVENT_NAMES``)
    ns: int
    exitcode: int | None  # deaths and exits
    peak_rss: int | None  # bytes, for deaths and exits when known
    replaces: int | None  # the pid this replacement took over from


@dataclass(frozen=True)
class Lane:
    pool: int
    worker: int
    pid: int
    start_ns: int
    end_ns: int
    busy_ns: int
    spans: int
    utilisation: float  # busy time / the lane's life while its pool had work
    ended: str  # "", "died (SIGKILL)", "exited", ...


@dataclass(frozen=True)
class Overhead:
    queue_wait_ns: int
    transferring_ns: int
    serialising_ns: int
    running_ns: int
    returning_ns: int

    def rows(self) -> list[tuple[str, int]]:
        return [("waiting in the queue", self.queue_wait_ns),
                ("transferring (to the worker)", self.transferring_ns),
                ("serialising (arguments and results)", self.serialising_ns),
                ("running", self.running_ns),
                ("returning (batching, pipe, supervisor)", self.returning_ns)]


@dataclass(frozen=True)
class SlowTask:
    label: str
    run_ns: int
    pid: int
    status: str


@dataclass(frozen=True)
class TraceSummary:
    """The numbers of a trace (``Trace.summary()``); ``str()`` formats them."""

    spans: int
    items: int
    errors: int
    wall_ns: int  # first submit to last result
    dropped: int  # events not recorded past max_events
    lanes: tuple[Lane, ...]
    overhead: Overhead
    histogram: tuple[tuple[int, int, int], ...]  # (from ns, to ns, spans) of run times
    slowest: tuple[SlowTask, ...]

    def __str__(self) -> str:
        lines = [f"{self.spans} spans ({self.items} tasks, {self.errors} failed) on "
                 f"{len(self.lanes)} worker lanes over {fmt_ns(self.wall_ns)}"
                 + (f"; {self.dropped} events dropped" if self.dropped else "")]
        for lane in self.lanes:
            lines.append(f"  pool {lane.pool} worker {lane.worker} (pid {lane.pid}): "
                         f"{lane.spans} spans, busy {lane.utilisation:.0%}"
                         + (f", {lane.ended}" if lane.ended else ""))
        total = sum(ns for _, ns in self.overhead.rows()) or 1
        lines.append("  where the time went (summed over tasks):")
        for name, ns in self.overhead.rows():
            lines.append(f"    {name:40} {fmt_ns(ns):>10} {ns / total:6.1%}")
        if self.slowest:
            top = self.slowest[0]
            lines.append(f"  slowest: {top.label} ran {fmt_ns(top.run_ns)} (pid {top.pid})")
        return "\n".join(lines)


def fmt_ns(ns: float) -> str:
    if ns >= 1e9:
        return f"{ns / 1e9:.2f} s"
    if ns >= 1e6:
        return f"{ns / 1e6:.1f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.1f} µs"
    return f"{ns:.0f} ns"


def signal_text(exitcode: int) -> str:
    if exitcode < 0:
        try:
            return f"died ({signal.Signals(-exitcode).name})"
        except ValueError:
            return f"died (signal {-exitcode})"
    return f"died (exit code {exitcode})"


def spans(rec: R.Recorder) -> list[Span]:
    """Assemble the spans from the recorder's per-frame logs (see ``_recorder``)."""
    with rec._lock:
        frames_out = rec.dispatch_frames.tolist()
        rids = rec.dispatch_rids.tolist()
        submits = rec.dispatch_submits.tolist()
        fns = rec.dispatch_fns.tolist()
        functions = list(rec.functions)
        frames = list(rec.frames)
        lost = list(rec.lost)
        commands = list(rec.commands)
        labels = dict(rec.labels)
    sent_at: dict[tuple[int, int], tuple[int, int, str]] = {}
    k = 0
    for i in range(0, len(frames_out) - 2, 3):
        d_pool, count, d_ns = frames_out[i:i + 3]
        for j in range(k, k + count):
            sent_at[(d_pool, rids[j])] = (d_ns, submits[j], functions[fns[j]])
        k += count
    names = R.STATUS_NAMES
    out = []
    unpack = R.ROW.iter_unpack
    for pool, slot, pid, rows, sent, received in frames:
        for (rid, status, rbytes, items, abytes, read, started, loaded, returned,
             pickled) in unpack(rows):
            dispatched, submitted, fn = sent_at.get((pool, rid), (read, read, "?"))
            out.append(Span(pool, slot, pid, fn, items, abytes, rbytes,
                            names.get(status, str(status)), submitted,
                            dispatched, read, started, loaded, returned, pickled, sent,
                            received, labels.get((pool, rid)), None))
    for group, slot, tid, status, started, ended, _pid, command, error in commands:
        out.append(Span(group, slot, tid, "command", 1, 0, 0, names[status], started, started,
                        started, started, started, ended, ended, ended, ended, command,
                        error or None))
    for pool, slot, pid, rid, status, items, abytes, started, ended, error in lost:
        dispatched, submitted, fn = sent_at.get((pool, rid), (started, started, "?"))
        started = min(ended, max(started, dispatched))  # a slot's start can be stale
        out.append(Span(pool, slot, pid, fn, items, abytes, 0, names[status], submitted, dispatched, started, started, started, ended,
                        ended, ended, ended, labels.get((pool, rid)), error))
    return out


def events(rec: R.Recorder) -> list[WorkerEvent]:
    with rec._lock:
        rows = list(rec.event_rows)
    out = []
    for pool, slot, pid, kind, ns, a, b in rows:
        exiting = kind in (R.DEATH, R.EXIT)
        out.append(WorkerEvent(pool, slot, pid, R.EVENT_NAMES[kind], ns,
                               a if exiting else None, (b or None) if exiting else None,
                               a if kind == R.REPLACE else None))
    return out


def lanes_of(all_spans: list[Span], all_events: list[WorkerEvent], end_ns: int
             ) -> dict[tuple[int, int], tuple[int, list[Span], int, int, str]]:
    """(pool, pid) -> (slot, spans by start, life start, life end, how it ended), in the
    order lanes are shown: by pool, then slot, then start."""
    found: dict[tuple[int, int], list[Any]] = {}
    for ev in all_events:
        lane = found.setdefault((ev.pool, ev.pid), [ev.worker, [], ev.ns, 0, ""])
        if ev.kind in ("worker started", "replacement started"):
            lane[2] = min(lane[2], ev.ns)
        elif ev.kind == "worker died":
            lane[3], lane[4] = ev.ns, signal_text(ev.exitcode or 0)
        elif ev.kind == "worker exited":
            lane[3], lane[4] = ev.ns, "exited"
    for s in all_spans:
        lane = found.setdefault((s.pool, s.pid), [s.worker, [], s.started_ns, 0, ""])
        lane[1].append(s)
        lane[2] = min(lane[2], s.started_ns)
    for lane in found.values():
        lane[1].sort(key=lambda s: s.started_ns)
        if not lane[3]:
            lane[3] = max([end_ns] + [s.received_ns for s in lane[1]])
    order = sorted(found, key=lambda k: (k[0], found[k][0], found[k][2]))
    return {k: tuple(found[k]) for k in order}


def summarize(rec: R.Recorder, all_spans: list[Span] | None = None,
              all_events: list[WorkerEvent] | None = None) -> TraceSummary:
    """The numbers of a trace; the writers pass the spans and events they already read."""
    if all_spans is None:
        all_spans = spans(rec)
    if all_events is None:
        all_events = events(rec)
    end_ns = rec.end_ns or max([s.received_ns for s in all_spans], default=rec.origin_ns)
    lanes = lanes_of(all_spans, all_events, end_ns)
    pool_window: dict[int, tuple[int, int]] = {}
    for s in all_spans:
        lo, hi = pool_window.get(s.pool, (s.submitted_ns, s.received_ns))
        pool_window[s.pool] = (min(lo, s.submitted_ns), max(hi, s.received_ns))
    queue = transfer = serial = running = returning = 0
    out_lanes = []
    for (pool, pid), (slot, lane_spans, start, end, ended) in lanes.items():
        busy = 0
        before = 0  # when this worker finished the span before
        for s in lane_spans:
            t_in = max(0, s.read_ns - max(s.dispatched_ns, before))
            t_in = min(t_in, s.started_ns - s.submitted_ns)
            transfer += t_in
            queue += s.started_ns - s.submitted_ns - t_in
            serial += (s.loaded_ns - s.started_ns) + (s.pickled_ns - s.returned_ns)
            running += s.returned_ns - s.loaded_ns
            returning += s.received_ns - s.pickled_ns
            busy += s.pickled_ns - s.started_ns
            before = s.pickled_ns
        lo, hi = pool_window.get(pool, (start, end))
        window = min(end, hi) - max(start, lo)
        out_lanes.append(Lane(pool, slot, pid, start, end, busy, len(lane_spans),
                              min(1.0, busy / window) if window > 0 else 0.0, ended))
    runs = sorted(s.run_ns for s in all_spans)
    slow = sorted((s for s in all_spans if s.label is not None), key=lambda s: -s.run_ns)
    wall = (max(s.received_ns for s in all_spans) - min(s.submitted_ns for s in all_spans)
            if all_spans else 0)
    return TraceSummary(
        spans=len(all_spans), items=sum(s.items for s in all_spans),
        errors=sum(1 for s in all_spans if s.status != "ok"), wall_ns=wall,
        dropped=rec.dropped, lanes=tuple(out_lanes),
        overhead=Overhead(queue, transfer, serial, running, returning),
        histogram=histogram(runs), slowest=tuple(
            SlowTask(s.label or s.function, s.run_ns, s.pid, s.status) for s in slow[:10]))


def histogram(sorted_ns: list[int], bins: int = 24) -> tuple[tuple[int, int, int], ...]:
    """Counts of run times in bins of equal width on a log scale."""
    if not sorted_ns:
        return ()
    lo, hi = max(1, sorted_ns[0]), max(1, sorted_ns[-1])
    if hi <= lo:
        return ((lo, hi, len(sorted_ns)),)
    step = (math.log(hi) - math.log(lo)) / bins
    edges = [int(lo * math.exp(step * i)) for i in range(bins)] + [hi]
    counts = [0] * bins
    for ns in sorted_ns:
        i = int((math.log(max(ns, 1)) - math.log(lo)) / step) if ns > lo else 0
        counts[min(i, bins - 1)] += 1
    return tuple((edges[i], edges[i + 1], counts[i]) for i in range(bins))
