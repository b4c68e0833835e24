"""``Pool`` and ``map()``: the API users call, and the bookkeeping of each call.

A call (``submit``, ``apply_async``, ``map``, ``imap``, ...) becomes one *call object*
here and one or more ``Record`` s for the supervisor (``_supervisor``). The supervisor
reports each finished record back to its call object (``complete``, then ``flush`` once
per batch of results), from its own thread. Call objects turn that into futures, ordered
lists, lazily fed iterators, progress updates and callbacks.

``Pool`` is both a drop-in for ``multiprocessing.Pool`` and a real
``concurrent.futures.Executor``. Where the two disagree, the Executor wins: leaving a
``with`` block waits for submitted work (and terminates at once on an exception), and
work submitted before the interpreter exits is finished first.

Closing and lazy iterators: ``close()`` (and leaving ``with``) stops reading the input
of every ``imap``/``imap_unordered`` iterator of the pool. The tasks already read
finish, their results can still be taken from the iterator, and then ``next()`` raises
``PoolClosedError`` (the rest of the input was never run). So a half-read iterator
never keeps a pool alive.

A pool belongs to the process that created it: in a forked child every call raises
``PoolClosedError`` naming the owner, and ``close``/``join``/``terminate`` do nothing.
"""

from __future__ import annotations

import itertools
import math
import multiprocessing
import os
import threading
import warnings
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures
from concurrent.futures import CancelledError
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from conveyor._ipc import serialize as _serialize
from conveyor._pool import worker as _worker
from conveyor._pool.progress import CallbackThread, Progress, ProgressSpec
from conveyor._pool.supervisor import Record, Supervisor
from conveyor.errors import (
    CallbackError,
    PoolClosedError,
    ResultTimeoutError,
    SerializationError,
    WrongProcessError,
    short_repr,
)

if TYPE_CHECKING:
    from conveyor._pool.stats import PoolStatistics

T = TypeVar("T")
R = TypeVar("R")

_FN_CACHE = 64
_GUIDED_FACTOR = 4  # map chunks: remaining / (4 x workers), as guided self-scheduling


def _check_timeout(task_timeout: Any) -> None:
    if task_timeout is None:
        return
    if (isinstance(task_timeout, bool) or not isinstance(task_timeout, int | float)
            or not math.isfinite(task_timeout) or task_timeout <= 0):
        raise ValueError(f"task_timeout must be a positive, finite number of seconds, got "
                         f"{task_timeout!r}")


def _check_retries(retries: Any) -> None:
    if isinstance(retries, bool) or not isinstance(retries, int):
        raise TypeError(f"retries must be an int, got {retries!r}")
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")


def _check_retry_on(retry_on: Any) -> tuple[type[BaseException], ...]:
    if isinstance(retry_on, type):
        raise TypeError(f"retry_on must be a tuple of exception types, got the class "
                        f"{retry_on.__name__} itself; write retry_on=({retry_on.__name__},)")
    try:
        types = tuple(retry_on)
    except TypeError:
        raise TypeError(f"retry_on must be a tuple of exception types, got {retry_on!r}") from None
    for t in types:
        if not (isinstance(t, type) and issubclass(t, BaseException)):
            raise TypeError(f"retry_on must hold exception types, got {t!r} in {retry_on!r}")
    return types


def _check_chunksize(chunksize: Any) -> None:
    if chunksize is None:
        return
    if isinstance(chunksize, bool) or not isinstance(chunksize, int):
        raise TypeError(f"chunksize must be an int, got {chunksize!r}")
    if chunksize < 1:
        raise ValueError(f"chunksize must be >= 1, got {chunksize}")


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class TaskFuture(futures.Future[Any]):
    """A ``concurrent.futures.Future`` that can also stop a task that already runs.

    ``cancel()`` keeps its standard meaning: a pending task is dropped, a running one is
    not. ``cancel(force=True)`` also stops a running task: its worker is killed and
    replaced, and the future reports cancelled.

    Example::

        fut = pool.submit(time.sleep, 60)
        fut.cancel(force=True)      # returns True; the worker is replaced
    """

    _call: Any = None

    def cancel(self, force: bool = False) -> bool:
        if super().cancel():
            return True
        if not force:
            return False
        # The one place that reaches into Future internals: the standard Future has no
        # way to cancel a RUNNING future, and that is exactly what force=True means.
        from concurrent.futures._base import CANCELLED_AND_NOTIFIED, RUNNING

        with self._condition:
            if self._state != RUNNING:
                return False
            self._state = CANCELLED_AND_NOTIFIED
            self._condition.notify_all()
        self._invoke_callbacks()  # type: ignore[attr-defined]
        if self._call is not None:
            self._call.cancel_running()
        return True


# --------------------------------------------------------------------------- call objects


class _Spec:
    """A function and its per-call options, resolved and validated once.

    A plain class rather than a dataclass: dataclasses compile their methods when the
    module is imported, and that was most of the pool's start-up on a slow machine."""

    __slots__ = ("fn_bytes", "fn_id", "fn_name", "retries", "retry_on", "timeout")

    def __init__(self, fn_name: str, fn_id: int, fn_bytes: bytes, timeout: float | None,
                 retries: int, retry_on: tuple[type[BaseException], ...]) -> None:
        self.fn_name = fn_name
        self.fn_id = fn_id
        self.fn_bytes = fn_bytes
        self.timeout = timeout
        self.retries = retries
        self.retry_on = retry_on


