"""The seam between the pool's API and what runs its work.

The API side (``pool``: ``Pool`` and its call objects) turns each call into
:class:`Record` s and hands them to a *runner*; the runner reports each finished record
back to the record's call object through :class:`TaskCall`. The runners are the
``supervisor`` (local worker processes) and, for ``Pool(cluster=...)``, ``_dask``'s
``DaskBackend``: each implements :class:`Runner` (mypy checks both) and calls the same
``TaskCall`` methods from its own thread: the call objects, and with them futures,
ordering, retries' bookkeeping, progress and callbacks, do not know which runner they
talk to.

A record's ``data`` may be None: a map's chunks are pickled by the runner as it sends
them (so the parent does not hold the input twice), and a chunk that cannot be pickled
then fails its items with the call's ``pickle_error``.

Everything here is typed: commands are a :class:`Command`, the reasons a runner stops a
task are a :data:`KillReason`, and a record's place in its call is a plain ``base``
index (a pipeline's chunk keeps its own numbers on its call object).
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Sequence, Sized
from typing import TYPE_CHECKING, Any, Literal, Protocol

from conveyor._pool import worker as _worker
from conveyor.errors import CallbackError, SerializationError

if TYPE_CHECKING:
    from conveyor._pool.progress import Progress


class Command(enum.Enum):
    """What the API asks of a runner's thread, in order, between two looks at its queue."""

    CLOSE = "close"  # finish what was submitted, then stop
    TERMINATE = "terminate"  # stop now; what was submitted is cancelled
    CANCEL_PENDING = "cancel_pending"  # drop what has not started (cancel_futures=True)
    CANCEL_RUNNING = "cancel_running"  # stop the running tasks of one call (its argument)


# Why a runner stopped a worker that was running a task: decides the task's error.
KillReason = Literal["cancelled", "timeout", "terminate"]


class TaskCall(Protocol):
    """What a runner calls on a call object (from its own thread), and reads from it.

    ``start`` before a record is sent (False: it was cancelled, skip it); ``complete``
    for each finished record, with one value per item, the errors by item position and
    the positions to leave out (retried); ``flush`` once per batch of results;
    ``abort`` when the call's remaining records will never run; ``pickle_error`` for a
    record the runner could not pickle (the error names the first bad item).
    """

    fn_name: str
    fn_id: int
    fn_bytes: bytes
    timeout: float | None
    retries: int
    retry_on: tuple[type[BaseException], ...]

    @property
    def progress(self) -> Progress | None: ...

    def start(self, rec: Record) -> bool: ...

    def complete(self, rec: Record, values: Sequence[Any], errors: dict[int, BaseException],
                 skip: set[int] | frozenset[int]) -> None: ...

    def flush(self) -> None: ...

    def abort(self, exc: BaseException) -> None: ...

    def task_index(self, position: int) -> int | None: ...

    def label(self, item: Any) -> str: ...

    def pickle_error(self, part: Sequence[Any], base: int) -> SerializationError: ...


class Runner(Protocol):
    """What the API calls on a runner (from any thread)."""

    accepting: bool
    refusal: str
    broken: BaseException | None
    tasks_done: int
    timeouts_used: bool
    workers_replaced: int
    stopped: threading.Event  # set once the runner's thread has ended (iterators stop waiting)
    after_stop: Callable[[], object] | None  # called once its thread has stopped (GC'd pools)

    @property
    def pending(self) -> Sized: ...  # records taken, not yet sent (counted in statistics())

    @property
    def owner_pid(self) -> int: ...  # the process that made it: a forked copy does nothing

    def submit(self, records: list[Record]) -> None: ...

    def command(self, cmd: Command, arg: Any = None) -> None: ...

    def stop_intake(self, reason: str) -> None: ...

    def close(self) -> None: ...

    def terminate(self) -> None: ...

    def join(self, timeout: float | None = None) -> bool: ...

    def worker_pids(self) -> list[int]: ...


class RunnerLifecycle:
    """What every runner does alike, whatever runs the work: the intake (a submit either
    lands before ``close()`` or is refused, never in between), ``close``/``terminate``
    as commands to its one thread, and ``join``. Subclasses set up ``intake``,
    ``accepting``, ``refusal`` (see :meth:`_open_intake`) and ``_thread``, and implement
    ``command``."""

    intake: threading.Lock
    accepting: bool
    refusal: str
    _thread: threading.Thread

    def _open_intake(self) -> None:
        self.intake = threading.Lock()
        self.accepting = True
        self.refusal = "the pool is closed"

    def command(self, cmd: Command, arg: Any = None) -> None:
        raise NotImplementedError

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


class Record:
    """One unit of dispatch: a single call, or a chunk of items of a map."""

    __slots__ = ("attempts", "base", "call", "data", "elapsed_ns", "items", "mode", "rid",
                 "trace", "worker")

    def __init__(self, call: TaskCall, base: int, items: Any, mode: int,
                 data: bytes | None) -> None:
        self.rid = 0
        self.call = call
        self.base = base  # index of the first item within its call
        self.items = items  # the unpickled items (or (args, kwargs)), to split or describe
        self.mode = mode
        # The pickled items; None: pickled by the runner when dispatched, and not kept
        # (a map's input is not held twice, once as objects and once as bytes).
        self.data = data
        self.attempts = 0  # failures charged to this record (its retries used)
        self.elapsed_ns = 0  # run time in the worker, once it ran
        self.worker = -1  # index of the worker slot that ran it
        self.trace: int | None = None  # when a trace records it: its submit time (ns)

    @property
    def size(self) -> int:
        return 1 if self.mode == _worker.CALL else len(self.items)

    def item(self, k: int) -> Any:
        return self.items if self.mode == _worker.CALL else self.items[k]

    def split(self, start: int, stop: int) -> Record:
        """A new record for items [start, stop) of this one (map chunks only)."""
        rec = Record(self.call, self.base + start, self.items[start:stop], self.mode, None)
        rec.attempts = self.attempts
        rec.trace = self.trace
        return rec


def callback_error(exc: BaseException, which: str) -> CallbackError:
    """The error a call reports when its ``callback``, ``error_callback`` or progress
    hook raised ``exc``."""
    err = CallbackError(f"the {which} raised {type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err
