"""Progress bars and callbacks, run in the parent on a thread of their own.

The supervisor only posts work here; a slow callback or a progress bar writing to a slow
terminal never delays dispatch, so it never leaves workers idle. Posts run in order,
so a call's progress updates always come before its completion callback.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

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
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit="task", dynamic_ncols=True,
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