class _Call:
    """What every kind of call shares: the function, options, progress, callbacks."""

    mode: int

    def __init__(self, pool: Pool, spec: _Spec, mode: int, total: int | None,
                 progress: ProgressSpec) -> None:
        self.pool = pool
        self.sup = pool._sup
        self.fn_name = spec.fn_name
        self.fn_id = spec.fn_id
        self.fn_bytes = spec.fn_bytes
        self.timeout = spec.timeout
        self.retries = spec.retries
        self.retry_on = spec.retry_on
        self.mode = mode
        shown = pool._progress if progress is None else progress
        self.progress = Progress(shown, total, self.fn_name) if shown else None
        self._unreported = 0
        self.cancelled = False

    def label(self, item: Any) -> str:
        if self.mode == _worker.CALL:
            args, kwargs = item
            inner = ", ".join([short_repr(a, 40) for a in args]
                              + [f"{k}={short_repr(v, 30)}" for k, v in kwargs.items()])
        elif self.mode == _worker.STARMAP:
            inner = ", ".join(short_repr(a, 40) for a in item)
        else:
            inner = short_repr(item, 60)
        text = f"{self.fn_name}({inner})"
        return text if len(text) <= 100 else text[:97] + "..."

    def start(self, rec: Record) -> bool:
        return not self.cancelled

    def task_index(self, position: int) -> int | None:
        """The task number shown in errors for the item at ``position``."""
        return position

    def cancel_running(self) -> None:
        self.sup.command("cancel_running", self)

    def _post(self, fn: Callable[..., Any], *args: Any) -> None:
        self.pool._callbacks.post(fn, *args)

    def flush(self) -> None:
        if self.progress is not None and self._unreported:
            n, self._unreported = self._unreported, 0
            self._post(self._progress_update, n)

    def _progress_update(self, n: int) -> None:
        assert self.progress is not None
        try:
            self.progress.update(n)
        except BaseException as exc:
            self.callback_failed(exc, "progress")

    def callback_failed(self, exc: BaseException, which: str) -> None:
        raise NotImplementedError

    def _make_records(self, items: Sequence[Any], chunks: Iterable[tuple[int, int]],
                      offset: int = 0) -> list[Record]:
        records = []
        for start, stop in chunks:
            part = items[start:stop]
            try:
                data = _serialize.dumps(part)
            except Exception:
                raise self._pickle_error(part, offset + start) from None
            records.append(Record(self, offset + start, part, self.mode, data))
        return records

    def _pickle_error(self, part: Sequence[Any], base: int) -> SerializationError:
        for k, item in enumerate(part):
            try:
                _serialize.dumps(item)
            except Exception:
                what = "argument" if self.mode == _worker.STARMAP else "item"
                return _serialize.serialization_error(what, item, base + k, _HINT)
        return _serialize.serialization_error("items", part, base, _HINT)


_HINT = "arguments must be picklable (cloudpickle is tried for lambdas and closures)"


class _FutureCall(Record):
    """One task: ``submit``, ``apply``, ``apply_async``. The call is its own record.

    ``submit`` in a loop is a hot path, and what it allocates is what the cyclic garbage
    collector must walk again and again while a caller holds thousands of futures: so
    this class has slots, is not a cycle with itself, and lets go of its future once the
    future is settled (a collector off measured twice the throughput of one on)."""

    __slots__ = ("callback", "error_callback", "fn_bytes", "fn_id", "fn_name", "future",
                 "pool", "retries", "retry_on", "started", "sup", "timeout")
    progress = None  # single tasks report through their future, not a bar

    label = _Call.label
    task_index = _Call.task_index
    cancel_running = _Call.cancel_running

    def __init__(self, pool: Pool, spec: _Spec, args: tuple[Any, ...], kwargs: dict[str, Any],
                 callback: Callable[[Any], object] | None = None,
                 error_callback: Callable[[BaseException], object] | None = None) -> None:
        try:
            self.data = _serialize.dumps((args, kwargs))
        except Exception:
            what = "argument" if args else "keyword argument"
            raise _serialize.serialization_error(
                what, args if args else kwargs, None, _HINT) from None
        self.pool = pool
        self.sup = pool._sup
        self.fn_name = spec.fn_name
        self.fn_id = spec.fn_id
        self.fn_bytes = spec.fn_bytes
        self.timeout = spec.timeout
        self.retries = spec.retries
        self.retry_on = spec.retry_on
        self.future = future = TaskFuture()
        future._call = self  # until settled: cancel(force=True) needs its way back
        self.callback = callback
        self.error_callback = error_callback
        # Record fields. A lone task's index is its submission number in the pool.
        self.rid = 0
        self.base = next(pool._submitted)
        self.items = (args, kwargs)
        self.mode = _worker.CALL
        self.attempts = 0
        self.elapsed_ns = 0
        self.worker = -1
        self.started = False

    @property
    def call(self) -> _FutureCall:
        return self

    def flush(self) -> None:
        pass

    def _post(self, fn: Callable[..., Any], *args: Any) -> None:
        self.pool._callbacks.post(fn, *args)

    def start(self, rec: Record) -> bool:
        if not self.started:  # not on a retry, nor after a take-back
            self.started = True
            return self.future.set_running_or_notify_cancel()
        return not self.future.cancelled()

    def complete(self, rec: Record, values: Sequence[Any], errors: dict[int, BaseException],
                 skip: set[int] | frozenset[int]) -> None:
        if self.callback is None and self.error_callback is None:
            self._settle(values[0], errors.get(0))
        else:
            self._post(self._run_callbacks, values[0], errors.get(0))

    def _run_callbacks(self, value: Any, exc: BaseException | None) -> None:
        try:
            if exc is None and self.callback is not None:
                self.callback(value)
            elif exc is not None and self.error_callback is not None:
                self.error_callback(exc)
        except BaseException as cb_exc:
            self.callback_failed(cb_exc, "callback" if exc is None else "error_callback")
            return
        self._settle(value, exc)

    def callback_failed(self, exc: BaseException, which: str) -> None:
        err = CallbackError(f"the {which} raised {type(exc).__name__}: {exc}")
        err.__cause__ = exc
        self._settle(None, err)

    def _settle(self, value: Any, exc: BaseException | None) -> None:
        future = self.future
        future._call = None
        try:
            if exc is None:
                future.set_result(value)
            elif isinstance(exc, CancelledError):
                future.cancel(force=True) or future.cancel()
            else:
                future.set_exception(exc)
        except futures.InvalidStateError:
            pass  # cancelled (force=True) while it ran

    def abort(self, exc: BaseException) -> None:
        self._settle(None, exc)  # a CancelledError cancels the future there


