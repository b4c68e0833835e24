"""What runs inside a worker process: the initializer, the task loop, the parent watch.

A worker reads frames of tasks from its own pipe, runs them in order and writes results
back in batches. Before each task it records, in its slot of the pool's shared status
array, which record and which item it is running, since when, and whether it is still
running the function or already pickling its result; that is how the supervisor knows
exactly which task a worker was running when it died, and which task overran its
timeout, without a message per task.

Each record's result is pickled on its own, right after the record ran, while the slot
still names the record: a result whose pickling kills the worker (a segfault, an
``os._exit`` in a ``__reduce__``) is then charged to its own task, and a result the
parent cannot unpickle fails only its own task.

Take-back: the supervisor may ask for queued records back (so that an idle worker can run
them instead of letting them wait behind a long task) by writing a range of record ids
into the slot. The worker claims each record by writing its id into the slot *before*
reading that range, and skips a record inside it, reporting it ``REVOKED``. The
supervisor writes the range first and reads the claim later (see ``_supervisor``), so
between them every record is either run here or skipped here, never both or neither.

The worker never handles SIGINT (Ctrl-C is the parent's to handle; workers print
nothing) and exits by itself when its parent dies, checked by a watch thread every
50 ms and before each task, so an orphan never starts new work.
"""

from __future__ import annotations

import os
import pickle
import resource
import select
import signal
import struct
import sys
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from conveyor._ipc import forks
from conveyor._ipc import frames as _frames
from conveyor._ipc import serialize as _serialize
from conveyor.errors import SerializationError

# Frame kinds, supervisor -> worker.
TASKS = 1
STOP = 2
# Frame kinds, worker -> supervisor.
READY = 10
INIT_FAILED = 11
RESULTS = 12
RETIRE = 13

# A TASKS frame: u64 length of the pickled task list, the list, then each task's
# pickled arguments back to back (the list gives their lengths).
# A RESULTS frame has the same shape: u64 length of the pickled list of
# (record id, status, result length, run time ns), the list, then each record's pickled
# result back to back. Results are pickled one record at a time (see the docstring).
# When records of the frame were TRACED, the head is instead a tuple: (that list, the
# TRACE_ROW of each traced record back to back, the monotonic ns just before sending,
# the id and run time of the frame's slowest traced record). The supervisor tells the two
# apart by type, once per frame, and keeps the rows as they came: untraced work pays
# nothing, traced work ~80 bytes and no Python object per record in the parent.
# ``perf_counter_ns`` and ``monotonic_ns`` both read CLOCK_MONOTONIC on Linux, one clock
# for every process of the machine.
HEAD_LEN = struct.Struct("<Q")
# record id, status, result bytes, items, argument bytes, then ns: frame read, record
# claimed, arguments unpickled, function returned, result pickled.
TRACE_ROW = struct.Struct("<10q")

# Task modes.
CALL = 0  # payload: (args, kwargs)  -> one result
MAP = 1  # payload: items            -> [fn(x) for x in items]
STARMAP = 2  # payload: items of tuples -> [fn(*x) for x in items]
MODE_MASK = 3
TIMED = 4  # flag: the call has a task_timeout, so each item's start time is recorded
TRACED = 8  # flag: a trace records this record's timestamps (see conveyor._trace)

# Result statuses.
OK = 0
FAILED = 1  # value: (exception pickle, traceback text)
PARTIAL = 2  # value: (results with None holes, {item index: (exception pickle, tb)})
REVOKED = 3  # no value: the supervisor took the record back before it started

# Slot fields in the pool's shared status array, per worker.
SLOT_RECORD = 0  # id of the record being run (or its result pickled); -1 between records
SLOT_ITEM = 1  # index of the item being run within that record
SLOT_STARTED_NS = 2  # monotonic start of that item (of the record, for untimed calls)
SLOT_PEAK_RSS_KB = 3
SLOT_PHASE = 4  # PHASE_RUN or PHASE_SEND
SLOT_REVOKE_LO = 5  # records with LO <= id <= HI are skipped (0: none)
SLOT_REVOKE_HI = 6
SLOT_SIZE = 7

