"""The recorder: what the pool's hooks call, and what it keeps.

Everything here runs in the pool's own threads (callers' ``submit``, the supervisor), so
the hooks do as little as they can per record: a submit stamps each record's ``trace``
slot with its submit time (an int) and tells the supervisor which recorder its traced
work goes to (``sup.tracing``); a dispatch logs, once per frame, its time and the ids,
submit times and functions of the traced records in it, in arrays; a results frame is
kept as the bytes the worker packed (``_worker.TRACE_ROW``, 80 bytes per record). Spans are assembled from these only when read (``_view``). Names, labels
and error messages are kept once per function, per slow task or per failure.

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

The worker's timestamps travel back in the head of the RESULTS frame (see ``_worker``),
so finished work is recorded even when its worker dies later. The record running at a
death is recorded by the supervisor as it handles the death: from the start time in the
worker's status slot to that moment, with the error its task failed with.

Memory: ~110 bytes per span (the packed row, and the dispatch log's three int64).
"""

from __future__ import annotations

import array
import heapq
import os
import struct
import threading
import time
import weakref
from typing import Any

_now = time.monotonic_ns

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


class Recorder:
    """Spans and worker events of every pool that records into it.

    Appends happen from several threads (each pool's supervisor, callers); list appends
    are atomic, and the lock guards only what is rare (pool numbers, labels, deaths)."""

    def __init__(self, max_events: int = DEFAULT_MAX_EVENTS) -> None:
        if isinstance(max_events, bool) or not isinstance(max_events, int) or max_events < 1:
            raise ValueError(f"max_events must be a positive int, got {max_events!r}")
        self.max_events = max_events
        self.pid = os.getpid()
        self.origin_ns = time.monotonic_ns()
        self.end_ns = 0  # when recording stopped (0: still recording)
        self.kept = 0  # spans and events kept
        self.dropped = 0
        # Dispatched traced records, in arrays, not tuples: the cyclic garbage collector
        # walks every tracked object at each full collection, and a million tuples that
        # hold the recorder made a long traced run slower as it went. Per frame: pool,
        # number of traced records, dispatch ns; per record: id, submit ns, function.
        self.dispatch_frames = array.array("q")
        self.dispatch_rids = array.array("q")
        self.dispatch_submits = array.array("q")
        self.dispatch_fns = array.array("q")
        self.functions: list[str] = []
        self._fn_ids: dict[str, int] = {}
        # (pool, slot, pid, packed TRACE_ROWs, sent, received): one per results frame.
        self.frames: list[tuple[int, int, int, bytes, int, int]] = []
        # Spans of records cut short by a death: (pool, slot, pid, rid, status, items,
        # argument bytes, started, ended, error text).
        self.lost: list[tuple[int, int, int, int, int, int, int, int, int, str]] = []
        self.event_rows: list[tuple[int, ...]] = []  # (pool, slot, pid, kind, ns, a, b)
        self.labels: dict[tuple[int, int], str] = {}  # (pool, rid) -> short repr
        self._slowest: list[tuple[int, tuple[int, int]]] = []  # heap of (run ns, key)
        # pool number - 1 -> (owner pid, workers, "pool" or "commands" for conveyor run)
        self.pools: list[tuple[int, int, str]] = []
        # Shell commands of ``conveyor run``: (group, runner thread index, its native
        # thread id, status, started, ended, command pid, command, error or "").
        self.commands: list[tuple[int, int, int, int, int, int, int, str, str]] = []
        self._pool_ids: dict[int, tuple[weakref.ref[Any], int]] = {}
        self._slot_pids: dict[tuple[int, int], int] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ helpers

    def _pool(self, sup: Any, kind: str = "pool", workers: int = 0) -> int:
        """The pool's number in this trace (by id, checked by a weak reference: cheaper
        per frame than a WeakKeyDictionary, and an id reused later is not mistaken)."""
        known = self._pool_ids.get(id(sup))
        if known is not None and known[0]() is sup:
            return known[1]
        with self._lock:
            self.pools.append((os.getpid(), workers or len(sup._workers), kind))
            self._pool_ids[id(sup)] = (weakref.ref(sup), len(self.pools))
            return len(self.pools)

    def _room(self, n: int) -> bool:
        if self.kept + n <= self.max_events:
            self.kept += n
            return True
        self.dropped += n
        return False

    def _keep_if_slow(self, key: tuple[int, int], run_ns: int, rec: Any) -> None:
        slowest = self._slowest
        if len(slowest) >= SLOWEST_KEPT and run_ns <= slowest[0][0]:
            return
        try:
            label = rec.call.label(rec.item(0))
            if rec.size > 1:
                label += f" and {rec.size - 1} more items"
        except Exception as exc:  # a __repr__ that raises must not stop the supervisor
            label = f"{rec.call.fn_name}(<repr failed: {type(exc).__name__}>)"
        with self._lock:
            self.labels[key] = label
            if len(slowest) >= SLOWEST_KEPT:
                _, gone = heapq.heapreplace(slowest, (run_ns, key))
                self.labels.pop(gone, None)
            else:
                heapq.heappush(slowest, (run_ns, key))

    # ----------------------------------------------------------- pool hooks

    def pool_stopped(self, sup: Any) -> None:
        """A pool whose own trace this is has stopped (see ``Trace``)."""

    def submitted(self, records: list[Any]) -> Recorder:
        """Stamp each record with its submit time (an int: no object the garbage
        collector must track, which cost more than the rest of tracing together)."""
        now = _now()
        for rec in records:
            rec.trace = now
        return self

    def dispatched(self, sup: Any, records: list[Any]) -> None:
        """A frame holding these traced records is on its way to a worker."""
        if self.kept >= self.max_events:
            return
        now = time.monotonic_ns()
        names = [rec.call.fn_name for rec in records]
        if names.count(names[0]) == len(names):  # the usual case: one function
            fns = [self._fn(names[0])] * len(names)
        else:
            fns = [self._fn(name) for name in names]
        pool = self._pool(sup)
        with self._lock:  # the four arrays stay aligned
            self.dispatch_frames.extend((pool, len(records), now))
            self.dispatch_rids.extend([rec.rid for rec in records])
            self.dispatch_submits.extend([rec.trace for rec in records])
            self.dispatch_fns.extend(fns)

    def _fn(self, name: str) -> int:
        fn = self._fn_ids.get(name)
        if fn is None:
            with self._lock:
                fn = self._fn_ids.setdefault(name, len(self.functions))
                if fn == len(self.functions):
                    self.functions.append(name)
        return fn

    def received(self, sup: Any, w: Any, rows: bytes, sent: int, slow: Any, slow_ns: int
                 ) -> None:
        """A results frame with the packed rows of its traced records."""
        received = time.monotonic_ns()
        pool = self._pool(sup)
        if not self._room(len(rows) // ROW_SIZE):
            return
        self.frames.append((pool, w.index, w.pid, rows, sent, received))
        if slow is not None and (len(self._slowest) < SLOWEST_KEPT
                                 or slow_ns > self._slowest[0][0]):
            self._keep_if_slow((pool, slow.rid), slow_ns, slow)

    def worker_event(self, sup: Any, w: Any, kind: int, a: int = 0, b: int = 0) -> None:
        if os.getpid() != self.pid:
            return  # inherited by a forked child: not this process's trace
        now = time.monotonic_ns()
        pool = self._pool(sup)
        with self._lock:
            if kind == START:
                before = self._slot_pids.get((pool, w.index))
                self._slot_pids[(pool, w.index)] = w.pid
                if before is not None:
                    kind, a = REPLACE, before
            if self._room(1):
                self.event_rows.append((pool, w.index, w.pid, kind, now, a, b))

    def worker_exited(self, sup: Any, w: Any, graceful: bool, exitcode: int | None,
                      peak_kb: int, running: Any, started: int,
                      failed: list[tuple[Any, BaseException]]) -> None:
        """A worker's exit; closes the span of the record it was running, if traced, in
        the recorder its traced work goes to (``sup.tracing``)."""
        if os.getpid() != self.pid:
            return
        code = 0 if exitcode is None else exitcode
        self.worker_event(sup, w, EXIT if graceful else DEATH, code, max(0, peak_kb) * 1024)
        if not graceful and running is not None and running.trace is not None:
            exc = next((e for single, e in failed if single.call is running.call), None)
            (sup.tracing or self).add_lost_span(sup, w, running, started, exc, exitcode)

    def add_lost_span(self, sup: Any, w: Any, rec: Any, started: int,
                      exc: BaseException | None, exitcode: int | None) -> None:
        now = time.monotonic_ns()
        kind = type(exc).__name__ if exc is not None else ""
        status = (RETRIED if exc is None else TIMEOUT if kind == "TaskTimeoutError"
                  else CANCELLED if kind == "CancelledError" else LOST)
        error = (f"{kind}: {exc}" if exc is not None else
                 f"the worker died (exit code {exitcode}); the task was queued again")
        pool = self._pool(sup)
        with self._lock:
            if not self._room(1):
                return
            self.lost.append((pool, w.index, w.pid, rec.rid, status, rec.size,
                              len(rec.data) if rec.data is not None else 0,
                              started or now, now, error))
        self._keep_if_slow((pool, rec.rid), now - (started or now), rec)


    def command_done(self, runner: Any, threads: int, slot: int, command: str, started: int,
                     ended: int, pid: int, error: str | None) -> None:
        """One shell command of ``conveyor run``, run by runner thread ``slot`` (its lane:
        the thread's native id, since every command is a process of its own)."""
        group = self._pool(runner, "commands", threads)
        with self._lock:
            if self._room(1):
                self.commands.append((group, slot, threading.get_native_id(),
                                      OK if error is None else FAILED, started, ended, pid,
                                      command, error or ""))


ROW = struct.Struct("<10q")  # _worker.TRACE_ROW (a test keeps the two the same)
ROW_SIZE = ROW.size


def dispatched(sup: Any, records: list[Any]) -> None:
    """Log a frame of traced records on its way to a worker (supervisor thread)."""
    sup.tracing.dispatched(sup, records)


def results(sup: Any, w: Any, heads: list[tuple[int, int, int, int]], rows: bytes,
            sent: int, slow_rid: int, slow_ns: int) -> list[tuple[int, int, int, int]]:
    """Keep the trace rows of one traced RESULTS frame; returns its plain head list.

    Traced records go to the trace of the pool's last traced submit (``sup.tracing``):
    work submitted inside a ``with trace()`` block is recorded there even if it finishes
    after the block ended (though the block's file was written by then)."""
    slow = w.outstanding.get(slow_rid)
    sup.tracing.received(sup, w, rows, sent, slow, slow_ns)
    return heads