class _ListCall(_Call):
    """``map``, ``starmap`` and their ``_async`` forms: an ordered list of results."""

    def __init__(self, pool: Pool, spec: _Spec, items: Sequence[Any], mode: int,
                 chunksize: int | None, callback: Callable[[Any], object] | None = None,
                 error_callback: Callable[[BaseException], object] | None = None,
                 progress: ProgressSpec = None) -> None:
        n = len(items)
        super().__init__(pool, spec, mode, n, progress)
        self.results: list[Any] = [None] * n
        self.errors: dict[int, BaseException] = {}
        self.remaining = n
        self.callback = callback
        self.error_callback = error_callback
        self.done = threading.Event()
        self._callback_error: BaseException | None = None
        self.records = self._make_records(items, _chunks(n, pool._workers, chunksize))
        if n == 0:
            self._finish()

    def complete(self, rec: Record, values: Sequence[Any], errors: dict[int, BaseException],
                 skip: set[int] | frozenset[int]) -> None:
        base, size = rec.base, rec.size
        if not errors and not skip:
            self.results[base : base + size] = values
        else:
            for k in range(size):
                if k in skip:
                    continue
                if k in errors:
                    self.errors[base + k] = errors[k]
                else:
                    self.results[base + k] = values[k]
        done = size - len(skip)
        self.remaining -= done
        self._unreported += done

    def flush(self) -> None:
        super().flush()
        if self.remaining == 0 and not self.done.is_set():
            if self.callback is None and self.error_callback is None and self.progress is None:
                self.done.set()
            else:
                self._post(self._finish)

    def _finish(self) -> None:
        try:
            if self.errors:
                if self.error_callback is not None:
                    self.error_callback(self.errors[min(self.errors)])
            elif self.callback is not None:
                self.callback(self.results)
        except BaseException as exc:
            self.callback_failed(exc, "callback" if not self.errors else "error_callback")
        if self.progress is not None:
            self.progress.close()
        self.done.set()

    def callback_failed(self, exc: BaseException, which: str) -> None:
        err = CallbackError(f"the {which} raised {type(exc).__name__}: {exc}")
        err.__cause__ = exc
        self._callback_error = err

    def abort(self, exc: BaseException) -> None:
        self.cancelled = True
        if not self.done.is_set():
            self.errors.setdefault(-1, exc)
            if self.progress is not None:
                self._post(self.progress.close)
                self._post(self.done.set)
            else:
                self.done.set()

    def outcome(self) -> list[Any]:
        if self._callback_error is not None:
            raise self._callback_error
        if self.errors:
            raise self.errors[min(self.errors)]
        return self.results


