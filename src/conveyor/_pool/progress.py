"""Progress bars and callbacks, run in the parent on a thread of their own.

The supervisor only posts work here; a slow callback or a progress bar writing to a slow
terminal never delays dispatch, so it never leaves workers idle. Posts run in order,
so a call's progress updates always come before its completion callback.

Where a bar goes depends on where stderr goes (``make_bar``). On a terminal: a tqdm bar
redrawn in place. Anywhere else (a log file, CI): a redrawn bar is a wall of ``\r`` and
cursor escapes, so ``LineBar`` prints one plain line every ``CONVEYOR_PROGRESS_EVERY``
seconds (10 by default) and one at the end. ``CONVEYOR_PROGRESS=off`` shows nothing at
all; ``=bar`` and ``=lines`` force one kind.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

ProgressSpec = bool | Callable[[int, int | None], object] | None


class CallbackThread:
    """One named thread per pool, started on first use, that runs posted callables."""

    def __init__(self, name: str = "conveyor-pool-callbacks") -> None:
        self._name = name
        self._queue: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]] | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopped = False

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        # Under the lock, so a post racing with stop() either lands before the stop
        # marker (and runs on the thread) or runs inline: it is never dropped.
        with self._lock:
            if not self._stopped:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name=self._name,
                                                    daemon=True)
                    self._thread.start()
                self._queue.put((fn, args))
                return
        fn(*args)  # after the pool's end: nothing left to overtake

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            fn, args = job
            fn(*args)  # posted callables catch their own errors (see _pool)

    def stop(self) -> None:
        """Run what was posted, then end the thread; later posts run in the caller."""
        with self._lock:
            self._stopped = True
            thread = self._thread
            if thread is not None:
                self._queue.put(None)
        if thread is not None and thread is not threading.current_thread():
            thread.join()


class Progress:
    """A tqdm bar, or a user callable ``fn(done, total)``; updated from one thread."""

    def __init__(self, spec: ProgressSpec, total: int | None, desc: str) -> None:
        self.done = 0
        self.total = total
        self._fn: Callable[[int, int | None], object] | None = None
        self._bar: Any = None
        if callable(spec):
            self._fn = spec
        elif spec:
            self._bar = make_bar(total=total, desc=desc, unit="task", dynamic_ncols=True,
                                 smoothing=0.1)

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._fn is not None:
            self._fn(self.done, self.total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def progress_mode(stream: TextIO | None = None) -> str:
    """``"bar"``, ``"lines"`` or ``"off"``: what a progress display on ``stream``
    (stderr by default) should be, from ``CONVEYOR_PROGRESS`` and whether it is a terminal."""
    asked = os.environ.get("CONVEYOR_PROGRESS", "auto").strip().lower()
    if asked in ("off", "0", "no", "none", "false"):
        return "off"
    if asked in ("bar", "lines"):
        return asked
    stream = sys.stderr if stream is None else stream
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-less stream
        tty = False
    return "bar" if tty else "lines"


def _line_interval() -> float:
    try:
        return max(0.0, float(os.environ.get("CONVEYOR_PROGRESS_EVERY", "10")))
    except ValueError:
        return 10.0


class LineBar:
    """A progress display for logs: a plain line now and then, never ``\r`` or escapes.

    Takes tqdm's keyword arguments (ignoring those about drawing) and offers the part of
    tqdm's interface the package uses: ``n``, ``total``, ``update``, ``refresh``,
    ``set_postfix_str``, ``close``, and ``with``. A line looks like
    ``count_primes: 20% 1,200/6,000 task, 240/s, 5 s``."""

    def __init__(self, total: float | None = None, desc: str | None = None, unit: str = "it",
                 initial: float = 0, file: TextIO | None = None, **_drawing: Any) -> None:
        self.total = total
        self.n = initial
        self._initial = initial
        self._desc = desc or "progress"
        self._unit = unit.strip() or "it"
        self._file = file
        self._every = _line_interval()
        self._started = time.monotonic()
        self._last = self._started
        self._closed = False
        self._postfix = ""

    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self._every:
            self._last = now
            self._print(now)

    def refresh(self) -> None:
        """tqdm redraws here; a log gets its lines on schedule only."""

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        """Shown at the end of the next line (a pipeline stage's buffer fill)."""
        self._postfix = s

    def _print(self, now: float) -> None:
        elapsed = now - self._started
        if self.total:  # the percentage first, where tqdm puts it
            done = f"{100 * self.n / self.total:.0f}% {self.n:,.0f}/{self.total:,.0f} {self._unit}"
        else:
            done = f"{self.n:,.0f} {self._unit}"
        rate = (self.n - self._initial) / elapsed if elapsed > 0 else 0.0
        file = self._file if self._file is not None else sys.stderr
        extra = f", {self._postfix}" if self._postfix else ""
        print(f"{self._desc}: {done}, {rate:,.0f}/s, {elapsed:.0f} s{extra}", file=file,
              flush=True)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._print(time.monotonic())

    def __enter__(self) -> LineBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NullBar(LineBar):
    """What ``CONVEYOR_PROGRESS=off`` gets: counts, prints nothing."""

    def update(self, n: float = 1) -> None:
        self.n += n

    def close(self) -> None:
        self._closed = True


def make_bar(**tqdm_kwargs: Any) -> Any:
    """A progress bar suited to where it is written: a tqdm bar on a terminal, a
    ``LineBar`` elsewhere, a ``NullBar`` when ``CONVEYOR_PROGRESS=off``. Takes tqdm's
    keyword arguments, so a ``tqdm(...)`` call becomes ``make_bar(...)`` unchanged.
    ``monitor=False`` is for callers that refresh the bar themselves: no tqdm monitor
    thread (a thread alive when the caller later forks workers is a hazard)."""
    monitor = tqdm_kwargs.pop("monitor", True)
    mode = progress_mode(tqdm_kwargs.get("file"))
    if mode == "off":
        return NullBar(**tqdm_kwargs)
    if mode == "lines":
        return LineBar(**tqdm_kwargs)
    from tqdm.auto import tqdm

    if monitor:
        return tqdm(**tqdm_kwargs)

    class _Unmonitored(tqdm):  # type: ignore[misc]
        monitor_interval = 0

    return _Unmonitored(**tqdm_kwargs)