PHASE_RUN = 0
PHASE_SEND = 1  # the function returned; its result is being pickled

FN_CACHE_SIZE = 128
_FLUSH_NS = 2_000_000  # send results at least every 2 ms while busy

def status_block(workers: int) -> Any:
    """Shared memory for the workers' status slots (int64 each), reachable from children
    under every start method.

    ``multiprocessing.heap.BufferWrapper`` is the allocator behind ``RawArray`` without
    the ctypes layer: importing ``multiprocessing.sharedctypes`` (and with it ctypes)
    costs ~5 ms of pool start-up. Its arena is an unlinked file, passed to spawned
    children as a file descriptor, so nothing can leak in /dev/shm. It is the one
    undocumented standard-library name this package relies on.
    """
    from multiprocessing.heap import BufferWrapper

    return BufferWrapper(workers * SLOT_SIZE * 8)


def status_view(block: Any) -> memoryview:
    # A plain memoryview: item stores cost ~30 ns, against ~80 ns through ctypes.
    return block.create_memoryview().cast("B").cast("q")  # type: ignore[no-any-return]


_NOT_IN_WORKER = object()
_state: Any = _NOT_IN_WORKER
_index: int = -1
# Set in a child forked by a task: if that child returns into the task loop, it is not
# the worker the pool started, and must leave before it runs or reports anything.
_forked_child = False


def _mark_forked_child() -> None:
    global _forked_child
    _forked_child = True


def _leave_forked_child() -> None:
    sys.stderr.write(
        f"conveyor: a task called os.fork() and the child (pid {os.getpid()}) returned into "
        "the pool's worker loop; the child exits now. End a forked child with os._exit().\n")
    sys.stderr.flush()
    os._exit(1)
_thread_state = threading.local()  # for thread stages of a pipeline
_loaded = [0, 1]  # when _run unpickled a TRACED record's arguments, and how many items


def set_thread_state(state: Any) -> None:
    """Make ``state`` what worker_state() returns in this thread (thread stages)."""
    _thread_state.value = state


def worker_state() -> Any:
    """What the pool's ``initializer`` returned, in the worker running this task.

    Build an expensive object once per worker and use it in every task::

        def load_model():
            return Model.load("weights.bin")

        def predict(x):
            return conveyor.worker_state().predict(x)

        with conveyor.Pool(initializer=load_model) as pool:
            pool.map(predict, inputs)

    Raises RuntimeError outside a conveyor worker.
    """
    in_thread = getattr(_thread_state, "value", _NOT_IN_WORKER)
    if in_thread is not _NOT_IN_WORKER:
        return in_thread
    if _state is _NOT_IN_WORKER:
        raise RuntimeError("worker_state() is only available inside a conveyor pool worker")
    return _state


def worker_index() -> int:
    """The index (0 .. workers-1) of the worker slot running this task; -1 outside one."""
    return _index


def _encode_exception(exc: BaseException) -> tuple[bytes, str]:
    frames = exc.__traceback__
    while frames is not None and frames.tb_frame.f_code.co_filename == __file__:
        frames = frames.tb_next  # the user's frames are what matter, not this loop's
    tb = "".join(traceback.format_exception(type(exc), exc, frames))
    try:
        # cloudpickle as a fallback keeps an exception class defined in __main__ the same
        # class in the parent (its class tracker maps it back), so except clauses match.
        data = _serialize.dumps_exception(exc)
        pickle.loads(data)  # an exception with a custom __init__ may not round-trip
    except BaseException:  # even a SystemExit from a __reduce__: it is the task's failure
        from conveyor.errors import RemoteError

        data = pickle.dumps(RemoteError(type(exc).__qualname__, str(exc)), _serialize.PROTOCOL)
    return data, tb