class _IterCall(_Call, Iterator[Any]):
    """``imap`` and ``imap_unordered``: reads its input lazily, a bounded window ahead."""

    def __init__(self, pool: Pool, spec: _Spec, iterable: Iterable[Any], mode: int,
                 chunksize: int, ordered: bool, progress: ProgressSpec = None) -> None:
        total = len(iterable) if hasattr(iterable, "__len__") else None  # type: ignore[arg-type]
        super().__init__(pool, spec, mode, total, progress)
        _check_chunksize(chunksize)
        self.chunksize = chunksize
        self.ordered = ordered
        self._source: Iterator[Any] | None = iter(iterable)
        # Enough read ahead to keep every worker's queue full, bounded all the same.
        self._window = max(1024, 64 * chunksize * pool._workers)
        self._read = 0  # items taken from the source
        self._yielded = 0
        _Run = tuple[list[Any], dict[int, BaseException]]
        self._ready: dict[int, _Run] = {}  # finished runs by first index (ordered)
        self._ready_fifo: deque[_Run] = deque()  # finished runs as they come (unordered)
        self._buf: list[Any] = []  # the run being yielded
        self._buf_errors: dict[int, BaseException] = {}
        self._buf_pos = 0
        self._end: int | None = None  # item count, once the source is exhausted
        self._source_error: BaseException | None = None
        self._cond = threading.Condition(threading.Lock())
        self._callback_error: BaseException | None = None
        pool._iterators.add(self)

    def _refill(self) -> None:
        source = self._source
        if source is None or self._read - self._yielded > self._window // 2:
            return
        want = self._window - (self._read - self._yielded)
        items: list[Any] = []
        exhausted = False
        try:
            for _ in range(want):
                items.append(next(source))
        except StopIteration:
            exhausted = True
        except BaseException as exc:  # raised to the consumer at the failing position
            self._source_error = exc
            exhausted = True
        if items:
            chunks = ((s, min(s + self.chunksize, len(items)))
                      for s in range(0, len(items), self.chunksize))
            try:
                records = self._make_records(items, chunks, offset=self._read)
            except SerializationError:
                self._close_source()
                raise
            with self._cond:  # against pool_closed(): _read and what was queued agree
                if self._source is None:
                    exhausted = True  # the pool was closed while this thread read
                else:
                    try:
                        self.sup.submit(records)
                    except PoolClosedError as exc:
                        # What was read but not queued is not run; the results already
                        # queued are still yielded, then this error.
                        self._source_error = exc
                        exhausted = True
                    else:
                        self._read += len(items)
        if exhausted and self._source is not None:
            self._close_source()

    def _close_source(self) -> None:
        self._source = None
        self._end = self._read

    def pool_closed(self) -> None:
        """The pool was closed: read no more input (see the module docstring)."""
        source = self._source
        if source is None:
            return
        with self._cond:
            self._source = None
            if self._end is None:
                self._end = self._read
                self._source_error = self._source_error or PoolClosedError(
                    f"the pool was closed after {self._read} items of the input of "
                    f"{self.fn_name} were read; the rest was not run")
            self._cond.notify_all()

    def complete(self, rec: Record, values: Sequence[Any], errors: dict[int, BaseException],
                 skip: set[int] | frozenset[int]) -> None:
        # Whole runs of results are handed over at once (keyed by their first index),
        # so the consumer takes no lock per item; retried items break a run in two.
        runs: list[tuple[int, int]] = []
        start = 0
        for k in sorted(skip):
            if k > start:
                runs.append((start, k))
            start = k + 1
        if start < rec.size:
            runs.append((start, rec.size))
        with self._cond:
            for a, b in runs:
                chunk = (list(values[a:b]), {k - a: e for k, e in errors.items() if a <= k < b})
                if self.ordered:
                    self._ready[rec.base + a] = chunk
                else:
                    self._ready_fifo.append(chunk)
                self._unreported += b - a

    def flush(self) -> None:
        super().flush()
        with self._cond:
            self._cond.notify_all()

    def abort(self, exc: BaseException) -> None:
        with self._cond:
            self._source_error = self._source_error or exc
            self._end = self._yielded if self._end is None else self._end
            self._cond.notify_all()
        if self._source is not None:
            self._close_source()

    def callback_failed(self, exc: BaseException, which: str) -> None:
        err = CallbackError(f"the {which} raised {type(exc).__name__}: {exc}")
        err.__cause__ = exc
        self._callback_error = err
        self.abort(err)

    def _finish_progress(self) -> None:
        """Close the bar, after every update posted before; raise what a progress
        callable raised, even if it raised in the very last update."""
        if self.progress is None:
            return
        done = threading.Event()
        self._post(self.progress.close)
        self._post(done.set)
        done.wait()  # the callback thread runs posts inline once it is stopped
        self.progress = None
        if self._callback_error is not None:
            err, self._callback_error = self._callback_error, None
            raise err

    def next(self, timeout: float | None = None) -> Any:
        """The next result, as ``multiprocessing.Pool``'s iterators have it: raises
        ``multiprocessing.TimeoutError`` when none arrives within ``timeout`` seconds."""
        if timeout is None:
            return self.__next__()
        if self._buf_pos >= len(self._buf):
            self._refill()
            with self._cond:
                ready = self._cond.wait_for(self._has_next, timeout)
            if not ready:
                raise multiprocessing.TimeoutError(f"no result within {timeout} s")
        return self.__next__()

    def _has_next(self) -> bool:
        if self.ordered:
            found = self._yielded in self._ready
        else:
            found = bool(self._ready_fifo)
        return found or (self._end is not None and self._yielded >= self._end)

    def __next__(self) -> Any:
        if self._buf_pos < len(self._buf):  # the fast path: within a finished run
            k = self._buf_pos
            self._buf_pos += 1
            self._yielded += 1
            if self._buf_errors and k in self._buf_errors:
                raise self._buf_errors[k]
            return self._buf[k]
        try:
            self._refill()
        except BaseException:
            self.close()
            raise
        with self._cond:
            while True:
                if self.ordered and self._yielded in self._ready:
                    self._buf, self._buf_errors = self._ready.pop(self._yielded)
                    break
                if not self.ordered and self._ready_fifo:
                    self._buf, self._buf_errors = self._ready_fifo.popleft()
                    break
                if self._end is not None and self._yielded >= self._end:
                    if self._source_error is not None:
                        err, self._source_error = self._source_error, None
                        raise err
                    self._cond.release()
                    try:
                        self._finish_progress()
                    finally:
                        self._cond.acquire()
                    raise StopIteration
                if not self._cond.wait(0.5) and self.sup.stopped.is_set():
                    self.abort(PoolClosedError("the pool stopped while imap was waiting"))
        self._buf_pos = 0
        return self.__next__()

    def close(self) -> None:
        """Stop reading the input and drop queued tasks (tasks already running finish)."""
        self.cancelled = True
        if self._source is not None:
            self._close_source()
        with self._cond:
            self._source_error = None
            self._end = self._yielded
            self._cond.notify_all()


