"""The pool's supervisor: one thread that owns the workers and moves all work.

Data flow::

    caller threads                supervisor thread                    worker processes
    --------------                -----------------                    ----------------
    submit / map / imap  --->  pending deque  --(wake pipe)-->  poll()
      (pickle args here)         |                               |
                                 +-- dispatch: frames of tasks --+--> task pipe  --> run
                                 |   (bounded depth per worker)  |                    |
    futures / results   <---  complete(record)  <-- frames  <----+--- result pipe <--+
                                 |
                                 +-- sentinels: a worker exited -> which task? (status slot)
                                 +-- timeouts: status slot says since when a task runs

Actors:

* **Callers** build :class:`Record` s (one function call, or a chunk of items), pickle
  their arguments in their own thread (so a pickling error is raised at the call, naming
  the task) and append them to the pending deque. They wake the supervisor through a
  pipe only when it may be asleep.
* **The supervisor** (this module, one named thread per pool) waits with ``poll`` on
  every worker's result pipe, every worker's process sentinel and its wake-up pipe, all
  at once; it never sleep-polls and never blocks on a pipe write (see ``_frames``).
  It decides which worker runs what, so it always knows which records a worker holds.
* **Workers** (``_worker``) run records in order and write, in their slot of a shared
  status array, the record and item they are running and since when.

When a worker dies, the supervisor drains its result pipe, reads its slot, fails exactly
the task that was running (``WorkerLostError``, or ``TaskTimeoutError`` if the
supervisor killed it for overrunning), sends the records it had not started back to
the front of the queue, re-runs the finished-but-unreported items of a chunk, and starts
a replacement. No lock is shared between workers, so a dead worker cannot leave one held.
Retries are counted per task: only the task that was running when its worker died (or
whose exception is in ``retry_on``) uses one of its attempts.

No task waits behind another while a worker is idle. A worker is given a few records
ahead (so tiny tasks do not wait for a round trip each), but when a worker has nothing
to do, nothing is queued, and another worker holds records queued behind one that has
run for over a millisecond, the supervisor takes those records back (the *take-back*):
it writes their id range into the busy worker's slot, and one poll round later (>= 1 ms,
by when each side's stores are visible to the other: context switches and cache
coherence drain store buffers within microseconds) reads the worker's claim. If the
worker is still on the record it was running, none of the range can have been claimed
before the range was visible, so the records go back to the queue at once; otherwise
the worker reports each record of the range it skipped (``REVOKED``) and the rest ran.

The supervisor is one object on one thread, written in parts: this module (the loop,
commands, worker lifetime, shutdown), ``dispatch`` (who runs what, take-back),
``reading`` (result frames, retries on exception) and ``deaths`` (exits, timeouts,
replacements); ``state`` declares the fields they share. The parts are mixins rather
than separate objects so the per-result path pays no extra indirection.

Work is never lost at interpreter exit: as ``concurrent.futures`` does, a hook run
before Python joins its threads closes every pool of this process and waits for the
work already submitted (``Pool.terminate()`` or ``shutdown(cancel_futures=True)`` is
the way to drop it); a submit after that point raises ``PoolClosedError``.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time
import warnings
import weakref
from collections import deque
from concurrent.futures import CancelledError
from typing import TYPE_CHECKING, Any

from conveyor._ipc import frames as _frames
from conveyor._pool import worker as _worker
from conveyor._pool.deaths import DeathHandler
from conveyor._pool.dispatch import Dispatcher
from conveyor._pool.reading import ResultReader
from conveyor._pool.seam import Command, KillReason, Runner, RunnerLifecycle, TaskCall
from conveyor._pool.seam import Record as Record  # re-exported: _flow.pipeline imports it here
from conveyor._pool.state import FdKind, WorkerHandle
from conveyor._trace import _recorder as _trace
from conveyor.errors import (
    PoolClosedError,
)

if TYPE_CHECKING:
    from multiprocessing.context import BaseContext

_TERM_GRACE = 0.5

# The supervisors of this process, so that interpreter exit can finish their work (the
# ``concurrent.futures`` rule). Weak: a pool that is gone needs nothing at exit.
_live: weakref.WeakSet[Runner] = weakref.WeakSet()  # a cluster's DaskBackend too
_exit_hook_lock = threading.Lock()
_exit_hook_registered = False
_interpreter_exiting = False


def _register_exit_hook() -> None:
    global _exit_hook_registered
    with _exit_hook_lock:
        if _exit_hook_registered:
            return
        try:
            # Runs before the interpreter joins non-daemon threads and before atexit
            # handlers, which is where concurrent.futures joins its pools too.
            threading._register_atexit(_finish_at_exit)  # type: ignore[attr-defined]
        except RuntimeError:  # already shutting down: submit() refuses work then
            return
        _exit_hook_registered = True


def _finish_at_exit() -> None:
    global _interpreter_exiting
    _interpreter_exiting = True
    mine = [sup for sup in list(_live) if sup.owner_pid == os.getpid()]
    for sup in mine:
        sup.stop_intake("the interpreter is shutting down")
        sup.close()
    try:
        for sup in mine:
            sup.join()
    except KeyboardInterrupt:
        # Ctrl-C while exit waits for submitted work: the user wants out, so the work
        # is dropped (as terminate() drops it) and the workers are stopped now.
        for sup in mine:
            sup.terminate()
        for sup in mine:
            sup.join()
        raise


class Supervisor(RunnerLifecycle, Dispatcher, ResultReader, DeathHandler):
    """Owns a pool's workers and its one thread. Used only through ``_pool.Pool``."""

    def __init__(
        self,
        ctx: BaseContext,
        workers: int,
        init: tuple[bytes, Any, bool] | None,
        maxtasks: int | None,
        max_memory: int | None,
        trace: Any = None,
    ) -> None:
        self._ctx = ctx
        self.trace: _trace.Recorder | None = trace  # Pool(trace=...): this pool's own
        self.tracing = trace  # what traced records go to: the trace of the last traced submit
        self._nworkers = workers
        self._init = init
        self._maxtasks = maxtasks
        self._max_memory = max_memory
        from conveyor._ipc.identity import start_time as _start_time

        self._owner = (os.getpid(), _start_time(os.getpid()))
        self.owner_pid = os.getpid()
        # Callers append to ``pending`` under this lock, and close() flips ``accepting``
        # under it: a submit racing with close() either lands before the close command
        # (and runs) or raises PoolClosedError, never in between.
        self._open_intake()
        self._has_initializer = init is not None
        self._status = _worker.status_block(workers)
        self._slots = _worker.status_view(self._status)
        # The block comes from multiprocessing's heap, which reuses the memory of freed
        # blocks (an earlier pool's slots) as it is: every field starts from zero here. A
        # stale take-back range once made a worker run a record the supervisor had taken
        # back and sent elsewhere (the record ran twice).
        for i in range(workers * _worker.SLOT_SIZE):
            self._slots[i] = 0
        for i in range(0, workers * _worker.SLOT_SIZE, _worker.SLOT_SIZE):
            self._slots[i + _worker.SLOT_RECORD] = -1
        self.pending: deque[Record] = deque()
        self._next_rid = 0
        self._woken = False
        self.needs_work = True
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._commands: deque[tuple[Command, Any]] = deque()
        self._handlers = {
            Command.CLOSE: self._cmd_close,
            Command.TERMINATE: self._cmd_terminate,
            Command.CANCEL_PENDING: self._cmd_cancel_pending,
            Command.CANCEL_RUNNING: self._cmd_cancel_running,
        }
        self._poll = select.poll()
        self._poll.register(self._wake_r, select.POLLIN)
        self._fd_owner: dict[int, tuple[FdKind, WorkerHandle]] = {}
        self._workers: list[WorkerHandle | None] = [None] * workers
        # Running mean of a record's run time in a worker, per function: a new function
        # starts unknown (shallow queues) instead of inheriting another one's speed.
        self._avg_ns: dict[int, float] = {}
        self._closing = False
        self._terminating = False
        self.broken: BaseException | None = None
        self.stopped = threading.Event()
        self._start_failures = 0
        self._take_back_soon = False
        self.tasks_done = 0
        self.timeouts_used = False
        self.workers_replaced = 0
        self.after_stop: Any = None  # called once the thread has stopped (GC'd pools)
        try:
            for i in range(workers):
                self._start_worker(i)
        except BaseException:
            # A constructor that fails part-way (too many open files, ...) leaves
            # nothing behind: the workers already started are stopped.
            self._terminating = True
            self._shutdown_workers()
            os.close(self._wake_r)
            os.close(self._wake_w)
            raise
        self._thread = threading.Thread(target=self._run, name="conveyor-pool-supervisor",
                                        daemon=True)
        self._thread.start()
        _live.add(self)
        _register_exit_hook()

    # ------------------------------------------------------------ called from any thread

    def submit(self, records: list[Record]) -> None:
        """Queue records; raises PoolClosedError once the pool takes no more work."""
        tracer = self.trace or _trace.ACTIVE
        if tracer is not None:  # marked before the supervisor thread can see them
            self.tracing = tracer.submitted(records)
        with self.intake:
            if not self.accepting or _interpreter_exiting:
                raise PoolClosedError(self.refusal if not self.accepting else
                                      "the interpreter is shutting down; no new work "
                                      "can be submitted")
            self.pending.extend(records)
        # Waking the supervisor costs a GIL hand-off between threads; when every worker
        # already has work, the results they send will wake it anyway.
        if self.needs_work:
            self.wake()

    def wake(self) -> None:
        if not self._woken:
            self._woken = True
            try:
                os.write(self._wake_w, b"\0")
            except (BlockingIOError, OSError):
                pass  # already full of wake-ups, or closed at shutdown

    def command(self, cmd: Command, arg: Any = None) -> None:
        self._commands.append((cmd, arg))
        self._woken = False
        self.wake()

    def worker_pids(self) -> list[int]:
        return [w.pid for w in self._workers if w is not None]

    # ------------------------------------------------------------------ worker lifetime

    def _start_worker(self, index: int) -> None:
        task_r, task_w = _frames.make_pipe()
        result_r, result_w = _frames.make_pipe()
        from multiprocessing.connection import Connection

        child_task = Connection(task_r, writable=False)
        child_result = Connection(result_w, readable=False)
        process = self._ctx.Process(  # type: ignore[attr-defined]
            target=_worker.worker_main,
            args=(
                child_task, child_result, self._status, index, self._init,
                self._maxtasks, self._max_memory, self._die_with_parent(), self._owner,
            ),
            name=f"conveyor-worker-{index}",
            # Not daemonic, so a task may start processes of its own (a nested pool,
            # multiprocessing.Process). Workers still never outlive the pool: they
            # watch it (see _worker), and the pool joins them at interpreter exit.
            daemon=False,
        )
        # A worker starts with SIGINT blocked (a child inherits the mask across fork and
        # exec) and ignores it before unblocking: a Ctrl-C to the process group during
        # its start-up must not kill it with a traceback before worker_main ignores
        # SIGINT. (CPython's resource tracker is launched the same way.) Under
        # forkserver the server forks, so the mask here does not matter, and blocking
        # it could leave the server, started lazily by this very call, with SIGINT
        # blocked for good.
        mask = {signal.SIGINT} if self._ctx.get_start_method() != "forkserver" else set()
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, mask)
        try:
            with warnings.catch_warnings():
                # CPython 3.12+ warns when forking a multi-threaded process (gh-100228);
                # the child runs only the worker loop, which takes none of the parent's
                # locks.
                warnings.simplefilter("ignore", DeprecationWarning)
                process.start()
        except BaseException:
            for fd in (task_w, result_r):
                os.close(fd)
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            child_task.close()
            child_result.close()
        w = WorkerHandle(index, process, _frames.FrameWriter(task_w), _frames.FrameReader(result_r))
        self._workers[index] = w
        self._fd_owner[result_r] = ("result", w)
        self._fd_owner[w.sentinel] = ("sentinel", w)
        self._fd_owner[task_w] = ("write", w)
        self._poll.register(result_r, select.POLLIN)
        self._poll.register(w.sentinel, select.POLLIN)
        self._trace_event(w, _trace.START)

    def _trace_event(self, w: WorkerHandle, kind: int) -> None:
        tracer = self.trace or _trace.ACTIVE
        if tracer is not None:
            tracer.worker_event(self, w, kind)

    def _die_with_parent(self) -> bool:
        # PR_SET_PDEATHSIG follows the thread that forked the worker, so ask for it only
        # when that thread lives as long as the pool: the main thread or the supervisor.
        # Under forkserver the forker is the server's main thread.
        if self._ctx.get_start_method() == "forkserver":
            return True
        current = threading.current_thread()
        return current is threading.main_thread() or current.name == "conveyor-pool-supervisor"

    def _forget_worker(self, w: WorkerHandle) -> None:
        for fd in (w.reader.fd, w.sentinel, w.writer.fd):
            self._fd_owner.pop(fd, None)
            try:
                self._poll.unregister(fd)
            except KeyError:
                pass
        for fd in (w.reader.fd, w.writer.fd):
            try:
                os.close(fd)
            except OSError:
                pass
        if self._workers[w.index] is w:
            self._workers[w.index] = None

    def _kill(self, w: WorkerHandle, reason: KillReason, arg: Any = None,
              sig: int = signal.SIGKILL) -> None:
        if w.kill_reason is None:
            w.kill_reason = (reason, arg)
        try:
            os.kill(w.pid, sig)
        except ProcessLookupError:
            pass

    # ---------------------------------------------------------------------- the thread

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # a bug here must fail the work, not hang it
            self.broken = exc
            self._abort_all(exc)
        finally:
            self.stop_intake(self.refusal if self.broken is None else
                             f"the pool is broken: {self.broken}")
            try:
                self._shutdown_workers()
            finally:
                # What was queued after the last look (a race with a failure) is
                # failed, not left pending.
                self._abort_all(self.broken or PoolClosedError("the pool stopped"))
                os.close(self._wake_r)
                os.close(self._wake_w)
                if self.trace is not None:
                    self.trace.pool_stopped(self)
                self.stopped.set()
                if self.after_stop is not None:
                    self.after_stop()

    def _loop(self) -> None:
        while True:
            self._woken = False
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
            while self._commands:
                cmd, arg = self._commands.popleft()
                self._handlers[cmd](arg)
            if self._terminating:
                return
            # Set before looking at the queue, so a submitter that reads False has
            # appended before the look (see submit()).
            self.needs_work = True
            self._dispatch()
            self.needs_work = self._has_room()
            if self._closing and not self.pending and not self._busy():
                return
            self._take_back()
            timeout_ms = self._poll_timeout_ms()
            for fd, _event in self._poll.poll(timeout_ms):
                owner = self._fd_owner.get(fd)
                if owner is None:
                    continue
                kind, w = owner
                if kind == "result":
                    self._read_results(w)
                elif kind == "sentinel":
                    self._worker_exited(w)
                elif kind == "write":
                    self._flush(w)
            self._check_timeouts()

    def _busy(self) -> bool:
        return any(w is not None and w.outstanding for w in self._workers)

    def _poll_timeout_ms(self) -> int | None:
        # Timeouts are checked by reading the workers' status slots, so once any call
        # has used one, the loop wakes every 20 ms; a take-back waits one millisecond
        # for its confirmation; otherwise it sleeps until an event.
        if self._take_back_soon or any(w is not None and w.taking_back is not None
                                       for w in self._workers):
            return 1
        return 20 if self.timeouts_used else None

    # -------------------------------------------------------------------------- commands

    def _cmd_close(self, _: Any) -> None:
        self._closing = True

    def _cmd_terminate(self, _: Any) -> None:
        self._terminating = True
        self._abort_all(CancelledError("the pool was terminated"))

    def _cmd_cancel_pending(self, _: Any) -> None:
        dropped = list(self.pending)
        self.pending.clear()
        _abort_calls(dropped, CancelledError("cancelled by shutdown(cancel_futures=True)"))

    def _cmd_cancel_running(self, call: TaskCall) -> None:
        for w in self._workers:
            if w is None:
                continue
            rid = self._slots[w.index * _worker.SLOT_SIZE + _worker.SLOT_RECORD]
            rec = w.outstanding.get(rid)
            if rec is not None and rec.call is call:
                self._kill(w, "cancelled", rid)

    def _abort_all(self, exc: BaseException) -> None:
        dropped = list(self.pending)
        self.pending.clear()
        for w in self._workers:
            if w is not None:
                dropped.extend(w.outstanding.values())
                w.outstanding.clear()
        _abort_calls(dropped, exc)

    def _shutdown_workers(self) -> None:
        alive = [w for w in self._workers if w is not None]
        for w in alive:
            if self._terminating or self.broken is not None:
                self._kill(w, "terminate", sig=signal.SIGTERM)
            else:
                w.writer.push(_worker.STOP, b"")  # a clean close: finish and exit
                try:
                    if not w.writer.flush():
                        self._kill(w, "terminate", sig=signal.SIGTERM)
                except OSError:
                    pass  # already gone
        deadline = time.monotonic() + _TERM_GRACE
        for w in alive:
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.exitcode is None:
                self._kill(w, "terminate")
                w.process.join()
            self._forget_worker(w)
            w.process.close()


def _abort_calls(records: list[Record], exc: BaseException) -> None:
    """Tell each call with a record among ``records`` (once per call) that it is over."""
    for call in {rec.call for rec in records}:
        call.abort(exc)