def _watch_parent(ppid: int, owner: tuple[int, str | None], die_with_parent: bool) -> None:
    # Under forkserver our parent is the fork server, which can outlive the pool's
    # process for seconds; so the pool's own process (pid and start time, which
    # rules out a recycled pid) is watched too.
    from conveyor._ipc.identity import start_time as _start_time

    if die_with_parent:
        # Loading ctypes takes ~5 ms with the GIL held; done a moment after start-up, it
        # does not delay the first task. The polling below covers the moment before.
        time.sleep(0.2)
        _die_with_parent(ppid)
    owner_pid, owner_started = owner
    while True:
        time.sleep(0.05)
        if os.getppid() != ppid or _start_time(owner_pid) != owner_started:
            os._exit(70)


def _die_with_parent(ppid: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent goes (Linux only).

    The kernel ties this to the parent *thread* that forked us; the pool forks only from
    the main thread or from its supervisor thread, both of which outlive the pool. The
    polling watch thread stays as a second line on other systems."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != ppid:  # the parent died before the request took effect
        os._exit(70)


class _FunctionCache:
    """The worker's mirror of the supervisor's per-worker function LRU (same size, same
    order of use), so a function's bytes cross the pipe once per worker."""

    def __init__(self) -> None:
        self._fns: OrderedDict[int, Callable[..., Any]] = OrderedDict()

    def get(self, fn_id: int, fn_bytes: bytes | None) -> Callable[..., Any]:
        if fn_bytes is not None:
            fn: Callable[..., Any]
            try:
                fn = pickle.loads(fn_bytes)
            except Exception as exc:
                fn = _Unloadable(exc)
            self._fns[fn_id] = fn
            if len(self._fns) > FN_CACHE_SIZE:
                self._fns.popitem(last=False)
            return fn
        self._fns.move_to_end(fn_id)
        return self._fns[fn_id]


class _Unloadable:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise SerializationError(
            f"the function could not be unpickled in the worker: {type(self.exc).__name__}: "
            f"{self.exc} (is its module importable in the worker process?)",
            what="function",
        ) from self.exc


def worker_main(
    task_conn: Any,
    result_conn: Any,
    slots: Any,
    index: int,
    init: tuple[bytes, Any, bool] | None,
    maxtasks: int | None,
    max_memory: int | None,
    die_with_parent: bool = False,
    owner: tuple[int, str | None] | None = None,
) -> None:
    """Entry point of a worker process (the ``target`` of its ``Process``)."""
    global _state, _index, _forked_child
    _forked_child = False  # a worker of a pool nested in a task is forked from a worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked by the parent
    task_fd = os.dup(task_conn.fileno())
    result_fd = os.dup(result_conn.fileno())
    task_conn.close()
    result_conn.close()
    ppid = os.getppid()
    if owner is None:
        from conveyor._ipc.identity import start_time as _start_time

        owner = (ppid, _start_time(ppid))
    threading.Thread(
        target=_watch_parent, args=(ppid, owner, die_with_parent), name="conveyor-parent-watch",
        daemon=True,
    ).start()
    _index = index
    slots = status_view(slots)
    forks.call_in_child(_mark_forked_child)

    try:
        state = None
        if init is not None:
            fn_bytes, args, args_pickled = init
            initargs = pickle.loads(args) if args_pickled else args
            state = pickle.loads(fn_bytes)(*initargs)
    except BaseException as exc:
        _frames.write_frame(result_fd, INIT_FAILED, pickle.dumps(_encode_exception(exc), _serialize.PROTOCOL))
        os._exit(0)
    _state = state
    _frames.write_frame(result_fd, READY, b"")
    try:
        _task_loop(task_fd, result_fd, slots, index, maxtasks, max_memory)
    except (EOFError, BrokenPipeError):
        pass  # the supervisor closed our pipes: the pool is gone
    # Return, not os._exit(): multiprocessing then runs this process's own finalizers
    # (a multiprocessing.Queue that a task put to flushes its buffer) and exits. It
    # cleared the finalizers inherited from the parent when the process started.


def _task_loop(
    task_fd: int,
    result_fd: int,
    slots: Any,
    index: int,
    maxtasks: int | None,
    max_memory: int | None,
) -> None:
    base = index * SLOT_SIZE
    ppid = os.getppid()
    fns = _FunctionCache()
    heads: list[tuple[int, int, int, int]] = []
    blobs: list[bytes] = []
    traced = bytearray()
    slowest = [0, -1]  # run ns and id of the slowest traced record not yet sent
    first_unsent = 0
    done = 0
    page = os.sysconf("SC_PAGE_SIZE")
    limited = maxtasks is not None or max_memory is not None
    poller = select.poll()
    poller.register(task_fd, select.POLLIN)

    def flush() -> None:
        nonlocal first_unsent
        slots[base + SLOT_PEAK_RSS_KB] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if traced:
            head = pickle.dumps((heads, bytes(traced), time.monotonic_ns(), slowest[1],
                                 slowest[0]), _serialize.PROTOCOL)
            traced.clear()
            slowest[0] = 0
        else:
            head = pickle.dumps(heads, _serialize.PROTOCOL)
        _frames.write_frame(result_fd, RESULTS, [HEAD_LEN.pack(len(head)), head, *blobs])
        heads.clear()
        blobs.clear()
        first_unsent = 0

    while True:
        if heads and not poller.poll(0):
            flush()  # nothing more queued: don't sit on finished results
        kind, payload = _frames.read_frame(task_fd)
        got = time.monotonic_ns()
        if kind == STOP:
            if heads:
                flush()
            return
        if os.getppid() != ppid:
            os._exit(70)  # orphaned: start nothing new
        view = memoryview(payload)
        (head_len,) = HEAD_LEN.unpack_from(view, 0)
        offset = HEAD_LEN.size + head_len
        for rec_id, fn_id, fn_bytes, mode, size in pickle.loads(view[HEAD_LEN.size:offset]):
            data = view[offset:offset + size]
            offset += size
            fn = fns.get(fn_id, fn_bytes)
            slots[base + SLOT_ITEM] = 0
            slots[base + SLOT_STARTED_NS] = time.monotonic_ns()
            slots[base + SLOT_RECORD] = rec_id  # the claim: written before the range is read
            revoke_lo = slots[base + SLOT_REVOKE_LO]
            if revoke_lo and revoke_lo <= rec_id <= slots[base + SLOT_REVOKE_HI]:
                slots[base + SLOT_RECORD] = -1
                heads.append((rec_id, REVOKED, 0, 0))
                continue
            t0 = time.perf_counter_ns()
            status, blob, elapsed = _run_and_dump(fn, mode, data, slots, base, t0)
            heads.append((rec_id, status, len(blob), elapsed))
            blobs.append(blob)
            if mode & TRACED:
                _trace_row(traced, slowest, rec_id, status, len(blob), size, got, t0, elapsed)
            if not first_unsent:
                first_unsent = t0
            done += 1
            if time.perf_counter_ns() - first_unsent > _FLUSH_NS:
                flush()
            retire = _retire_reason(done, maxtasks, max_memory, page) if limited else None
            if retire:
                if heads:
                    flush()
                _frames.write_frame(result_fd, RETIRE, retire.encode())
                return


def _run_and_dump(fn: Callable[..., Any], mode: int, data: memoryview, slots: Any, base: int,
                  t0: int) -> tuple[int, bytes, int]:
    """Run one record (started at ``t0``) and pickle its result; the slot's phase says
    which of the two the worker is in (a death while pickling is charged to the task)."""
    status, value = _run(fn, mode, data, slots, base)
    elapsed = time.perf_counter_ns() - t0
    if _forked_child:
        _leave_forked_child()
    slots[base + SLOT_PHASE] = PHASE_SEND
    status, blob = _dump_result(status, value)
    if _forked_child:
        _leave_forked_child()  # forked by the result's __reduce__
    slots[base + SLOT_RECORD] = -1
    slots[base + SLOT_PHASE] = PHASE_RUN
    return status, blob, elapsed


def _trace_row(traced: bytearray, slowest: list[int], rec_id: int, status: int, blob_len: int,
               size: int, got: int, t0: int, elapsed: int) -> None:
    """Append a TRACED record's timestamps (see TRACE_ROW) to the frame's trace rows."""
    loaded, items = _loaded if _loaded[0] >= t0 else (t0, 1)  # args unpicklable
    traced += TRACE_ROW.pack(rec_id, status, blob_len, items, size, got, t0,
                             loaded, t0 + elapsed, time.monotonic_ns())
    if elapsed >= slowest[0]:
        slowest[:] = elapsed, rec_id


def _retire_reason(done: int, maxtasks: int | None, max_memory: int | None, page: int
                   ) -> str | None:
    """Why this worker should leave now (a lifespan limit reached), or None."""
    if maxtasks is not None and done >= maxtasks:
        return f"reached maxtasksperchild={maxtasks}"
    if max_memory is not None:
        with open("/proc/self/statm", "rb") as f:
            rss = int(f.read().split()[1]) * page
        if rss > max_memory:
            return f"resident memory {rss} > max_worker_memory={max_memory}"
    return None


def _run(fn: Callable[..., Any], mode: int, data: memoryview, slots: Any, base: int
         ) -> tuple[int, Any]:
    try:
        payload = pickle.loads(data)
    except BaseException as exc:
        err = SerializationError(
            f"the arguments could not be unpickled in the worker: {type(exc).__name__}: {exc}",
            what="argument",
        )
        return FAILED, _encode_exception(err)
    kind = mode & MODE_MASK
    if mode & TRACED:
        _loaded[:] = time.perf_counter_ns(), 1 if kind == CALL else len(payload)
    if kind == CALL:
        args, kwargs = payload
        try:
            return OK, fn(*args, **kwargs)
        except BaseException as exc:
            return FAILED, _encode_exception(exc)
    star = kind == STARMAP
    timed = mode & TIMED
    results: list[Any] = []
    append = results.append
    errors: dict[int, tuple[bytes, str]] = {}
    slot = base + SLOT_ITEM
    started = base + SLOT_STARTED_NS
    clock = time.monotonic_ns
    i = 0
    for i, item in enumerate(payload):
        if timed:  # task_timeout is per task: each item's own start time
            slots[started] = clock()
        slots[slot] = i
        try:
            append(fn(*item) if star else fn(item))
        except BaseException as exc:
            errors[i] = _encode_exception(exc)
            append(None)
        if _forked_child:
            _leave_forked_child()
    if errors:
        return PARTIAL, (results, errors)
    return OK, results


def _dump_result(status: int, value: Any) -> tuple[int, bytes]:
    """Pickle one record's result: pickle, then cloudpickle, else a SerializationError.

    ``BaseException`` is caught: a ``SystemExit`` raised by a result's ``__reduce__`` is
    that task's failure, not the worker's end."""
    try:
        return status, pickle.dumps(value, _serialize.PROTOCOL)
    except BaseException:
        pass
    try:
        return status, _serialize.dumps_by_value(value)
    except BaseException as exc:
        what = "result" if status == OK else "exception"
        try:
            detail = _serialize.describe_failure(what, value)
        except BaseException:
            detail = f"{what} ({type(value).__name__}): {type(exc).__name__}: {exc}"
        err = SerializationError("cannot pickle the " + detail, what="result")
        return FAILED, pickle.dumps(_encode_exception(err), _serialize.PROTOCOL)
