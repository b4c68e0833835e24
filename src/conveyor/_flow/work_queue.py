"""``work_queue``: tasks that add tasks, ending by itself when all work is done.

Data flow (the parent queues; workers run handlers)::

    initial tasks --> [queue in the parent] --chunks--> workers: handler(task, add)
                          ^                                          |
                          +-- added tasks, in the message that ------+
                              reports their task's result

This answers the JoinableQueue question (when may a consumer stop?) for work that
discovers more work, such as a crawler.

* **The driver** runs in the caller's thread (no thread of its own). It keeps the tasks
  not yet sent in a list (a pointer per task, whatever the count: a handler that adds a
  million tasks costs tens of megabytes, not a future per task), sends them to the pool
  in chunks sized from measured run times (``ChunkSizer``: about 2 ms of work each, one
  task per chunk for slow handlers), and keeps at most two chunks per worker out, so
  what is in flight stays bounded however many tasks are queued.
* **Workers** run ``handler(task, add)`` for each task of a chunk; every ``add`` is
  collected and travels back *with* the task's result, in the chunk's one message.
* **Termination** needs no sentinels or timeouts: the run ends when the queue is empty
  and no chunk is out. The driver alone changes both, and it queues a finished chunk's
  added tasks before it counts that chunk as ended, so there is no moment at which
  both read empty while a task added "just before finishing" is still on its way:
  termination detection is race-free by construction.

A worker that dies fails only the task it was running (``WorkerLostError``); the other
tasks of its chunk are run again (the pool splits the chunk), as in ``Pool.map``. A
pool-wide ``task_timeout`` applies per task, so with one every chunk is a single task.
Ctrl-C is handled as in ``Pipeline`` (see ``interrupts``).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from conveyor._flow.interrupts import Interrupts
from conveyor._flow.pipeline import ChunkCall, ChunkSink, ChunkSizer, Done, Fifo
from conveyor._pool.pool import Pool
from conveyor.errors import PipelineError, short_repr


class _Handler:
    """Runs in the worker: calls ``handler(task, add)`` and returns (result, added)."""

    def __init__(self, handler: Callable[[Any, Callable[[Any], None]], Any]) -> None:
        self.handler = handler
        # The pool names a failed task after its function: say the handler's name.
        self.__qualname__ = getattr(handler, "__qualname__", type(handler).__name__)

    def __call__(self, task: Any) -> tuple[Any, list[Any] | None]:
        added: list[Any] = []
        result = self.handler(task, added.append)
        return result, added or None  # None pickles smaller than [] for the usual leaf


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

    Options of :class:`Pool` pass through (``cluster=`` runs the handlers on a Dask
    cluster; tasks a handler adds travel back with its result, as locally).

    An exception in a handler stops the run and raises ``PipelineError`` (the original
    is its cause); with ``on_error="skip"`` failed tasks are left out (use
    :func:`iter_work_queue` with ``errors=[]`` to collect them, or to stream results).
    Tasks wait in the parent and only a bounded number are out at a time, so a handler
    may add millions of them.
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
    if max_tasks is not None and (not isinstance(max_tasks, int) or max_tasks < 0):
        raise ValueError(f"max_tasks must be a non-negative integer or None, got {max_tasks!r}")
    run = _Run(handler, workers, progress, on_error == "skip", errors, max_tasks, unique,
               pool_options)
    return run.results(initial_tasks)


class _Run(ChunkSink):
    """One run of a work queue: the driver loop, and the sink of the pool's chunks."""

    def __init__(self, handler: Callable[..., Any], workers: int | None, progress: bool,
                 skip: bool, errors: list[tuple[Any, BaseException]] | None,
                 max_tasks: int | None, unique: bool, pool_options: dict[str, Any]) -> None:
        self.handler = handler
        self.workers = workers
        self.progress = progress
        self.skip = skip
        self.errors = errors
        self.max_tasks = max_tasks
        self.unique = unique
        self.pool_options = pool_options
        # One task per chunk when a timeout is set: it is meant for each task.
        self.one_per_chunk = pool_options.get("task_timeout") is not None
        self.cond = threading.Condition()
        self.queue = Fifo()  # tasks not sent yet
        self.done: deque[Done] = deque()  # chunks ended, filled by the supervisor thread
        self.abort_error: BaseException | None = None
        self.out = 0  # tasks sent in chunks that have not ended
        self.capacity = 2
        self.known = 0
        self.seen: set[Any] = set()
        self.seq = 0
        self.sizer = ChunkSizer()
        self.interrupts = Interrupts(hold_in=_Run.results.__code__)
        self.pool: Pool | None = None
        self.call: ChunkCall | None = None
        self.bar: Any = None

    # ---- the driver (caller's thread); see Pipeline's driver for the Ctrl-C shield
    def results(self, initial_tasks: Iterable[Any]) -> Iterator[Any]:
        stopping: BaseException | None = None
        try:
            self.interrupts.install()
            self._start()
            self.interrupts.shielded = False  # the initial tasks' iterator is the user's
            initial = list(initial_tasks)
            self.interrupts.shielded = True
            self._add(initial)
            while self.queue or self.out or self.done:
                self.interrupts.check()
                self._dispatch()
                if not self.done:
                    with self.cond:
                        if not self.done and self.abort_error is None:
                            self.cond.wait(0.05)
                if self.abort_error is not None:
                    err = self.abort_error
                    raise PipelineError("work_queue", "-",
                                        f"the work queue stopped: {err}") from err
                results, failure = self._collect()
                self.interrupts.shielded = False
                for result in results:
                    yield result
                    if self.interrupts.held:
                        break  # raised at the top of the loop, where stopping is clean
                self.interrupts.shielded = True
                if failure is not None:
                    raise failure
        except BaseException as exc:  # GeneratorExit too: the caller stopped early
            stopping = exc
            raise
        finally:
            self._stop(stopping)

    def _start(self) -> None:
        if self.progress:
            from conveyor._pool.progress import make_bar  # plain lines off a terminal

            self.bar = make_bar(desc=getattr(self.handler, "__qualname__", "work_queue"),
                                unit="task", total=0)
        self.pool = Pool(self.workers, **self.pool_options)
        self.call = ChunkCall(self, self.pool, _Handler(self.handler))
        self.capacity = 2 * self.pool.workers

    def _stop(self, stopping: BaseException | None) -> None:
        self.interrupts.shielded = True
        try:
            if self.pool is not None:
                if stopping is None:
                    self.pool.shutdown(wait=True)
                else:
                    self.pool.terminate()
            if self.bar is not None:
                self.bar.close()
        finally:
            self.interrupts.restore(stopping)

    def _add(self, tasks: list[Any]) -> None:
        if self.unique:
            seen = self.seen
            fresh = []
            for task in tasks:
                if task not in seen:
                    seen.add(task)
                    fresh.append(task)
            tasks = fresh
        self.known += len(tasks)
        if self.max_tasks is not None and self.known > self.max_tasks:
            over = tasks[len(tasks) - (self.known - self.max_tasks)]
            raise PipelineError("work_queue", short_repr(over),
                                f"more than max_tasks={self.max_tasks} tasks were added "
                                f"(task {short_repr(over)} was one too many)")
        self.queue.extend(tasks)
        if self.bar is not None:
            self.bar.total = self.known  # drawn with the next update

    def _dispatch(self) -> None:
        """Send queued tasks in chunks while fewer than ``capacity`` tasks are out."""
        queue = self.queue
        assert self.call is not None
        while queue and self.out < self.capacity:
            n = min(self.sizer.chunk, len(queue))
            items = queue.take(n)
            self.sizer.learn_size(self.call.submit(self.seq, items), n)
            self.seq += 1
            self.out += n

    def _collect(self) -> tuple[list[Any], PipelineError | None]:
        """Take in the chunks that ended: queue what they added first, then count them
        as ended (the order that makes termination race-free). Return their results,
        and the error that stops the run (raised once the results before it are out)."""
        results: list[Any] = []
        while self.done:
            done = self.done.popleft()
            if not self.one_per_chunk:
                self.sizer.learn(done.elapsed_ns, len(done.items))
                assert self.pool is not None
                self.capacity = max(2, 2 * self.pool.workers * self.sizer.chunk)
            try:
                for k, task in enumerate(done.items):
                    exc = done.errors.get(k)
                    if exc is None:
                        result, added = done.values[k]
                        if added:
                            self._add(added)
                        results.append(result)
                    elif not self.skip:
                        err = PipelineError("work_queue", short_repr(task),
                                            f"the handler failed on task {short_repr(task)}: "
                                            f"{type(exc).__name__}: {exc}")
                        err.__cause__ = exc
                        raise err
                    elif self.errors is not None:
                        self.errors.append((task, exc))
            except PipelineError as err:
                return results, err
            self.out -= len(done.items)
            if self.bar is not None:
                self.bar.update(len(done.items))
        return results, None
