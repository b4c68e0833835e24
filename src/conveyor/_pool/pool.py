"""``Pool`` and ``map()``: the API users call, and the bookkeeping of each call.

A call (``submit``, ``apply_async``, ``map``, ``imap``, ...) becomes one *call object*
(``calls``) and one or more ``Record`` s for the supervisor (``supervisor``), across
the typed seam of ``seam``. The supervisor reports each finished record back to its
call object (``complete``, then ``flush`` once per batch of results), from its own
thread. Call objects turn that into futures, ordered lists, lazily fed iterators,
progress updates and callbacks. Options are checked in ``options``.

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
import multiprocessing
import os
import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures
from concurrent.futures import CancelledError
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from conveyor._ipc import serialize as _serialize
from conveyor._pool import worker as _worker
from conveyor._pool.calls import (
    TaskFuture,
    _FutureCall,
    _IterCall,
    _ListCall,
)
from conveyor._pool.calls import (
    _Call as _Call,  # re-exported: _flow.pipeline imports it from here
)
from conveyor._pool.options import (
    TaskOptions,
    _default_workers,
    _Spec,
)
from conveyor._pool.progress import CallbackThread, ProgressSpec
from conveyor._pool.results import AsyncResult, MapResult
from conveyor._pool.seam import Command, Runner
from conveyor._pool.supervisor import Supervisor
from conveyor.errors import (
    PoolClosedError,
    ResultTimeoutError,
    WrongProcessError,
    short_repr,
)

if TYPE_CHECKING:
    from conveyor._pool.stats import PoolStatistics

T = TypeVar("T")
# The message "the pool is {state}" uses these words as they are.
PoolState = Literal["running", "closed", "terminated"]
R = TypeVar("R")

_FN_CACHE = 64


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
    "spawn") or ``context``, ``progress`` (True for a tqdm bar per call, or a
    callable ``fn(done, total)``) and ``trace`` (a file name ending in .json, .json.gz or
    .html, written when the pool stops, or a :class:`conveyor.Trace`; see
    :func:`conveyor.trace`).

    ``cluster`` runs the pool's work on a Dask cluster: a ``distributed.Client`` (never
    closed by conveyor), a scheduler address ``"tcp://host:8786"``, or ``"local"`` (a
    ``LocalCluster`` started and stopped with the pool). Every Dask worker then runs a
    conveyor pool of its own, sized to its threads, with the options above; ``workers``
    is ignored (the cluster's threads count). See ``conveyor.use_cluster`` and the
    README's "Scale out" section.
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
        cluster: Any = None,
        trace: Any = None,
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
        if max_worker_memory is not None and (
                isinstance(max_worker_memory, bool) or not isinstance(max_worker_memory, int)
                or max_worker_memory <= 0):
            raise ValueError("max_worker_memory must be a positive int (bytes of resident "
                             f"memory), got {max_worker_memory!r}")
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be callable, got {initializer!r}")
        self._options = TaskOptions.check(task_timeout, retries, retry_on)
        from conveyor._trace._api import for_pool

        tracer = for_pool(trace)
        ctx = context or mp_context
        if ctx is None:
            ctx = multiprocessing.get_context(start_method)
        elif start_method is not None:
            raise TypeError("give either context= or start_method=, not both")
        if cluster is None:
            from conveyor._dask._context import current  # no Dask import: see there

            cluster = current()
        self._workers = n
        # On a cluster, a function of __main__ goes by value: a Dask worker has no such module.
        self._main_by_value = cluster is not None or ctx.get_start_method() != "fork"
        self._remote = cluster is not None
        self._submitted = itertools.count()
        self._progress = progress
        self._lock = threading.Lock()
        # Functions seen lately, by id(), with a weak reference that proves the id still
        # means that function: the cache keeps no function (nor a bound method's object)
        # alive. Callables that take no weak reference (builtins) are kept.
        self._fns: OrderedDict[int, tuple[Callable[[], Any], _Spec]] = OrderedDict()
        self._fn_ids = itertools.count(1)
        self._state: PoolState = "running"
        self._pid = os.getpid()
        self._iterators: weakref.WeakSet[_IterCall] = weakref.WeakSet()
        init: tuple[bytes, Any, bool] | None = None
        if initializer is not None:
            try:
                fn_bytes = _serialize.dumps_function(initializer, self._main_by_value,
                                                     self._remote)
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
        self._sup: Runner
        try:
            if cluster is not None:
                self._sup, self._workers = _cluster_backend(  # the cluster's threads count
                    cluster, init, maxtasks, max_worker_memory,
                    start_method or (ctx.get_start_method() if context or mp_context else None))
            else:
                self._sup = Supervisor(ctx, n, init, maxtasks, max_worker_memory, tracer)
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
                data = _serialize.dumps_function(fn, self._main_by_value, self._remote)
            except Exception:
                raise _serialize.serialization_error(
                    "function", fn, None, "define it at module level, or make what it "
                    "captures picklable") from None
            name = getattr(fn, "__qualname__", None) or type(fn).__name__
            base = _Spec(name, next(self._fn_ids), data, self._options)
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
        options = self._options.overridden(task_timeout, retries, retry_on)
        spec = _Spec(base.fn_name, base.fn_id, base.fn_bytes, options)
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
            self._sup.command(Command.CANCEL_PENDING)
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


def _cluster_backend(cluster: Any, init: Any, maxtasks: int | None, max_memory: int | None,
                     start_method: str | None) -> tuple[Runner, int]:
    """The runner of a pool on a Dask cluster (``conveyor._dask``), in place of a local
    ``Supervisor``, and the cluster's thread count; with ``Pool.__init__``'s look at
    ``use_cluster()``, the only place where ``Pool`` reaches Dask. ``_dask`` sits above
    the pool (it runs a local pool on each Dask worker), so these imports are upward,
    made only when a cluster is asked for; ``tests/test_layering.py`` lists them."""
    try:
        from conveyor._dask._backend import DaskBackend
    except ImportError as exc:
        from conveyor._dask._context import dask_missing

        raise dask_missing(f"Pool(cluster={cluster!r})") from exc
    backend = DaskBackend(cluster, init, maxtasks, max_memory, start_method)
    return backend, backend.threads


class _StrongRef:
    """Stands for a weak reference to a callable that takes none (a builtin)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self) -> Callable[..., Any]:
        return self.fn


def _finalize(sup: Runner, callbacks: CallbackThread) -> None:
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
