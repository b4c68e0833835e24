"""The recorder: what the pool's hooks call, and the integers it keeps.

Everything here runs in the pool's own threads (callers' ``submit``, the supervisor), so
it only appends tuples of integers to lists; names, labels and error messages are kept
once per function, per slow task or per failure. The writers read these lists after the
fact (``_view``, ``_chrome``, ``_html``).

Per record, the timestamps (CLOCK_MONOTONIC, ns) in the order they happen::

    submitted   a caller handed the record to the pool          (parent, caller thread)
    dispatched  the supervisor wrote it into a worker's frame    (parent, supervisor)
    read        the worker read that frame                       (worker)
    started     the worker claimed the record                    (worker)
    loaded      its arguments were unpickled                     (worker)
    returned    the function returned (the last item, for a chunk)
    pickled     its result was pickled                           (worker)
    sent        the worker sent the frame holding that result    (worker)
    received    the supervisor read that frame                   (parent, supervisor)

The worker's five travel back in the head of the RESULTS frame (see ``_worker``), so
finished work is recorded even when its worker dies later. The record running at a
death is recorded by the supervisor as it handles the death: from the start time in the
worker's status slot to that moment, with the error its task failed with.
"""

from __future__ import annotations

import heapq
import os
import threading
import time
import weakref
from typing import Any

# Span statuses (beyond the worker's OK, FAILED, PARTIAL).
OK = 0
FAILED = 1
PARTIAL = 2
LOST = 4  # its worker died while it ran
TIMEOUT = 5  # the supervisor killed its worker for overrunning task_timeout
CANCELLED = 6
RETRIED = 7  # its worker died while it ran; the task was queued again
STATUS_NAMES = {OK: "ok", FAILED: "error", PARTIAL: "partial", LOST: "lost",
                TIMEOUT: "timeout", CANCELLED: "cancelled", RETRIED: "retried"}

# Instant events about worker processes.
START = 0  # a worker process was started
READY = 1  # it finished its initializer
RETIRE = 2  # it said it leaves (maxtasksperchild, max_worker_memory)
EXIT = 3  # it exited on purpose
DEATH = 4  # it died (signal or exit code in the event), its running task failed
REPLACE = 5  # a start in a slot that had a worker before
EVENT_NAMES = {START: "worker started", READY: "worker ready", RETIRE: "worker retiring",
               EXIT: "worker exited", DEATH: "worker died", REPLACE: "replacement started"}

# Span tuple fields.
(S_POOL, S_SLOT, S_PID, S_FN, S_ITEMS, S_ARG_BYTES, S_RESULT_BYTES, S_STATUS, S_SUBMITTED,
 S_DISPATCHED, S_READ, S_STARTED, S_LOADED, S_RETURNED, S_PICKLED, S_SENT,
 S_RECEIVED) = range(17)

DEFAULT_MAX_EVENTS = 1_000_000
SLOWEST_KEPT = 20  # spans whose arguments are described (short repr) for the report

# The recorder of the innermost ``with conveyor.trace(...)`` block, process-wide.
ACTIVE: Recorder | None = None
_active_lock = threading.Lock()


class Mark:
    """Rides on a traced record (its ``trace`` slot) from submit to result."""

    __slots__ = ("dispatched", "recorder", "submitted")

    def __init__(self, recorder: Recorder, submitted: int) -> None:
        self.recorder = recorder
        self.submitted = submitted
        self.dispatched = 0


def copy_mark(mark: Mark | None) -> Mark | None:
    """The mark of a record split from a traced one (same submit time)."""
    return None if mark is None else Mark(mark.recorder, mark.submitted)


