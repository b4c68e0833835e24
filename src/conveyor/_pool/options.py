"""A pool's options: checked once, where they are given, and carried as one object.

``Pool(...)`` takes defaults for every call (``task_timeout``, ``retries``,
``retry_on``); a call may override them. Either way they are validated here, with
errors that name the parameter and the value, and travel to the supervisor as one
:class:`_Spec` per function and set of options.
"""

from __future__ import annotations

import math
import os
from typing import Any


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


class TaskOptions:
    """``task_timeout``, ``retries`` and ``retry_on``: a pool's defaults, or one call's,
    checked here and nowhere else."""

    __slots__ = ("retries", "retry_on", "timeout")

    def __init__(self, timeout: float | None, retries: int,
                 retry_on: tuple[type[BaseException], ...]) -> None:
        self.timeout = timeout
        self.retries = retries
        self.retry_on = retry_on

    @classmethod
    def check(cls, task_timeout: Any, retries: Any, retry_on: Any) -> TaskOptions:
        """A pool's defaults, every one of them checked."""
        _check_timeout(task_timeout)
        _check_retries(retries)
        return cls(task_timeout, retries, _check_retry_on(retry_on))

    def overridden(self, task_timeout: Any, retries: Any, retry_on: Any) -> TaskOptions:
        """These options with a call's own (None: keep the default), each one checked."""
        _check_timeout(task_timeout)
        if retries is not None:
            _check_retries(retries)
        return TaskOptions(
            self.timeout if task_timeout is None else task_timeout,
            self.retries if retries is None else retries,
            self.retry_on if retry_on is None else _check_retry_on(retry_on))


class _Spec:
    """A function and its per-call options, resolved and validated once.

    A plain class rather than a dataclass: dataclasses compile their methods when the
    module is imported, and that was most of the pool's start-up on a slow machine."""

    __slots__ = ("fn_bytes", "fn_id", "fn_name", "retries", "retry_on", "timeout")

    def __init__(self, fn_name: str, fn_id: int, fn_bytes: bytes, options: TaskOptions) -> None:
        self.fn_name = fn_name
        self.fn_id = fn_id
        self.fn_bytes = fn_bytes
        # Copied out of the options: the supervisor reads them per record.
        self.timeout = options.timeout
        self.retries = options.retries
        self.retry_on = options.retry_on

