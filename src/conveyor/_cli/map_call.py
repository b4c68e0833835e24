"""What a ``conveyor map`` worker runs for each call: the user's function on one item
(or one ``--batch`` of items), timed, with its result turned into JSON text here, in the
worker, so the parent only writes text to the journal.

An exception is caught and returned as data (type name, message, traceback, and whether
``--retry-on`` names it), never raised: the parent decides about retries, so it knows the
number of attempts of each item. Only what kills the worker or overruns ``--timeout``
reaches the parent as the pool's own errors.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

# How items become arguments.
ONE = 0  # fn(item)
KWARGS = 1  # fn(**item) for an object, fn(item) otherwise
BATCH = 2  # fn([item, ...]) -> one result per item

# One item's outcome: (ok, result JSON or None, error or None, seconds, pid, started).
# error: (type name, message, traceback text, retryable).
Outcome = tuple[bool, str | None, tuple[str, str, str, bool] | None, float, int, float]


def _json_default(value: Any) -> Any:
    tolist = getattr(value, "tolist", None)  # numpy scalars and arrays
    if callable(tolist):
        return tolist()
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    raise TypeError(f"the result {type(value).__name__} {value!r:.60} is not JSON data; "
                    "return str, numbers, lists, dicts, True/False or None")


def to_json(value: Any) -> str:
    return json.dumps(value, default=_json_default, ensure_ascii=False, separators=(",", ":"))


def _matches(exc: BaseException, names: Sequence[str]) -> bool:
    for cls in type(exc).__mro__:
        if cls.__name__ in names or f"{cls.__module__}.{cls.__qualname__}" in names:
            return True
    return False


def run_call(fn: Callable[..., Any], values: Sequence[Any], style: int,
             retry_on: Sequence[str]) -> list[Outcome]:
    pid = os.getpid()
    started = time.time()
    t0 = time.perf_counter()
    try:
        if style == BATCH:
            out = fn(list(values))
            if not isinstance(out, list | tuple) or len(out) != len(values):
                got = f"{len(out)} results" if isinstance(out, list | tuple) else repr(out)[:60]
                raise ValueError(f"with --batch the function gets a list of {len(values)} "
                                 f"items and must return a list of {len(values)} results; "
                                 f"it returned {got}")
            results = [to_json(r) for r in out]
        elif style == KWARGS and isinstance(values[0], dict):
            results = [to_json(fn(**values[0]))]
        else:
            results = [to_json(fn(values[0]))]
    except (Exception, SystemExit) as exc:  # SystemExit: a task's sys.exit fails its item
        seconds = (time.perf_counter() - t0) / len(values)
        tb = exc.__traceback__
        frames = tb.tb_next if tb is not None else None  # from the user's code on
        error = (type(exc).__name__, str(exc),
                 "".join(traceback.format_exception(type(exc), exc, frames)),
                 _matches(exc, retry_on))
        return [(False, None, error, seconds, pid, started)] * len(values)
    seconds = (time.perf_counter() - t0) / len(values)
    return [(True, r, None, seconds, pid, started) for r in results]