class Recorder:
    """Spans and worker events of every pool that records into it.

    Appends happen from several threads (each pool's supervisor, callers); a lock is
    taken once per results frame, not per span."""

    def __init__(self, max_events: int = DEFAULT_MAX_EVENTS) -> None:
        if isinstance(max_events, bool) or not isinstance(max_events, int) or max_events < 1:
            raise ValueError(f"max_events must be a positive int, got {max_events!r}")
        self.max_events = max_events
        self.pid = os.getpid()
        self.origin_ns = time.monotonic_ns()
        self.end_ns = 0  # when recording stopped (0: still recording)
        self.span_rows: list[tuple[int, ...]] = []
        self.event_rows: list[tuple[int, ...]] = []  # (pool, slot, pid, kind, ns, a, b)
        self.dropped = 0
        self.functions: list[str] = []
        self._fn_ids: dict[str, int] = {}
        self.labels: dict[int, str] = {}  # span index -> short repr of its arguments
        self.errors: dict[int, str] = {}  # span index -> error message
        self._slowest: list[tuple[int, int]] = []  # heap of (run ns, span index)
        self.pools: list[tuple[int, int]] = []  # pool number - 1 -> (owner pid, workers)
        self._pool_ids: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self._slot_pids: dict[tuple[int, int], int] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ helpers

    def _pool(self, sup: Any) -> int:
        number = self._pool_ids.get(sup)
        if number is None:
            self.pools.append((os.getpid(), len(sup._workers)))
            number = self._pool_ids[sup] = len(self.pools)
        return number

    def _fn(self, name: str) -> int:
        fn = self._fn_ids.get(name)
        if fn is None:
            fn = self._fn_ids[name] = len(self.functions)
            self.functions.append(name)
        return fn

    def _room(self) -> bool:
        if len(self.span_rows) + len(self.event_rows) < self.max_events:
            return True
        self.dropped += 1
        return False

    def _keep_if_slow(self, index: int, run_ns: int, rec: Any) -> None:
        slowest = self._slowest
        if len(slowest) >= SLOWEST_KEPT and run_ns <= slowest[0][0]:
            return
        try:
            label = rec.call.label(rec.item(0))
            if rec.size > 1:
                label += f" and {rec.size - 1} more items"
        except Exception as exc:  # a __repr__ that raises must not stop the supervisor
            label = f"{rec.call.fn_name}(<repr failed: {type(exc).__name__}>)"
        self.labels[index] = label
        if len(slowest) >= SLOWEST_KEPT:
            _, gone = heapq.heapreplace(slowest, (run_ns, index))
            self.labels.pop(gone, None)
        else:
            heapq.heappush(slowest, (run_ns, index))

    # ----------------------------------------------------------- pool hooks

    def pool_stopped(self, sup: Any) -> None:
        """A pool whose own trace this is has stopped (see ``Trace``)."""

    def submitted(self, records: list[Any]) -> None:
        if self.end_ns or os.getpid() != self.pid:
            return  # stopped, or inherited by a forked child: not this process's trace
        now = time.monotonic_ns()
        for rec in records:
            rec.trace = Mark(self, now)

    def add_span(self, sup: Any, w: Any, rec: Any, status: int, result_bytes: int,
                 times: tuple[int, ...]) -> None:
        """One finished record; ``times`` from ``dispatched`` to ``received``... see the
        module docstring (``submitted`` and ``dispatched`` come from its mark)."""
        with self._lock:
            if not self._room():
                return
            index = len(self.span_rows)
            self.span_rows.append((
                self._pool(sup), w.index, w.pid, self._fn(rec.call.fn_name), rec.size,
                len(rec.data), result_bytes, status, rec.trace.submitted, rec.trace.dispatched,
                *times))
            self._keep_if_slow(index, times[3] - times[2], rec)

    def worker_event(self, sup: Any, w: Any, kind: int, a: int = 0, b: int = 0) -> None:
        if os.getpid() != self.pid:
            return
        now = time.monotonic_ns()
        with self._lock:
            pool = self._pool(sup)
            if kind == START:
                before = self._slot_pids.get((pool, w.index))
                self._slot_pids[(pool, w.index)] = w.pid
                if before is not None:
                    kind, a = REPLACE, before
            if self._room():
                self.event_rows.append((pool, w.index, w.pid, kind, now, a, b))

    def worker_exited(self, sup: Any, w: Any, graceful: bool, exitcode: int | None,
                      peak_kb: int, running: Any, started: int,
                      failed: list[tuple[Any, BaseException]]) -> None:
        """A worker's exit; closes the span of the record it was running, if traced, in
        the recorder that marked it (its block may have ended since)."""
        if os.getpid() != self.pid:
            return
        code = 0 if exitcode is None else exitcode
        self.worker_event(sup, w, EXIT if graceful else DEATH, code, max(0, peak_kb) * 1024)
        if not graceful and running is not None and running.trace is not None:
            exc = next((e for single, e in failed if single.call is running.call), None)
            running.trace.recorder.add_lost_span(sup, w, running, started, exc, exitcode)

    def add_lost_span(self, sup: Any, w: Any, rec: Any, started: int,
                      exc: BaseException | None, exitcode: int | None) -> None:
        now = time.monotonic_ns()
        kind = type(exc).__name__ if exc is not None else ""
        status = (RETRIED if exc is None else TIMEOUT if kind == "TaskTimeoutError"
                  else CANCELLED if kind == "CancelledError" else LOST)
        mark = rec.trace
        started = max(started or now, mark.dispatched)
        with self._lock:
            if not self._room():
                return
            index = len(self.span_rows)
            self.span_rows.append((
                self._pool(sup), w.index, w.pid, self._fn(rec.call.fn_name), rec.size,
                len(rec.data), 0, status, mark.submitted, mark.dispatched, started, started,
                started, now, now, now, now))
            self.errors[index] = (f"{kind}: {exc}" if exc is not None else
                                  f"the worker died (exit code {exitcode}); the task was "
                                  "queued again")
            self._keep_if_slow(index, now - started, rec)


def results(sup: Any, w: Any, heads: list[tuple[int, int, int, int]],
            rows: list[tuple[int, ...]], sent: int) -> list[tuple[int, int, int, int]]:
    """Record the spans of one traced RESULTS frame (each into the recorder its record
    was marked by); returns the frame's plain head list."""
    received = time.monotonic_ns()
    status_of = {rid: (status, size) for rid, status, size, _ in heads}
    for rid, read, started, loaded, returned, pickled in rows:
        rec = w.outstanding.get(rid)
        if rec is None or rec.trace is None:
            continue  # failed at a death already, or taken back
        status, size = status_of[rid]
        rec.trace.recorder.add_span(sup, w, rec, status, size,
                                    (read, started, loaded, returned, pickled, sent, received))
    return heads
