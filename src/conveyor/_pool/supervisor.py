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

Work is never lost at interpreter exit: as ``concurrent.futures`` does, a hook run
before Python joins its threads closes every pool of this process and waits for the
work already submitted (``Pool.terminate()`` or ``shutdown(cancel_futures=True)`` is
the way to drop it); a submit after that point raises ``PoolClosedError``.
"""

from __future__ import annotations

import math
import os
import pickle
import select
import signal
import threading
import time
import warnings
import weakref
from collections import OrderedDict, deque
from concurrent.futures import CancelledError
from typing import TYPE_CHECKING, Any

from conveyor._ipc import frames as _frames
from conveyor._ipc import serialize as _serialize
from conveyor._pool import worker as _worker
from conveyor._pool.seam import Command, KillReason, TaskCall
from conveyor._pool.seam import Record as Record  # re-exported: _flow.pipeline imports it here
from conveyor.errors import (
    ConveyorError,
    PoolClosedError,
    RemoteTraceback,
    SerializationError,
    TaskTimeoutError,
    WorkerLostError,
    WorkerStartError,
)

if TYPE_CHECKING:
    from multiprocessing.context import BaseContext

# How much queued work (in worker time) each worker is given beyond the task it runs.
_TARGET_QUEUE_NS = 4_000_000
_MAX_DEPTH = 512
_MAX_PENDING_BYTES = 8 << 20
_TERM_GRACE = 0.5
_NO_ERRORS: dict[int, BaseException] = {}
_NO_SKIP: frozenset[int] = frozenset()
_TAKE_BACK_AFTER_NS = 1_000_000  # a record running this long may have its queue taken back
_CONFIRM_NS = 1_000_000  # from writing a take-back range to reading the worker's claim
_START_FAILURES = 3  # workers in a row that exit before they are ready: the pool is broken

# The supervisors of this process, so that interpreter exit can finish their work (the
# ``concurrent.futures`` rule). Weak: a pool that is gone needs nothing at exit.
_live: weakref.WeakSet[Supervisor] = weakref.WeakSet()
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
    for sup in mine:
        sup.join()


class _Worker:
    __slots__ = (
        "index",
        "kill_reason",
        "known_fns",
        "outstanding",
        "process",
        "reader",
        "ready",
        "retiring",
        "sentinel",
        "taking_back",
        "writer",
    )

    def __init__(self, index: int, process: Any, writer: _frames.FrameWriter,
                 reader: _frames.FrameReader) -> None:
        self.index = index
        self.process = process
        self.writer = writer
        self.reader = reader
        self.sentinel: int = process.sentinel
        self.outstanding: OrderedDict[int, Record] = OrderedDict()
        self.known_fns: OrderedDict[int, None] = OrderedDict()
        self.ready = False
        self.retiring = False
        self.kill_reason: tuple[KillReason, Any] | None = None
        # A take-back in progress: (when the range was written, the record the worker
        # was running then, the record ids asked back).
        self.taking_back: tuple[int, int, list[int]] | None = None

    @property
    def pid(self) -> int:
        return int(self.process.pid)


class Supervisor:
    """Owns a pool's workers and its one thread. Used only through ``_pool.Pool``."""

    def __init__(
        self,
        ctx: BaseContext,
        workers: int,
        init: tuple[bytes, Any, bool] | None,
        maxtasks: int | None,
        max_memory: int | None,
    ) -> None:
        self._ctx = ctx
        self._nworkers = workers
        self._init = init
        self._maxtasks = maxtasks
        self._max_memory = max_memory
        from conveyor._ipc.segment import _start_time

        self._owner = (os.getpid(), _start_time(os.getpid()))
        self.owner_pid = os.getpid()
        # Callers append to ``pending`` under this lock, and close() flips ``accepting``
        # under it: a submit racing with close() either lands before the close command
        # (and runs) or raises PoolClosedError, never in between.
        self.intake = threading.Lock()
        self.accepting = True
        self.refusal = "the pool is closed"
        self._has_initializer = init is not None
        self._status = _worker.status_block(workers)
        self._slots = _worker.status_view(self._status)
        for i in range(0, workers * _worker.SLOT_SIZE, _worker.SLOT_SIZE):
            self._slots[i] = -1
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
        self._fd_owner: dict[int, tuple[str, _Worker]] = {}
        self._workers: list[_Worker | None] = [None] * workers
        # Running mean of a record's run time in a worker, per function: a new function
        # starts unknown (shallow queues) instead of inheriting another one's speed.
        self._avg_ns: dict[int, float] = {}
        self._closing = False
        self._terminating = False
        self.broken: BaseException | None = None
        self.stopped = threading.Event()
        self._start_failures = 0
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

    def stop_intake(self, reason: str) -> None:
        """Refuse every later submit() with ``reason``; what was queued still runs."""
        with self.intake:
            if self.accepting:
                self.accepting = False
                self.refusal = reason

    def close(self) -> None:
        self.stop_intake("the pool is closed; no new work can be submitted")
        self.command(Command.CLOSE)

    def terminate(self) -> None:
        self.stop_intake("the pool was terminated; no new work can be submitted")
        self.command(Command.TERMINATE)

    def join(self, timeout: float | None = None) -> bool:
        if threading.current_thread() is self._thread:
            return False
        self._thread.join(timeout)
        return not self._thread.is_alive()

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
            child_task.close()
            child_result.close()
        w = _Worker(index, process, _frames.FrameWriter(task_w), _frames.FrameReader(result_r))
        self._workers[index] = w
        self._fd_owner[result_r] = ("result", w)
        self._fd_owner[w.sentinel] = ("sentinel", w)
        self._fd_owner[task_w] = ("write", w)
        self._poll.register(result_r, select.POLLIN)
        self._poll.register(w.sentinel, select.POLLIN)

    def _die_with_parent(self) -> bool:
        # PR_SET_PDEATHSIG follows the thread that forked the worker, so ask for it only
        # when that thread lives as long as the pool: the main thread or the supervisor.
        # Under forkserver the forker is the server's main thread.
        if self._ctx.get_start_method() == "forkserver":
            return True
        current = threading.current_thread()
        return current is threading.main_thread() or current.name == "conveyor-pool-supervisor"

    def _forget_worker(self, w: _Worker) -> None:
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

    def _kill(self, w: _Worker, reason: KillReason, arg: Any = None,
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
        if any(w is not None and w.taking_back is not None for w in self._workers):
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

    # -------------------------------------------------------------------------- dispatch

    def _depth(self) -> int:
        """How many records a worker may hold, judged by the function at the queue's head."""
        avg = self._avg_ns.get(self.pending[0].call.fn_id, 0.0) if self.pending else 0.0
        if avg <= 0:
            return 2
        return max(2, min(_MAX_DEPTH, 1 + math.ceil(_TARGET_QUEUE_NS / avg)))

    def _usable(self) -> list[_Worker]:
        """Workers that may be given tasks: the ready ones; or, while none is ready yet
        (a fresh pool), the starting ones, so the first task need not wait for a
        round trip after start-up."""
        alive = [w for w in self._workers if w is not None and not w.retiring
                 and w.kill_reason is None]
        ready = [w for w in alive if w.ready]
        return ready or alive

    def _has_room(self) -> bool:
        # Only an idle worker is worth a wake-up: a worker with queued work will send
        # results soon, and that wakes the supervisor, which then refills it. Waking
        # for less would hand the GIL back and forth once per submit.
        return any(not w.outstanding for w in self._usable())

    def _dispatch(self) -> None:
        pending = self.pending
        if not pending:
            return
        depth = self._depth()
        ready = self._usable()
        ready.sort(key=lambda w: len(w.outstanding))
        for i, w in enumerate(ready):
            if not pending:
                break
            # An even share of what is queued, so one idle worker does not take it all.
            share = -(-len(pending) // (len(ready) - i))
            room = min(depth - len(w.outstanding), share)
            if room <= 0 or w.writer.pending_bytes > _MAX_PENDING_BYTES:
                continue
            batch = []
            datas: list[bytes] = []
            size = 0
            known = w.known_fns
            while pending and room > 0 and size < _MAX_PENDING_BYTES:
                rec = pending.popleft()
                call = rec.call
                if not call.start(rec):
                    continue  # cancelled before it ran
                self._next_rid += 1
                rec.rid = self._next_rid
                fn_id = call.fn_id
                if fn_id in known:
                    known.move_to_end(fn_id)
                    fn_bytes = None
                else:
                    known[fn_id] = None
                    if len(known) > _worker.FN_CACHE_SIZE:
                        known.popitem(last=False)
                    fn_bytes = call.fn_bytes
                # The arguments travel beside the pickled list, not inside it: a large
                # argument is then not copied once more into the list's pickle, nor
                # out of it in the worker.
                mode = rec.mode | _worker.TIMED if call.timeout else rec.mode
                batch.append((rec.rid, fn_id, fn_bytes, mode, len(rec.data)))
                datas.append(rec.data)
                w.outstanding[rec.rid] = rec
                size += len(rec.data)
                room -= 1
            if batch:
                head = pickle.dumps(batch, _serialize.PROTOCOL)
                w.writer.push(_worker.TASKS, [_worker.HEAD_LEN.pack(len(head)), head, *datas])
                self._flush(w)

    def _flush(self, w: _Worker) -> None:
        try:
            done = w.writer.flush()
        except OSError:
            done = True  # the worker is gone; its sentinel tells us the rest
        try:
            if done:
                self._poll.unregister(w.writer.fd)
            else:
                self._poll.register(w.writer.fd, select.POLLOUT)
        except (KeyError, ValueError):
            pass

    # ------------------------------------------------------------------------- take-back

    def _take_back(self) -> None:
        """Ask a busy worker for its queued records when another worker has nothing to do
        (see the module docstring), and confirm the asks made a poll round ago."""
        now = time.monotonic_ns()
        slots = self._slots
        for w in self._workers:
            if w is None or w.taking_back is None:
                continue
            asked_at, running, rids = w.taking_back
            if now - asked_at < _CONFIRM_NS:
                continue
            w.taking_back = None
            if slots[w.index * _worker.SLOT_SIZE + _worker.SLOT_RECORD] != running:
                continue  # it moved on: it reports each record it skips as REVOKED
            back = [rec for rec in (w.outstanding.pop(rid, None) for rid in rids)
                    if rec is not None]
            self.pending.extendleft(reversed(back))
        if self.pending or not any(not w.outstanding for w in self._usable()):
            if self.pending:
                self._dispatch()
            return
        for w in self._workers:
            if (w is None or len(w.outstanding) < 2 or w.taking_back is not None
                    or w.kill_reason is not None):
                continue
            base = w.index * _worker.SLOT_SIZE
            running = slots[base + _worker.SLOT_RECORD]
            if running not in w.outstanding:
                continue  # between records: it takes the next one in a moment
            if now - slots[base + _worker.SLOT_STARTED_NS] < _TAKE_BACK_AFTER_NS:
                continue
            rids = [rid for rid in w.outstanding if rid > running]
            if not rids:
                continue
            # The worker reads LO, then HI: write HI first. An earlier range's low end
            # stays, since records of it may still be waiting in the pipe to be skipped.
            slots[base + _worker.SLOT_REVOKE_HI] = rids[-1]
            if not slots[base + _worker.SLOT_REVOKE_LO]:
                slots[base + _worker.SLOT_REVOKE_LO] = rids[0]
            w.taking_back = (now, running, rids)

    # --------------------------------------------------------------------------- results

    def _read_results(self, w: _Worker) -> None:
        frames, _eof = w.reader.read()
        for kind, payload in frames:
            if kind == _worker.RESULTS:
                self._handle_results(w, payload)
            elif kind == _worker.READY:
                w.ready = True
                self._start_failures = 0
                self.needs_work = True
            elif kind == _worker.RETIRE:
                w.retiring = True
            elif kind == _worker.INIT_FAILED:
                try:
                    exc = _decode_exception(*pickle.loads(payload))
                except BaseException as err:
                    exc = WorkerStartError(f"the pool's initializer failed, and its error "
                                           f"could not be unpickled: {err!r}")
                self._init_failed(exc)

    def _handle_results(self, w: _Worker, payload: bytearray) -> None:
        view = memoryview(payload)
        (head_len,) = _worker.HEAD_LEN.unpack_from(view, 0)
        offset = _worker.HEAD_LEN.size + head_len
        heads = pickle.loads(view[_worker.HEAD_LEN.size:offset])
        calls: dict[TaskCall, None] = {}
        revoked: list[Record] = []
        loads = pickle.loads
        for rid, status, size, elapsed in heads:
            blob = view[offset:offset + size]
            offset += size
            rec = w.outstanding.pop(rid, None)
            if rec is None:
                continue  # taken back already, or failed at a death
            if status == _worker.REVOKED:
                revoked.append(rec)
                continue
            n = rec.size
            rec.elapsed_ns = elapsed
            rec.worker = w.index
            fn_id = rec.call.fn_id
            avg = self._avg_ns.get(fn_id)
            self._avg_ns[fn_id] = elapsed if avg is None else avg + (elapsed - avg) * 0.2
            self.tasks_done += n
            call = rec.call
            try:
                value = loads(blob)
            except BaseException as load_error:  # task data must never stop the supervisor
                err = _unpickle_error(rec, bytes(blob), load_error, status)
                call.complete(rec, [None] * n, dict.fromkeys(range(n), err), _NO_SKIP)
                calls[call] = None
                continue
            if status == _worker.OK:  # the hot path: no allocations beyond the tuple
                call.complete(rec, (value,) if rec.mode == _worker.CALL else value, _NO_ERRORS,
                              _NO_SKIP)
                if call.progress is not None or rec.mode != _worker.CALL:
                    calls[call] = None
                continue
            errors: dict[int, BaseException]
            if status == _worker.FAILED:
                failure = _decode_exception(*value)
                values = [None] * n
                errors = dict.fromkeys(range(n), failure)
            else:
                values, raw = value
                errors = {k: _decode_exception(*v) for k, v in raw.items()}
            skip: set[int] = set()
            if errors:
                skip = self._retry_on_exception(rec, errors)
                if skip and rec.mode == _worker.CALL:
                    continue
            call.complete(rec, values, errors, skip)
            calls[call] = None
        view.release()
        if revoked:
            self.pending.extendleft(reversed(revoked))
        for call in calls:
            call.flush()

    def _retry_on_exception(self, rec: Record, errors: dict[int, BaseException]) -> set[int]:
        """Queue again the failed items whose exception the call retries; return them.
        Each retried item uses one of its own attempts, not its chunk's."""
        retry_on = rec.call.retry_on
        if not retry_on or rec.attempts >= rec.call.retries:
            return set()
        retried = set()
        for k, exc in errors.items():
            if isinstance(exc, retry_on):
                again = rec if rec.mode == _worker.CALL else rec.split(k, k + 1)
                again.attempts = rec.attempts + 1
                self.pending.appendleft(again)
                retried.add(k)
        return retried

    # ---------------------------------------------------------------------------- deaths

    def _worker_exited(self, w: _Worker) -> None:
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

    def _replace(self, w: _Worker, was_ready: bool, graceful: bool, exitcode: int | None
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

    def _fail_running(self, w: _Worker, rec: Record, item: int, exitcode: int | None,
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


def _decode_exception(data: bytes, tb: str) -> BaseException:
    try:
        exc: BaseException = pickle.loads(data)
    except BaseException as err:  # even a SystemExit from __setstate__: data, not a command
        exc = ConveyorError(f"an exception from the worker could not be unpickled: {err!r}")
    exc.__cause__ = RemoteTraceback(tb)
    return exc


def _unpickle_error(rec: Record, blob: bytes, exc: BaseException, status: int
                    ) -> SerializationError:
    what = "result" if status == _worker.OK else "exception"
    call = rec.call
    index = call.task_index(rec.base)
    label = call.label(rec.item(0)) if rec.size == 1 else f"{call.fn_name} (chunk)"
    err = SerializationError(
        f"the {what} of task {index} {label} could not be unpickled in the parent "
        f"({_serialize.pickled_type_name(blob)}): {type(exc).__name__}: {exc}",
        what=what, task_index=index)
    err.__cause__ = exc if isinstance(exc, Exception) else None
    return err

