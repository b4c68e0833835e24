"""``conveyor.trace()`` and ``Trace``: turn recording on for a block, then write a file."""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from conveyor._trace import _recorder

if TYPE_CHECKING:
    from conveyor._trace._view import Span, TraceSummary, WorkerEvent

FORMATS = (".json", ".json.gz", ".html")
_stack_lock = threading.Lock()


def check_path(path: Any, parameter: str = "path") -> str:
    """The trace file's path as a str, or a ValueError naming what is wrong."""
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"{parameter} must be a file name ending in .json, .json.gz or .html, "
                        f"got {path!r}")
    text = os.fspath(path)
    if not isinstance(text, str) or not text.endswith(FORMATS):
        raise ValueError(f"{parameter}={text!r}: the suffix picks the format; use .json or "
                         ".json.gz (a Chrome trace for Perfetto) or .html (a report)")
    folder = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{parameter}={text!r}: the folder {folder} does not exist")
    return text


class Trace(_recorder.Recorder):
    """A recording of every task run by the pools (and pipelines and work queues, which
    run on pools) used while it is active.

    Example::

        with conveyor.trace("run.html") as t:      # or "run.json" for Perfetto
            with conveyor.Pool(4) as pool:
                pool.map(work, items)
        print(t.summary())

    Use it as a ``with`` block (process-wide: pools created by code you do not control
    are recorded too; blocks nest, the innermost records), or pass it to one pool with
    ``Pool(trace=t)``. The file, if given, is written when the block ends, even by an
    exception or Ctrl-C. ``max_events`` caps what is kept (``dropped`` counts the rest).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *,
                 max_events: int = _recorder.DEFAULT_MAX_EVENTS) -> None:
        super().__init__(max_events)
        self.path = None if path is None else check_path(path)
        self.write_when_pool_stops = False  # Pool(trace="file"): the pool owns this trace
        self._previous: _recorder.Recorder | None = None
        self._entered = False

    def __enter__(self) -> Trace:
        if self._entered:
            raise RuntimeError("this Trace is already active; create a new one per block")
        with _stack_lock:
            self._previous = _recorder.ACTIVE
            _recorder.ACTIVE = self
            self._entered = True
        return self

    def __exit__(self, *exc_info: Any) -> None:
        with _stack_lock:
            if _recorder.ACTIVE is self:
                _recorder.ACTIVE = self._previous
        self.end_ns = time.monotonic_ns()
        if self.path is not None:
            self.write(self.path)

    @property
    def spans(self) -> list[Span]:
        """Every span recorded so far, in the order results arrived."""
        from conveyor._trace import _view

        return _view.spans(self)

    @property
    def worker_events(self) -> list[WorkerEvent]:
        """Worker starts, readiness, retirements, exits, deaths and replacements."""
        from conveyor._trace import _view

        return _view.events(self)

    def summary(self) -> TraceSummary:
        """Per-worker utilisation, where the time went, the slowest tasks (numbers)."""
        from conveyor._trace import _view

        return _view.summarize(self)

    def write(self, path: str | os.PathLike[str]) -> str:
        """Write the trace; the suffix picks the format. Returns the path written."""
        text = check_path(path)
        if text.endswith(".html"):
            from conveyor._trace import _html

            _html.write(self, text)
        else:
            from conveyor._trace import _chrome

            _chrome.write(self, text)
        return text

    def pool_stopped(self, sup: Any) -> None:
        """Called by a pool's supervisor thread as it stops (``Pool(trace=...)``)."""
        if not self.write_when_pool_stops or self.path is None:
            return
        self.end_ns = time.monotonic_ns()
        try:
            self.write(self.path)
        except Exception as exc:  # the pool must still stop; say why there is no file
            sys.stderr.write(f"conveyor: could not write the trace {self.path!r}: "
                             f"{type(exc).__name__}: {exc}\n")

    def __repr__(self) -> str:
        return (f"<conveyor.Trace {self.path!r}: {self.kept} spans and worker events, "
                f"{self.dropped} dropped>")


def trace(path: str | os.PathLike[str] | None = None, *,
          max_events: int = _recorder.DEFAULT_MAX_EVENTS) -> Trace:
    """Record every pool used inside a ``with`` block; write ``path`` when it ends.

    ``path`` ends in ``.json`` / ``.json.gz`` (a Chrome trace: open it in Perfetto or
    ``chrome://tracing``) or ``.html`` (a self-contained report: a Gantt chart per
    worker, utilisation, a histogram of task durations, the slowest tasks and where the
    overhead went). ``None`` records without writing; read ``t.spans`` and
    ``t.summary()``.
    """
    return Trace(path, max_events=max_events)


def for_pool(value: Any) -> Trace | None:
    """What ``Pool(trace=value)`` records into."""
    if value is None or value is False:
        return None
    if isinstance(value, Trace):
        return value
    t = Trace(check_path(value, "trace"))
    t.write_when_pool_stops = True
    return t
