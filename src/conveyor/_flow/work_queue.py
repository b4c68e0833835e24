"""``work_queue``: tasks that add tasks, ending by itself when all work is done.

This answers the seed's JoinableQueue question (when may a consumer stop?) for work
that discovers more work, such as a crawler. ``handler(task, add)`` runs in a worker;
every ``add(new_task)`` it makes travels back to the parent *with* the handler's
completion, in one message. The parent counts tasks queued or running; the run ends
when that count reaches zero. Because the new tasks arrive in the same message that
reports their parent task done, there is no moment at which the count can read zero
while a task added "just before finishing" is still in flight: termination detection
is race-free by construction, with no sentinels and no timeouts.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import Any

from conveyor._pool.pool import Pool
from conveyor.errors import PipelineError, short_repr


class _Handler:
    """Runs in the worker: calls ``handler(task, add)`` and returns (result, added)."""

    def __init__(self, handler: Callable[[Any, Callable[[Any], None]], Any]) -> None:
        self.handler = handler

    def __call__(self, task: Any) -> tuple[Any, list[Any]]:
        added: list[Any] = []
        result = self.handler(task, added.append)
        return result, added


def work_queue(
    initial_tasks: Iterable[Any],
    handler: Callable[[Any, Callable[[Any], None]], Any],
    *,
    workers: int | None = None,
    progress: bool = False,
    on_error: str = "raise",
    max_tasks: int | None = None,
    unique: bool = False,
    **pool_options: Any,
) -> list[Any]:
    """Run ``handler(task, add)`` on every task, including those the handlers add.

    Returns the handlers' results (in completion order). The run ends by itself when
    no task is queued and none is running.

    Example::

        def crawl(url, add):
            page = fetch(url)
            for link in page.links:
                add(link)               # runs later, on any worker
            return url, len(page.text)

        results = conveyor.work_queue(["https://example.org"], crawl, workers=8)

    An exception in a handler stops the run and raises ``PipelineError`` (the original
    is its cause); with ``on_error="skip"`` failed tasks are left out (use
    :func:`iter_work_queue` with ``errors=[]`` to collect them, or to stream results).
    """
    return list(iter_work_queue(initial_tasks, handler, workers=workers, progress=progress,
                                on_error=on_error, max_tasks=max_tasks, unique=unique,
                                **pool_options))


def iter_work_queue(
    initial_tasks: Iterable[Any],
    handler: Callable[[Any, Callable[[Any], None]], Any],
    *,
    workers: int | None = None,
    progress: bool = False,
    on_error: str = "raise",
    max_tasks: int | None = None,
    unique: bool = False,
    errors: list[tuple[Any, BaseException]] | None = None,
    **pool_options: Any,
) -> Iterator[Any]:
    """Like :func:`work_queue`, yielding each result as soon as its task finishes.

    With ``on_error="skip"``, failed tasks are appended to ``errors`` (a list you pass)
    as ``(task, exception)`` and the run goes on. ``max_tasks`` bounds the total number
    of tasks run (a guard against runaway growth); exceeding it raises ``PipelineError``.
    ``unique=True`` runs each distinct (hashable) task once, however often it is added:
    what a crawler of a link graph needs.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f'on_error must be "raise" or "skip", got {on_error!r}')
    if not callable(handler):
        raise TypeError(f"handler must be callable, got {short_repr(handler)}")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc=getattr(handler, "__qualname__", "work_queue"), unit="task", total=0)
    wrapped = _Handler(handler)
    pool = Pool(workers, **pool_options)
    clean = False
    try:
        running: dict[Future[Any], Any] = {}
        finished: queue.SimpleQueue[Future[Any]] = queue.SimpleQueue()
        known = 0
        seen: set[Any] = set()

        def start(task: Any) -> None:
            nonlocal known
            if unique:
                if task in seen:
                    return
                seen.add(task)
            known += 1
            if max_tasks is not None and known > max_tasks:
                raise PipelineError("work_queue", short_repr(task),
                                    f"more than max_tasks={max_tasks} tasks were added")
            fut = pool.submit(wrapped, task)
            running[fut] = task
            fut.add_done_callback(finished.put)
            if bar is not None:
                bar.total = known  # drawn with the next update

        for task in initial_tasks:
            start(task)
        while running:
            for fut in _drain(finished):
                task = running.pop(fut)
                exc = fut.exception()
                if exc is not None:
                    if on_error == "raise":
                        raise PipelineError(
                            "work_queue", short_repr(task),
                            f"the handler failed on task {short_repr(task)}: "
                            f"{type(exc).__name__}: {exc}") from exc
                    if errors is not None:
                        errors.append((task, exc))
                else:
                    result, added = fut.result()
                    for new in added:
                        start(new)
                    yield result
                if bar is not None:
                    bar.update(1)
        clean = True
    finally:
        if clean:
            pool.shutdown(wait=True)
        else:
            pool.terminate()
        if bar is not None:
            bar.close()


def _drain(finished: queue.SimpleQueue[Future[Any]]) -> list[Future[Any]]:
    """Wait for at least one finished future; take every one that is there."""
    while True:
        try:
            done = [finished.get(timeout=0.5)]
            break
        except queue.Empty:
            continue  # wake up now and then, so Ctrl-C is seen promptly everywhere
    while True:
        try:
            done.append(finished.get_nowait())
        except queue.Empty:
            return done
