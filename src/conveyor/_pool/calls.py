"""The call objects: what each kind of pool call keeps while its records run.

A call (``submit``/``apply_async``, ``map``/``starmap`` and their ``_async`` forms,
``imap``/``imap_unordered``) becomes one call object here and one or more ``Record`` s
for the runner (see ``seam``). The runner reports each finished record back to its call
object (``complete``, then ``flush`` once per batch of results), from its own thread.
Call objects turn that into futures, ordered lists, lazily fed iterators, progress
updates and callbacks (run on the pool's callback thread).
"""

from __future__ import annotations

import math
import multiprocessing
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures
from concurrent.futures import CancelledError
from typing import TYPE_CHECKING, Any, TypeVar

from conveyor._ipc import serialize as _serialize
from conveyor._pool import worker as _worker
from conveyor._pool.options import _check_chunksize, _Spec
from conveyor._pool.progress import Progress, ProgressSpec
from conveyor._pool.seam import Command, Record, Runner, callback_error
from conveyor.errors import (
    PoolClosedError,
    SerializationError,
    short_repr,
)

if TYPE_CHECKING:
    from conveyor._pool.pool import Pool

T = TypeVar("T")

_GUIDED_FACTOR = 4  # map chunks: remaining / (4 x workers), as guided self-scheduling


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



class _CallBase:
    """What every call object shares, the lone task (a ``Record`` itself) included: the
    function and its options, how a task is named in errors, how it is cancelled while
    it runs, and the pool's callback thread. No slots of its own, so ``_FutureCall``
    keeps its compact layout."""

    __slots__ = ()
    pool: Pool
    sup: Runner  # the local supervisor today; any runner of the seam
    fn_name: str
    fn_id: int
    fn_bytes: bytes
    timeout: float | None
    retries: int
    retry_on: tuple[type[BaseException], ...]
    mode: int

    # ``self: Any``: the slots are the subclasses' (mypy checks assignments against the
    # empty ``__slots__`` of this class otherwise).
    def _take(self: Any, pool: Pool, spec: _Spec) -> None:
        self.pool = pool
        self.sup = pool._sup
        self.fn_name = spec.fn_name
        self.fn_id = spec.fn_id
        self.fn_bytes = spec.fn_bytes
        self.timeout = spec.timeout
        self.retries = spec.retries
        self.retry_on = spec.retry_on

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

    def task_index(self, position: int) -> int | None:
        """The task number shown in errors for the item at ``position``."""
        return position

    def pickle_error(self, part: Sequence[Any], base: int) -> SerializationError:
        """The error for items that cannot be pickled, naming the first that cannot."""
        for k, item in enumerate(part):
            try:
                _serialize.dumps(item)
            except Exception:
                what = "argument" if self.mode == _worker.STARMAP else "item"
                return _serialize.serialization_error(what, item, base + k, _HINT)
        return _serialize.serialization_error("items", part, base, _HINT)

    def cancel_running(self) -> None:
        self.sup.command(Command.CANCEL_RUNNING, self)

    def _post(self, fn: Callable[..., Any], *args: Any) -> None:
        self.pool._callbacks.post(fn, *args)


class _Call(_CallBase):
    """What every kind of call over many items shares: progress, callbacks, records."""

    def __init__(self, pool: Pool, spec: _Spec, mode: int, total: int | None,
                 progress: ProgressSpec) -> None:
        self._take(pool, spec)
        self.mode = mode
        shown = pool._progress if progress is None else progress
        self.progress = Progress(shown, total, self.fn_name) if shown else None
        self._unreported = 0
        self.cancelled = False

    def start(self, rec: Record) -> bool:
        return not self.cancelled

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

    # The rest of the TaskCall protocol (see seam), which each kind of call defines.
    def complete(self, rec: Record, values: Sequence[Any], errors: dict[int, BaseException],
                 skip: set[int] | frozenset[int]) -> None:
        raise NotImplementedError

    def abort(self, exc: BaseException) -> None:
        raise NotImplementedError

    def _make_records(self, items: Sequence[Any], chunks: Iterable[tuple[int, int]],
                      offset: int = 0, lazy: bool = False) -> list[Record]:
        """Records for ``items`` cut at ``chunks``; pickled now (a pickling error is
        raised here), or, ``lazy``, by the supervisor when each is dispatched."""
        records = []
        for start, stop in chunks:
            part = items[start:stop]
            data = None
            if not lazy:
                try:
                    data = _serialize.dumps(part)
                except Exception:
                    raise self.pickle_error(part, offset + start) from None
            records.append(Record(self, offset + start, part, self.mode, data))
        return records


_HINT = "arguments must be picklable (cloudpickle is tried for lambdas and closures)"


class _FutureCall(Record, _CallBase):
    """One task: ``submit``, ``apply``, ``apply_async``. The call is its own record.

    ``submit`` in a loop is a hot path, and what it allocates is what the cyclic garbage
    collector must walk again and again while a caller holds thousands of futures: so
    this class has slots, is not a cycle with itself, and lets go of its future once the
    future is settled (a collector off measured twice the throughput of one on)."""

    __slots__ = ("callback", "error_callback", "fn_bytes", "fn_id", "fn_name", "future",
                 "pool", "retries", "retry_on", "started", "sup", "timeout")
    progress = None  # single tasks report through their future, not a bar

    def __init__(self, pool: Pool, spec: _Spec, args: tuple[Any, ...], kwargs: dict[str, Any],
                 callback: Callable[[Any], object] | None = None,
                 error_callback: Callable[[BaseException], object] | None = None) -> None:
        try:
            self.data = _serialize.dumps((args, kwargs))
        except Exception:
            what = "argument" if args else "keyword argument"
            raise _serialize.serialization_error(
                what, args if args else kwargs, None, _HINT) from None
        # _CallBase._take, inlined: a method call here costs ~8% of a submit.
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
        self.trace = None
        self.started = False

    @property  # a property, not the slot: a record that points at itself is a cycle
    def call(self) -> _FutureCall:  # type: ignore[override]
        return self

    def flush(self) -> None:
        pass

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
        self._settle(None, callback_error(exc, which))

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
        # Pickled as they are dispatched: the parent holds the pickles of the chunks in
        # flight, not a second copy of the whole input.
        self.records = self._make_records(items, _chunks(n, pool._workers, chunksize),
                                          lazy=True)
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
        self._callback_error = callback_error(exc, which)

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
        self._callback_error = err = callback_error(exc, which)
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