def _chunks(n: int, workers: int, chunksize: int | None) -> Iterator[tuple[int, int]]:
    """Chunk boundaries. Given a size: fixed chunks. Otherwise guided self-scheduling:
    each chunk is remaining / (4 x workers), so chunks start large (little overhead)
    and shrink towards the end (no worker is left idle while another finishes a big one)."""
    _check_chunksize(chunksize)
    if chunksize is not None:
        for start in range(0, n, chunksize):
            yield start, min(start + chunksize, n)
        return
    start = 0
    while start < n:
        size = max(1, math.ceil((n - start) / (_GUIDED_FACTOR * workers)))
        yield start, min(start + size, n)
        start += size


# ---------------------------------------------------------------------------- AsyncResult


class AsyncResult(Generic[T]):
    """The result of ``apply_async``/``map_async``, as in ``multiprocessing.pool``.

    Example::

        res = pool.apply_async(pow, (2, 10))
        res.get(timeout=5)     # 1024
    """

    def __init__(self, wait: Callable[[float | None], bool], outcome: Callable[[], T]) -> None:
        self._wait = wait
        self._outcome = outcome

    def ready(self) -> bool:
        return self._wait(0)

    def wait(self, timeout: float | None = None) -> None:
        self._wait(timeout)

    def successful(self) -> bool:
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        try:
            self._outcome()
        except BaseException:
            return False
        return True

    def get(self, timeout: float | None = None) -> T:
        if not self._wait(timeout):
            raise ResultTimeoutError(f"no result within {timeout} s")
        return self._outcome()


class MapResult(AsyncResult[list[Any]]):
    """The result of ``map_async`` and ``starmap_async``: ``get()`` returns a list."""


# --------------------------------------------------------------------------------- Pool


