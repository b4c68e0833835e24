"""What runs inside a worker process: the initializer, the task loop, the parent watch.

A worker reads frames of tasks from its own pipe, runs them in order and writes results
back in batches. Before each task it records, in its slot of the pool's shared status
array, which record and which item it is running and since when; that is how the
supervisor knows exactly which task a worker was running when it died, and which task
overran its timeout, without a message per task.

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

from conveyor import _frames, _serialize
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
HEAD_LEN = struct.Struct("<Q")

# Task modes.
CALL = 0  # payload: (args, kwargs)  -> one result
MAP = 1  # payload: items            -> [fn(x) for x in items]
STARMAP = 2  # payload: items of tuples -> [fn(*x) for x in items]

# Result statuses.
OK = 0
FAILED = 1  # value: (exception pickle, traceback text)
PARTIAL = 2  # value: (results with None holes, {item index: (exception pickle, tb)})

# Slot fields in the pool's shared status array, per worker.
SLOT_RECORD = 0
SLOT_ITEM = 1
SLOT_STARTED_NS = 2
SLOT_PEAK_RSS_KB = 3
SLOT_SIZE = 4

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
_thread_state = threading.local()  # for thread stages of a pipeline


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
        data = _serialize.dumps(exc)
        pickle.loads(data)  # an exception with a custom __init__ may not round-trip
    except Exception:
        from conveyor.errors import RemoteError

        data = pickle.dumps(RemoteError(type(exc).__qualname__, str(exc)), _serialize.PROTOCOL)
    return data, tb


def _watch_parent(ppid: int, owner: tuple[int, str | None], die_with_parent: bool) -> None:
    # Under forkserver our parent is the fork server, which can outlive the pool's
    # process for seconds; so the pool's own process (pid and start time, which
    # rules out a recycled pid) is watched too.
    from conveyor._shm import _start_time

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
    init_bytes: bytes | None,
    maxtasks: int | None,
    max_memory: int | None,
    die_with_parent: bool = False,
    owner: tuple[int, str | None] | None = None,
) -> None:
    """Entry point of a worker process (the ``target`` of its ``Process``)."""
    global _state, _index
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    task_fd = os.dup(task_conn.fileno())
    result_fd = os.dup(result_conn.fileno())
    task_conn.close()
    result_conn.close()
    ppid = os.getppid()
    if owner is None:
        from conveyor._shm import _start_time

        owner = (ppid, _start_time(ppid))
    threading.Thread(
        target=_watch_parent, args=(ppid, owner, die_with_parent), name="conveyor-parent-watch",
        daemon=True,
    ).start()
    _index = index
    slots = status_view(slots)

    try:
        state = None
        if init_bytes is not None:
            init_fn, initargs = pickle.loads(init_bytes)
            state = pickle.loads(init_fn)(*initargs)
    except BaseException as exc:
        _frames.write_frame(result_fd, INIT_FAILED, pickle.dumps(_encode_exception(exc)))
        os._exit(0)
    _state = state
    _frames.write_frame(result_fd, READY, b"")
    try:
        _task_loop(task_fd, result_fd, slots, index, maxtasks, max_memory)
    except (EOFError, BrokenPipeError):
        pass  # the supervisor closed our pipes: the pool is gone
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip atexit handlers and finalizers inherited from the parent by fork


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
    out: list[tuple[int, int, Any, int]] = []
    first_unsent = 0
    done = 0
    page = os.sysconf("SC_PAGE_SIZE")
    poller = select.poll()
    poller.register(task_fd, select.POLLIN)

    def flush() -> None:
        nonlocal first_unsent
        slots[base + SLOT_PEAK_RSS_KB] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        _frames.write_frame(result_fd, RESULTS, _dump_results(out))
        out.clear()
        first_unsent = 0

    while True:
        if out and not poller.poll(0):
            flush()  # nothing more queued: don't sit on finished results
        kind, payload = _frames.read_frame(task_fd)
        if kind == STOP:
            if out:
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
            slots[base + SLOT_RECORD] = rec_id
            t0 = time.perf_counter_ns()
            status, value = _run(fn, mode, data, slots, base)
            elapsed = time.perf_counter_ns() - t0
            slots[base + SLOT_RECORD] = -1
            out.append((rec_id, status, value, elapsed))
            if not first_unsent:
                first_unsent = t0
            done += 1
            if time.perf_counter_ns() - first_unsent > _FLUSH_NS:
                flush()
            retire = None
            if maxtasks is not None and done >= maxtasks:
                retire = f"reached maxtasksperchild={maxtasks}"
            elif max_memory is not None:
                with open("/proc/self/statm", "rb") as f:
                    rss = int(f.read().split()[1]) * page
                if rss > max_memory:
                    retire = f"resident memory {rss} > max_worker_memory={max_memory}"
            if retire:
                if out:
                    flush()
                _frames.write_frame(result_fd, RETIRE, retire.encode())
                return


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
    if mode == CALL:
        args, kwargs = payload
        try:
            return OK, fn(*args, **kwargs)
        except BaseException as exc:
            return FAILED, _encode_exception(exc)
    star = mode == STARMAP
    results: list[Any] = []
    append = results.append
    errors: dict[int, tuple[bytes, str]] = {}
    slot = base + SLOT_ITEM
    i = 0
    for i, item in enumerate(payload):
        slots[slot] = i
        try:
            append(fn(*item) if star else fn(item))
        except BaseException as exc:
            errors[i] = _encode_exception(exc)
            append(None)
    if errors:
        return PARTIAL, (results, errors)
    return OK, results


def _dump_results(out: list[tuple[int, int, Any, int]]) -> bytes:
    try:
        return pickle.dumps(out, _serialize.PROTOCOL)
    except Exception:
        pass
    # Find the results that cannot be pickled and replace each with the reason.
    fixed = []
    for rec_id, status, value, elapsed in out:
        try:
            pickle.dumps(value, _serialize.PROTOCOL)
        except Exception:
            try:
                import cloudpickle

                cloudpickle.dumps(value, _serialize.PROTOCOL)
                value = _CloudPickled(cloudpickle.dumps(value, _serialize.PROTOCOL))
            except Exception:
                what = "result" if status == OK else "exception"
                err = SerializationError(
                    "cannot pickle the " + _serialize.describe_failure(what, value),
                    what="result",
                )
                status, value = FAILED, _encode_exception(err)
        fixed.append((rec_id, status, value, elapsed))
    return pickle.dumps(fixed, _serialize.PROTOCOL)


class _CloudPickled:
    """A result only cloudpickle could pickle; unwrapped by the supervisor."""

    def __init__(self, data: bytes) -> None:
        self.data = data

