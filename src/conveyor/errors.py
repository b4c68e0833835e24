"""Every public exception of conveyor, in one tree under :class:`ConveyorError`.

Each error carries facts (task index, a short repr of the arguments, worker pid, exit code
or signal) as attributes, and is picklable, so it crosses process boundaries intact.

Where a standard-library exception already means the same thing, ours subclasses it, so
existing ``except`` clauses keep working:

============================  =====================================================
conveyor                      also an instance of
============================  =====================================================
``WorkerLostError``           ``concurrent.futures.process.BrokenProcessPool``
``WorkerStartError``          ``concurrent.futures.process.BrokenProcessPool``
``TaskTimeoutError``          ``TimeoutError``
``ResultTimeoutError``        ``multiprocessing.TimeoutError``, ``TimeoutError``
``SerializationError``        ``pickle.PicklingError``
``PoolClosedError``           ``ValueError``, ``RuntimeError``
``ChannelClosed``             -- (base of the next two)
``ClosedChannelError``        --
``EndOfChannel``              --
``ChannelBroken``             --
``ChannelFull``               ``queue.Full``
``ChannelEmpty``              ``queue.Empty``
``PipelineError``             --
``TeamBrokenError``           ``threading.BrokenBarrierError``
``TeamMemberLostError``       --
============================  =====================================================

Example::

    try:
        pool.map(risky, items)
    except conveyor.WorkerLostError as e:
        print(e.task_index, e.signal_name, e.pid)
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import pickle
import queue
import signal
import threading
from concurrent.futures.process import BrokenProcessPool
from typing import Any

__all__ = [
    "CallbackError",
    "ChannelBroken",
    "ChannelClosed",
    "ChannelEmpty",
    "ChannelFull",
    "ClosedChannelError",
    "ConveyorError",
    "EndOfChannel",
    "PipelineError",
    "PoolClosedError",
    "RemoteError",
    "RemoteTraceback",
    "ResultTimeoutError",
    "SerializationError",
    "TaskTimeoutError",
    "TeamBrokenError",
    "TeamMemberLostError",
    "WorkerLostError",
    "WorkerStartError",
]


def signal_name(signum: int | None) -> str | None:
    """``9`` -> ``"SIGKILL"``; None for None or an unknown number."""
    if signum is None:
        return None
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class ConveyorError(Exception):
    """Base class of every error conveyor raises itself."""


class RemoteTraceback(ConveyorError):
    """Attached as ``__cause__`` of an exception re-raised from a worker.

    Its message is the worker's formatted traceback, so Python's usual chained
    traceback display shows where in the worker the failure happened.
    """

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return "\n\nTraceback in the worker process:\n" + self.tb.rstrip()

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.tb,))


class WorkerLostError(ConveyorError, BrokenProcessPool):
    """A worker process died while it ran a task.

    Only that task fails; the worker is replaced and the pool goes on.

    Attributes: ``task_index`` (position of the task in its ``map``/``imap`` call, or
    for ``submit``/``apply_async`` the task's submission number in the pool),
    ``task_repr`` (short repr of its arguments), ``pid``, ``exitcode`` (negative for a
    signal, as :attr:`multiprocessing.Process.exitcode`), ``signal_name``,
    ``peak_rss`` (bytes, when known), ``guess`` (a likely cause, labelled as such) and
    ``phase`` (``"sending its result"`` when the function had returned and the worker
    died pickling its result; None while the function ran).
    """

    def __init__(
        self,
        task_index: int | None,
        task_repr: str,
        pid: int | None,
        exitcode: int | None,
        peak_rss: int | None = None,
        guess: str | None = None,
        phase: str | None = None,
    ) -> None:
        self.task_index = task_index
        self.task_repr = task_repr
        self.pid = pid
        self.exitcode = exitcode
        self.signal_name = signal_name(-exitcode) if exitcode is not None and exitcode < 0 else None
        self.peak_rss = peak_rss
        self.guess = guess
        self.phase = phase
        super().__init__(self._message())

    def _message(self) -> str:
        what = f"task {self.task_index}" if self.task_index is not None else "a task"
        if self.signal_name:
            how = f"was killed by {self.signal_name}"
        elif self.exitcode is not None:
            how = f"exited with code {self.exitcode}"
        else:
            how = "disappeared"
        doing = f"{self.phase} of" if self.phase else "running"
        msg = f"the worker (pid {self.pid}) {doing} {what} {self.task_repr} {how}"
        if self.peak_rss:
            msg += f"; its peak resident memory was {self.peak_rss / 2**20:.0f} MiB"
        if self.guess:
            msg += f" (a guess: {self.guess})"
        return msg

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            type(self),
            (self.task_index, self.task_repr, self.pid, self.exitcode, self.peak_rss, self.guess,
             self.phase),
        )


class WorkerStartError(ConveyorError, BrokenProcessPool):
    """A worker could not start: its initializer raised, or the process failed to boot.

    The pool cannot run tasks without workers, so every pending task fails with this.
    The initializer's exception, with its traceback, is the ``__cause__``.
    """


class TaskTimeoutError(ConveyorError, TimeoutError):
    """A task ran longer than its ``task_timeout``; its worker was killed and replaced."""

    def __init__(self, task_index: int | None, task_repr: str, timeout: float, pid: int | None) -> None:
        self.task_index = task_index
        self.task_repr = task_repr
        self.timeout = timeout
        self.pid = pid
        what = f"task {task_index}" if task_index is not None else "a task"
        super().__init__(
            f"{what} {task_repr} ran longer than its timeout of {timeout:g} s; "
            f"its worker (pid {pid}) was killed and replaced"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.task_index, self.task_repr, self.timeout, self.pid))


class ResultTimeoutError(
    ConveyorError, multiprocessing.TimeoutError, concurrent.futures.TimeoutError
):
    """Waiting for a result (``AsyncResult.get(timeout)``, ``map(timeout=)``) timed out.

    The task itself goes on running; only the wait ended.
    """


class SerializationError(ConveyorError, pickle.PicklingError):
    """Something could not be pickled or unpickled; the message says what and where.

    Attributes: ``what`` ("function", "argument", "result", "item", ...),
    ``task_index`` (or None).
    """

    def __init__(self, message: str, what: str = "object", task_index: int | None = None) -> None:
        super().__init__(message)
        self.what = what
        self.task_index = task_index

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.what, self.task_index))


class RemoteError(ConveyorError):
    """A worker raised an exception that could not be sent back as itself (it does not
    pickle). Carries the original type's name and message; the worker's traceback is
    the ``__cause__``."""

    def __init__(self, type_name: str, message: str) -> None:
        self.type_name = type_name
        self.message = message
        super().__init__(f"{type_name}: {message}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.type_name, self.message))


class PoolClosedError(ConveyorError, ValueError, RuntimeError):
    """Work was submitted to a pool after ``close()``, ``shutdown()`` or ``terminate()``.

    A ``ValueError`` as ``multiprocessing.Pool`` raises, and a ``RuntimeError`` as
    ``concurrent.futures.Executor`` raises, so either habit's ``except`` works.
    """


class WrongProcessError(PoolClosedError):
    """A pool was used in a process forked from the one that created it.

    A pool's workers, pipes and supervisor thread belong to its creator; a forked child
    has copies that lead nowhere. Create a new pool in the child. Attributes:
    ``owner_pid`` (the creator) and ``pid`` (the process that tried).
    """

    def __init__(self, owner_pid: int, pid: int) -> None:
        self.owner_pid = owner_pid
        self.pid = pid
        super().__init__(f"this pool belongs to process {owner_pid}, and process {pid} is a "
                         "fork of it; create a new pool in the child")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.owner_pid, self.pid))


class CallbackError(ConveyorError):
    """A ``callback``, ``error_callback`` or ``progress`` callable raised.

    The callable's exception is the ``__cause__``. Work itself was not affected.
    """


class ChannelClosed(ConveyorError):
    """Base of the two ways a channel is closed for an operation: :class:`EndOfChannel`
    (receiving: the stream ended) and :class:`ClosedChannelError` (sending: closed by
    you, or by every declared sender). ``except ChannelClosed`` catches both."""


class EndOfChannel(ChannelClosed):
    """End of stream, the normal end: every sender closed and the channel is drained.
    Iterating a channel ends on it."""


class ClosedChannelError(ChannelClosed):
    """Nothing more can be sent: you called ``close()`` on this handle (it means "I am
    done"), or every declared sender has closed the channel."""


class ChannelBroken(ConveyorError):
    """The channel cannot be used any more: cancelled, or a peer process died.

    Attributes: ``reason`` (``"cancelled"``, ``"sender died"``, ``"receiver died"``
    or ``"gone"``) and ``pid`` (the process that cancelled or died, when known).
    """

    def __init__(self, message: str, reason: str = "cancelled", pid: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.pid = pid

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.reason, self.pid))


class ChannelFull(ConveyorError, queue.Full):
    """``put`` found no room before its timeout (or at once, for ``put_nowait``).

    Attribute ``sent``: how many items of a ``put_many`` went in before it gave up.
    """

    def __init__(self, message: str, sent: int = 0) -> None:
        super().__init__(message)
        self.sent = sent

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.sent))