class Pool(futures.Executor):
    """A pool of worker processes: a drop-in for ``multiprocessing.Pool`` and a
    ``concurrent.futures.Executor``.

    Example::

        with conveyor.Pool(workers=4, progress=True) as pool:
            squares = pool.map(lambda x: x * x, range(1000))
            fut = pool.submit(pow, 2, 10)          # a concurrent.futures.Future
            for r in pool.imap_unordered(work, endless_items()): ...

    A worker that dies fails only the task it was running (``WorkerLostError``) and is
    replaced; ``task_timeout`` kills a task that runs too long (``TaskTimeoutError``).

    Options: ``workers`` (or ``processes``/``max_workers``; default: the CPUs this
    process may use), ``initializer``/``initargs`` (its return value is
    :func:`conveyor.worker_state` in tasks), ``maxtasksperchild``, ``max_worker_memory``
    (bytes of RSS; a worker above it is replaced between tasks), ``task_timeout``
    (seconds), ``retries`` (re-runs of a task whose worker died), ``retry_on``
    (exception types that are retried too), ``start_method`` ("fork", "forkserver",
    "spawn") or ``context``, and ``progress`` (True for a tqdm bar per call, or a
    callable ``fn(done, total)``).
    """

    def __init__(
        self,
        workers: int | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        context: Any = None,
        *,
        processes: int | None = None,
        max_workers: int | None = None,
        mp_context: Any = None,
        max_tasks_per_child: int | None = None,
        start_method: str | None = None,
        max_worker_memory: int | None = None,
        task_timeout: float | None = None,
        retries: int = 0,
        retry_on: Iterable[type[BaseException]] = (),
        progress: ProgressSpec = False,
    ) -> None:
        given = [v for v in (workers, processes, max_workers) if v is not None]
        if len(set(given)) > 1:
            raise TypeError("give the number of workers once: workers=, processes= or max_workers=")
        n = given[0] if given else _default_workers()
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"workers must be a positive integer, got {n!r}")
        maxtasks = maxtasksperchild if maxtasksperchild is not None else max_tasks_per_child
        if maxtasks is not None and (not isinstance(maxtasks, int) or maxtasks < 1):
            raise ValueError(f"maxtasksperchild must be a positive integer, got {maxtasks!r}")
        if max_worker_memory is not None and max_worker_memory <= 0:
            raise ValueError(f"max_worker_memory must be a positive number of bytes, got {max_worker_memory!r}")
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be callable, got {initializer!r}")
        _check_timeout(task_timeout)
        _check_retries(retries)
        retry_types = _check_retry_on(retry_on)
        ctx = context or mp_context
        if ctx is None:
            ctx = multiprocessing.get_context(start_method)
        elif start_method is not None:
            raise TypeError("give either context= or start_method=, not both")
        self._workers = n
        self._main_by_value = ctx.get_start_method() != "fork"
        self._submitted = itertools.count()
        self._task_timeout = task_timeout
        self._retries = retries
        self._retry_on = retry_types
        self._progress = progress
        self._lock = threading.Lock()
        # Functions seen lately, by id(), with a weak reference that proves the id still
        # means that function: the cache keeps no function (nor a bound method's object)
        # alive. Callables that take no weak reference (builtins) are kept.
        self._fns: OrderedDict[int, tuple[Callable[[], Any], _Spec]] = OrderedDict()
        self._fn_ids = itertools.count(1)
        self._state = "running"
        self._pid = os.getpid()
        self._iterators: weakref.WeakSet[_IterCall] = weakref.WeakSet()
        init: tuple[bytes, Any, bool] | None = None
        if initializer is not None:
            try:
                fn_bytes = _serialize.dumps_function(initializer, self._main_by_value)
            except Exception:
                raise _serialize.serialization_error("initializer", initializer, None) from None
            args = tuple(initargs)
            try:
                init = (fn_bytes, _serialize.dumps(args), True)
            except Exception:
                # multiprocessing's Lock, Queue, Value, Event...: pickled by
                # multiprocessing itself while it starts a worker (spawn, forkserver),
                # which is the one moment they may be pickled; inherited under fork.
                init = (fn_bytes, args, False)
        self._callbacks = CallbackThread()
        try:
            self._sup = Supervisor(ctx, n, init, maxtasks, max_worker_memory)
        except Exception as exc:
            if init is not None and not init[2]:
                err = _serialize.serialization_error(
                    "initargs", tuple(initargs), None,
                    f"multiprocessing could not pass them to a worker either: {exc}")
                raise err from exc
            raise
        self._sup.timeouts_used = task_timeout is not None
        self._finalizer = weakref.finalize(self, _finalize, self._sup, self._callbacks)

    # ------------------------------------------------------------------------ internals

    def _spec(self, fn: Callable[..., Any], task_timeout: float | None = None,
              retries: int | None = None,
              retry_on: Iterable[type[BaseException]] | None = None) -> _Spec:
        """Pickle ``fn`` once (cached per function) and resolve the call's options."""
        defaults = task_timeout is None and retries is None and retry_on is None
        with self._lock:
            entry = self._fns.get(id(fn))
            if entry is not None and entry[0]() is fn:
                self._fns.move_to_end(id(fn))
                if defaults:
                    return entry[1]
        if entry is None or entry[0]() is not fn:
            if not callable(fn):
                raise TypeError(f"the function to run must be callable, got {short_repr(fn)}")
            try:
                data = _serialize.dumps_function(fn, self._main_by_value)
            except Exception:
                raise _serialize.serialization_error(
                    "function", fn, None, "define it at module level, or make what it "
                    "captures picklable") from None
            name = getattr(fn, "__qualname__", None) or type(fn).__name__
            base = _Spec(name, next(self._fn_ids), data, self._task_timeout, self._retries,
                         self._retry_on)
            try:
                ref: Callable[[], Any] = weakref.ref(fn)
            except TypeError:
                ref = _StrongRef(fn)
            with self._lock:
                self._fns[id(fn)] = (ref, base)
                if len(self._fns) > _FN_CACHE:
                    self._fns.popitem(last=False)
        else:
            base = entry[1]
        if defaults:
            return base
        _check_timeout(task_timeout)
        timeout = base.timeout if task_timeout is None else task_timeout
        if retries is not None:
            _check_retries(retries)
        tries = base.retries if retries is None else retries
        types = base.retry_on if retry_on is None else _check_retry_on(retry_on)
        spec = _Spec(base.fn_name, base.fn_id, base.fn_bytes, timeout, tries, types)
        if spec.timeout:
            self._sup.timeouts_used = True
        return spec

    def _check_open(self) -> None:
        if self._pid != os.getpid():
            raise WrongProcessError(self._pid, os.getpid())
        if self._state != "running":
            raise PoolClosedError(f"the pool is {self._state}; no new work can be submitted")
        if self._sup.broken is not None:
            raise self._sup.broken
        if not self._sup.accepting:
            raise PoolClosedError(self._sup.refusal)

    def _foreign(self) -> bool:
        """True in a process forked from the pool's owner: the pool is not ours there."""
        return self._pid != os.getpid()

    def _run_list(self, call: _ListCall, timeout: float | None) -> list[Any]:
        self._sup.submit(call.records)
        try:
            if not call.done.wait(timeout):
                raise ResultTimeoutError(f"map did not finish within {timeout} s")
        except BaseException:
            call.abort(CancelledError("the caller stopped waiting"))  # drop what is queued
            raise
        return call.outcome()

    # --------------------------------------------------------------- Executor interface

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> TaskFuture:
        """Run ``fn(*args, **kwargs)`` in a worker; return a future of its result."""
        self._check_open()
        call = _FutureCall(self, self._spec(fn), args, kwargs)
        self._sup.submit([call])
        return call.future

    def map(  # type: ignore[override]
        self,
        fn: Callable[..., R],
        *iterables: Iterable[Any],
        chunksize: int | None = None,
        timeout: float | None = None,
        progress: ProgressSpec = None,
        task_timeout: float | None = None,
        retries: int | None = None,
        retry_on: tuple[type[BaseException], ...] | None = None,
    ) -> list[R]:
        """``[fn(x) for x in iterable]`` in parallel, in order, as a list.

        With several iterables, ``fn`` gets one item of each (as builtin ``map``).
        The chunk size is chosen automatically unless given. The first failed task's
        exception is raised once all tasks have ended (with the worker's traceback as
        its cause).
        """
        iterables, chunksize = _positional_chunksize(iterables, chunksize)
        if not iterables:
            raise TypeError("map() needs at least one iterable")
        self._check_open()
        if len(iterables) == 1:
            items, mode = _as_sequence(iterables[0]), _worker.MAP
        else:
            items, mode = list(zip(*iterables, strict=False)), _worker.STARMAP
        call = _ListCall(self, self._spec(fn, task_timeout, retries, retry_on), items, mode,
                         chunksize, progress=progress)
        return self._run_list(call, timeout)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work; with ``cancel_futures``, drop what has not started;
        with ``wait``, wait until the workers are gone."""
        if cancel_futures:
            self._sup.command("cancel_pending")
        self.close()
        if wait:
            self.join()

    # ------------------------------------------------------- multiprocessing.Pool interface

    def apply(self, func: Callable[..., R], args: Iterable[Any] = (),
              kwds: dict[str, Any] | None = None) -> R:
        """Run ``func(*args, **kwds)`` in a worker and wait for its result."""
        return self.apply_async(func, args, kwds).get()

    def apply_async(
        self,
        func: Callable[..., R],
        args: Iterable[Any] = (),
        kwds: dict[str, Any] | None = None,
        callback: Callable[[R], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        *,
        task_timeout: float | None = None,
        retries: int | None = None,
        retry_on: tuple[type[BaseException], ...] | None = None,
    ) -> AsyncResult[R]:
        """Start ``func(*args, **kwds)``; callbacks run in the parent when it ends."""
        self._check_open()
        call = _FutureCall(self, self._spec(func, task_timeout, retries, retry_on), tuple(args),
                           dict(kwds or {}), callback, error_callback)
        self._sup.submit([call])
        fut = call.future
        return AsyncResult(lambda t: _wait_future(fut, t), fut.result)

    def map_async(
        self,
        func: Callable[..., R],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        callback: Callable[[list[R]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        *,
        progress: ProgressSpec = None,
        task_timeout: float | None = None,
        retries: int | None = None,
        retry_on: tuple[type[BaseException], ...] | None = None,
    ) -> MapResult:
        """Start a ``map``; its AsyncResult's ``get()`` returns the list."""
        return self._list_async(func, iterable, _worker.MAP, chunksize, callback, error_callback,
                                progress, task_timeout, retries, retry_on)

    def starmap(
        self,
        func: Callable[..., R],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        *,
        timeout: float | None = None,
        progress: ProgressSpec = None,
        task_timeout: float | None = None,
        retries: int | None = None,
        retry_on: tuple[type[BaseException], ...] | None = None,
    ) -> list[R]:
        """``[func(*args) for args in iterable]`` in parallel, in order."""
        self._check_open()
        call = _ListCall(self, self._spec(func, task_timeout, retries, retry_on),
                         _as_sequence(iterable), _worker.STARMAP, chunksize, progress=progress)
        return self._run_list(call, timeout)

    def starmap_async(
        self,
        func: Callable[..., R],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        callback: Callable[[list[R]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        *,
        progress: ProgressSpec = None,
        task_timeout: float | None = None,
        retries: int | None = None,
        retry_on: tuple[type[BaseException], ...] | None = None,
    ) -> MapResult:
        """Start a ``starmap``; its AsyncResult's ``get()`` returns the list."""
        return self._list_async(func, iterable, _worker.STARMAP, chunksize, callback,
                                error_callback, progress, task_timeout, retries, retry_on)

    def _list_async(self, func: Callable[..., Any], iterable: Iterable[Any], mode: int,
                    chunksize: int | None, callback: Any, error_callback: Any, progress: Any,
                    task_timeout: Any, retries: Any, retry_on: Any) -> MapResult:
        self._check_open()
        call = _ListCall(self, self._spec(func, task_timeout, retries, retry_on),
                         _as_sequence(iterable), mode, chunksize, callback, error_callback,
                         progress=progress)
        self._sup.submit(call.records)
        return MapResult(call.done.wait, call.outcome)

    def imap(
        self,
        func: Callable[..., R],
        iterable: Iterable[Any],
        chunksize: int = 1,
        *,
        progress: ProgressSpec = None,
        task_timeout: float | None = None,
        retries: int | None = None,
        retry_on: tuple[type[BaseException], ...] | None = None,
    ) -> Iterator[R]:
        """Results in input order, as they become available; reads ``iterable`` lazily
        (a bounded window ahead), so an endless generator works."""
        return self._imap(func, iterable, chunksize, True, progress, task_timeout, retries,
                          retry_on)

    def imap_unordered(
        self,
        func: Callable[..., R],
        iterable: Iterable[Any],
        chunksize: int = 1,
        *,
        progress: ProgressSpec = None,
        task_timeout: float | None = None,
        retries: int | None = None,
        retry_on: tuple[type[BaseException], ...] | None = None,
    ) -> Iterator[R]:
        """Results in completion order; reads ``iterable`` lazily."""
        return self._imap(func, iterable, chunksize, False, progress, task_timeout, retries,
                          retry_on)

    def _imap(self, func: Callable[..., Any], iterable: Iterable[Any], chunksize: int,
              ordered: bool, progress: ProgressSpec, task_timeout: float | None,
              retries: int | None, retry_on: tuple[type[BaseException], ...] | None
              ) -> Iterator[Any]:
        self._check_open()
        return _IterCall(self, self._spec(func, task_timeout, retries, retry_on), iterable,
                         _worker.MAP, chunksize, ordered, progress)

    def close(self) -> None:
        """Accept no more work; workers exit once the submitted work is done.

        Lazy ``imap`` iterators stop reading their input (see the module docstring)."""
        if self._foreign():
            return
        if self._state == "running":
            self._state = "closed"
        self._sup.close()
        for it in list(self._iterators):
            it.pool_closed()

    def terminate(self) -> None:
        """Stop now: drop queued work, kill the workers, fail what was running."""
        if self._foreign():
            return
        self._state = "terminated"
        self._sup.terminate()
        self.join()

    def join(self) -> None:
        """Wait for the workers to exit; only after ``close()`` or ``terminate()``."""
        if self._foreign():
            return
        if self._state == "running":
            raise ValueError("join() needs close() or terminate() first (the pool is running)")
        self._sup.join()
        self._callbacks.stop()
        self._finalizer.detach()

    def statistics(self) -> PoolStatistics:
        """A snapshot of the pool's counters."""
        from conveyor._pool.stats import PoolStatistics

        pids = tuple(self._sup.worker_pids())
        return PoolStatistics(self._workers, pids, self._sup.tasks_done, len(self._sup.pending),
                              self._sup.workers_replaced)

    @property
    def workers(self) -> int:
        """The number of worker processes."""
        return self._workers

    # Read-only aliases of ``workers`` under the names other libraries read from the
    # pools they are given: dask's process scheduler reads ``_max_workers``
    # (ProcessPoolExecutor's), dynesty's samplers read ``_processes``
    # (multiprocessing.Pool's) or ``size``.
    @property
    def _max_workers(self) -> int:
        return self._workers

    @property
    def _processes(self) -> int:
        return self._workers

    @property
    def size(self) -> int:
        return self._workers

    def __enter__(self) -> Pool:
        if self._state != "running" and not self._foreign():
            raise PoolClosedError(f"the pool is {self._state}; a closed pool cannot be "
                                  "used in a with block again")
        return self

    def __del__(self) -> None:
        # As multiprocessing.Pool does: a running pool that is garbage-collected is a
        # program that forgot close(); its finalizer still cleans up.
        if getattr(self, "_state", None) == "running" and getattr(self, "_pid", 0) == os.getpid():
            sup = getattr(self, "_sup", None)
            if sup is not None and sup.accepting:
                warnings.warn(f"unclosed running pool {self!r}", ResourceWarning, source=self,
                              stacklevel=2)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.shutdown(wait=True)
        else:
            self.terminate()

    def __repr__(self) -> str:
        return f"<conveyor.Pool workers={self._workers} state={self._state}>"

    def __reduce__(self) -> Any:
        raise TypeError("a Pool cannot be pickled or sent to a worker")


class _StrongRef:
    """Stands for a weak reference to a callable that takes none (a builtin)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self) -> Callable[..., Any]:
        return self.fn


def _finalize(sup: Supervisor, callbacks: CallbackThread) -> None:
    """A pool garbage-collected (or still open at interpreter exit) without close().

    Nothing of its work can still be queued (queued work keeps the pool alive), so a
    close is enough: the supervisor stops its workers and then the callback thread."""
    if sup.owner_pid != os.getpid():
        return  # inherited by a forked child: not its pool
    if sup.stopped.is_set():
        callbacks.stop()
        return
    sup.after_stop = callbacks.stop
    sup.close()
    if sup.stopped.is_set():  # stopped between the look and the hand-over
        callbacks.stop()


def _wait_future(fut: futures.Future[Any], timeout: float | None) -> bool:
    done, _ = futures.wait([fut], timeout)
    return bool(done)


def _as_sequence(iterable: Iterable[Any]) -> Sequence[Any]:
    if isinstance(iterable, range | list | tuple):
        return iterable
    return list(iterable)


def _positional_chunksize(iterables: tuple[Any, ...], chunksize: int | None
                          ) -> tuple[tuple[Any, ...], int | None]:
    # multiprocessing.Pool.map(func, iterable, chunksize): an int is never an iterable,
    # so a trailing int can only be the standard library's positional chunksize.
    if len(iterables) == 2 and isinstance(iterables[1], int) and chunksize is None:
        return iterables[:1], iterables[1]
    return iterables, chunksize


def map(
    fn: Callable[..., R],
    iterable: Iterable[Any],
    *,
    workers: int | None = None,
    progress: ProgressSpec = False,
    chunksize: int | None = None,
    **pool_options: Any,
) -> list[R]:
    """``[fn(x) for x in iterable]`` on a fresh pool of processes, in order.

    Example::

        squares = conveyor.map(lambda x: x * x, range(10_000), workers=4, progress=True)
    """
    with Pool(workers, progress=progress, **pool_options) as pool:
        return pool.map(fn, iterable, chunksize=chunksize)
