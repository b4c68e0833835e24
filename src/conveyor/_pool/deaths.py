"""Deaths and timeouts: what happens when a worker exits or overruns.

When a worker dies, its result pipe is drained first (results written just before the
exit still count), then its status slot says which record and item it was running:
exactly that task fails (``WorkerLostError``, or ``TaskTimeoutError`` if the supervisor
killed it for overrunning) or is retried, the records it had not started go back to the
front of the queue, and a replacement starts. Part of the supervisor thread
(``supervisor.Supervisor``).
"""

from __future__ import annotations

import signal
import time
from concurrent.futures import CancelledError

from conveyor._pool import worker as _worker
from conveyor._pool.seam import Command, Record
from conveyor._pool.state import SupervisorState, WorkerHandle
from conveyor._trace import _recorder as _trace
from conveyor.errors import TaskTimeoutError, WorkerLostError, WorkerStartError

_START_FAILURES = 3  # workers in a row that exit before they are ready: the pool is broken


class DeathHandler(SupervisorState):
    """The supervisor's handling of worker exits and timeouts (see the module docstring)."""

    def _worker_exited(self, w: WorkerHandle) -> None:
        frames_left = True
        while frames_left:  # results written just before the exit still count
            before = len(w.outstanding)
            self._read_results(w)
            frames_left = len(w.outstanding) < before
        w.process.join()
        exitcode = w.process.exitcode
        slot = w.index * _worker.SLOT_SIZE
        running_rid = self._slots[slot + _worker.SLOT_RECORD]
        item = self._slots[slot + _worker.SLOT_ITEM]
        peak_kb = self._slots[slot + _worker.SLOT_PEAK_RSS_KB]
        started = self._slots[slot + _worker.SLOT_STARTED_NS]
        sending = self._slots[slot + _worker.SLOT_PHASE] == _worker.PHASE_SEND
        for i in range(_worker.SLOT_SIZE):
            self._slots[slot + i] = 0
        self._slots[slot + _worker.SLOT_RECORD] = -1
        # Only a worker that said it retires leaves on purpose while the loop runs (STOP
        # is sent after it): any other exit, even with code 0, is a death.
        graceful = w.retiring
        requeue: list[Record] = []
        failed: list[tuple[Record, BaseException]] = []
        for rid, rec in w.outstanding.items():
            if rid != running_rid or graceful:
                requeue.append(rec)
                continue
            if sending and rec.size > 1:
                # It died pickling a chunk's results: run its items again one record
                # each, so the item whose result kills a worker is found and fails alone.
                requeue.extend(rec.split(k, k + 1) for k in range(rec.size))
                continue
            if rec.mode != _worker.CALL:
                if item > 0:
                    requeue.append(rec.split(0, item))  # ran, but the results died with it
                if item + 1 < rec.size:
                    requeue.append(rec.split(item + 1, rec.size))
            self._fail_running(w, rec, item, exitcode, peak_kb, sending, requeue, failed)
        tracer = self.trace or _trace.ACTIVE
        if tracer is not None:
            tracer.worker_exited(self, w, graceful, exitcode, peak_kb,
                                 w.outstanding.get(running_rid), started, failed)
        w.outstanding.clear()
        w.taking_back = None
        self.pending.extendleft(reversed(requeue))
        was_ready = w.ready
        self._forget_worker(w)
        try:
            self._replace(w, was_ready, graceful, exitcode)
        finally:
            # Reported after the replacement has started, so a caller that sees the
            # failure also sees the pool as it now is (statistics, worker pids).
            for single, exc in failed:
                single.call.complete(single, [None], {0: exc}, set())
                single.call.flush()

    def _replace(self, w: WorkerHandle, was_ready: bool, graceful: bool, exitcode: int | None
                 ) -> None:
        if self._terminating or (self._closing and not self.pending and not self._busy()):
            return
        if not was_ready and not graceful:
            self._start_failures += 1
            if self._start_failures >= _START_FAILURES:
                where = ("while running the pool's initializer" if self._has_initializer
                         else "while starting")
                how = (f"was killed by {signal.Signals(-exitcode).name}"
                       if exitcode is not None and exitcode < 0 else f"exited with code {exitcode}")
                self._init_failed(WorkerStartError(
                    f"{_START_FAILURES} workers in a row exited before they were ready "
                    f"({where}); the last one {how}"))
                return
        self.workers_replaced += 1
        self._start_worker(w.index)

    def _fail_running(self, w: WorkerHandle, rec: Record, item: int, exitcode: int | None,
                      peak_kb: int, sending: bool, requeue: list[Record],
                      failed: list[tuple[Record, BaseException]]) -> None:
        call = rec.call
        index = call.task_index(rec.base + (0 if rec.mode == _worker.CALL else item))
        single = rec if rec.mode == _worker.CALL else rec.split(item, item + 1)
        reason, _ = w.kill_reason or ("lost", None)
        if reason == "cancelled":
            failed.append((single, CancelledError("cancelled while running")))
            return
        if reason == "timeout":
            exc: BaseException = TaskTimeoutError(
                index, call.label(single.item(0)), call.timeout or 0.0, w.pid)
        else:
            if single.attempts < call.retries:
                single.attempts += 1  # only the running task uses an attempt
                requeue.append(single)
                return
            guess = None
            if exitcode == -signal.SIGKILL and w.kill_reason is None:
                guess = ("killed by SIGKILL from outside the pool; the kernel's out-of-memory "
                         "killer is the usual sender")
            exc = WorkerLostError(index, call.label(single.item(0)), w.pid, exitcode,
                                  peak_kb * 1024 if peak_kb > 0 else None, guess,
                                  "sending its result" if sending else None)
        failed.append((single, exc))

    def _check_timeouts(self) -> None:
        now = time.monotonic_ns()
        for w in self._workers:
            if w is None or not w.outstanding or w.kill_reason is not None:
                continue
            slot = w.index * _worker.SLOT_SIZE
            rec = w.outstanding.get(self._slots[slot + _worker.SLOT_RECORD])
            if rec is None or not rec.call.timeout:
                continue
            started = self._slots[slot + _worker.SLOT_STARTED_NS]
            if now - started > rec.call.timeout * 1e9:
                self._kill(w, "timeout", rec.rid)

    def _init_failed(self, exc: BaseException) -> None:
        if not isinstance(exc, WorkerStartError):
            err = WorkerStartError(f"the pool's initializer raised {type(exc).__name__}: {exc}")
            err.__cause__ = exc
            exc = err
        self.broken = exc
        self._terminating = True
        self._abort_all(exc)
        self.command(Command.TERMINATE)