class ChannelEmpty(ConveyorError, queue.Empty):
    """``get`` found nothing before its timeout (or at once, for ``get_nowait``)."""


class PipelineError(ConveyorError):
    """A pipeline stage failed on an item.

    Attributes: ``stage`` (name), ``item_repr``; the original exception is the ``__cause__``.
    """

    def __init__(self, stage: str, item_repr: str, message: str = "") -> None:
        self.stage = stage
        self.item_repr = item_repr
        super().__init__(message or f"stage {stage!r} failed on item {item_repr}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.stage, self.item_repr, str(self)))


class TeamBrokenError(ConveyorError, threading.BrokenBarrierError):
    """Raised in team members: another member failed, so this collective cannot complete.

    Members waiting in ``barrier()``, ``broadcast()``, ``gather()`` or ``allreduce()`` get
    it at once instead of waiting forever; later collectives raise it too. The parent of the
    team raises the original failure, not this.

    Attributes: ``rank`` (who raised it), ``failed_rank`` (the member that caused it, or
    None), ``reason``.
    """

    def __init__(self, rank: int, failed_rank: int | None, reason: str) -> None:
        self.rank = rank
        self.failed_rank = failed_rank
        self.reason = reason
        who = f"rank {failed_rank}" if failed_rank is not None else "a member"
        super().__init__(f"the team is broken for rank {rank}: {who} {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.rank, self.failed_rank, self.reason))


class TeamMemberLostError(ConveyorError):
    """A team member process died without raising an exception (a signal, ``os._exit``).

    Attributes: ``rank``, ``pid``, ``exitcode`` (negative for a signal) and ``signal_name``.
    """

    def __init__(self, rank: int, pid: int | None, exitcode: int | None) -> None:
        self.rank = rank
        self.pid = pid
        self.exitcode = exitcode
        self.signal_name = signal_name(-exitcode) if exitcode is not None and exitcode < 0 else None
        how = (
            f"was killed by {self.signal_name}" if self.signal_name
            else f"exited with code {exitcode} before returning"
        )
        super().__init__(f"team member rank {rank} (pid {pid}) {how}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.rank, self.pid, self.exitcode))


def short_repr(obj: object, limit: int = 80) -> str:
    """A repr for error messages: never raises, never longer than ``limit``."""
    try:
        text = repr(obj)
    except Exception as exc:  # a broken __repr__ must not hide the real error
        text = f"<{type(obj).__name__} with a failing repr: {exc!r}>"
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


for _cls in list(globals().values()):
    if isinstance(_cls, type) and issubclass(_cls, ConveyorError):
        _cls.__module__ = "conveyor"
del _cls


class SharedObjectClosedError(ConveyorError, ValueError):
    """A shared object (struct, value, dict, list, array) was used after ``close()``
    (or the end of its ``with`` block) in this process. A ``ValueError``, as for a
    closed file."""


class SharedMemoryFullError(ConveyorError, OSError):
    """There is not enough free space where shared memory lives (``/dev/shm``) for a
    shared object to be created or to grow. Nothing was written.

    Attributes: ``requested`` (bytes asked for), ``free`` (bytes free on the mount) and
    ``mount`` (its path). Docker's default ``/dev/shm`` is 64 MB: ``--shm-size`` raises it.
    """

    def __init__(self, message: str, requested: int = 0, free: int = 0, mount: str = "") -> None:
        super().__init__(message)
        self.errno = 28  # ENOSPC, what posix_fallocate reported
        self.requested = requested
        self.free = free
        self.mount = mount

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.requested, self.free, self.mount))


SharedObjectClosedError.__module__ = SharedMemoryFullError.__module__ = "conveyor"
__all__ += ["SharedMemoryFullError", "SharedObjectClosedError"]
