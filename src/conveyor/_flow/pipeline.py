"""``Pipeline``: stages of workers that start, run, report and end by themselves.

Data flow (the parent routes; workers compute)::

    source --> [buffer 0] --> stage 0 workers --> (reorder) --> [buffer 1] --> stage 1 ...
       ^            |                                                             |
       +-- read only while buffer 0 has room          results <-- (reorder) <----+

Actors:

* **The driver** runs in the thread that iterates the pipeline (or calls ``run``); it
  owns no thread of its own. It reads the source lazily, cuts each stage's input into
  chunks, hands them to the stage's workers, moves each stage's output into the next
  stage's bounded buffer (in input order when ``ordered``) and yields the last stage's
  output. It only reads or moves when the destination has room, so memory stays bounded
  whatever the source's length, and a slow stage slows everything before it instead of
  filling memory. A stage holds at most ``maxsize`` items in its buffer plus two chunks
  per worker in flight; a chunk is sized to about 2 ms of work (``ChunkSizer``), at most
  8192 items or about 1 MiB of pickled input. The driver's own work is per chunk, not
  per item (runs of items are sliced, filtered and joined as whole lists), and Ctrl-C is
  held back while it runs, then raised where stopping is clean (``interrupts``).
* **Process stages** run on a :class:`conveyor.Pool` of their own, so a worker that dies
  fails only its item (``WorkerLostError``) and is replaced, exactly as in the pool.
  **Thread stages** (``kind="thread"``, for I/O) run on a thread pool.
  ``batch``/``unbatch`` only regroup items and run in the driver.
* **End of stream** needs no sentinels: a stage ends when everything before it has ended
  and its buffer and workers are empty; the pipeline ends when the last stage has.

Why the parent routes instead of stage-to-stage channels: every item then crosses a
pool's supervised pipes, which is what gives each stage the pool's failure isolation,
timeouts and Ctrl-C handling, and chunking keeps the routing cost per item small.
"""

from __future__ import annotations

import functools
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from conveyor._flow.interrupts import Interrupts
from conveyor._pool import worker as _worker
from conveyor._pool.pool import Pool, _Call
from conveyor._pool.seam import Record
from conveyor.errors import PipelineError, short_repr

_TARGET_CHUNK_NS = 2_000_000  # aim for chunks of about 2 ms of work
# Per-chunk costs in the parent (a wake-up of the pool's thread, a hand-over of the GIL)
# are what cheap items pay for: 8192 measured 1.6x the items/s of 1024 on a 3-stage
# pipeline of arithmetic. Large items are held to about 1 MiB of pickled input a chunk.
_MAX_CHUNK = 8192
_MAX_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class StageStatistics:
    """What one stage did during a run."""

    name: str
    workers: int
    items_in: int
    items_out: int
    busy_seconds: tuple[float, ...]  # per worker
    wall_seconds: float

    @property
    def utilisation(self) -> float:
        """Busy time over available worker time: near 1.0 marks the bottleneck."""
        if not self.busy_seconds or self.wall_seconds <= 0:
            return 0.0
        return sum(self.busy_seconds) / (len(self.busy_seconds) * self.wall_seconds)

    @property
    def waiting_seconds(self) -> tuple[float, ...]:
        return tuple(max(0.0, self.wall_seconds - b) for b in self.busy_seconds)


@dataclass(frozen=True)
class PipelineStatistics:
    """Per-stage statistics of the last run; ``str()`` gives a readable table."""

    stages: tuple[StageStatistics, ...] = ()
    wall_seconds: float = 0.0

    def __str__(self) -> str:
        lines = [f"{'stage':<24}{'workers':>8}{'in':>10}{'out':>10}{'busy %':>8}  per-worker busy s"]
        for s in self.stages:
            busy = " ".join(f"{b:.2f}" for b in s.busy_seconds) or "-"
            lines.append(f"{s.name:<24}{s.workers:>8}{s.items_in:>10}{s.items_out:>10}"
                         f"{100 * s.utilisation:>7.0f}%  {busy}")
        lines.append(f"wall time {self.wall_seconds:.2f} s")
        return "\n".join(lines)


@dataclass(frozen=True)
class ItemError:
    """An item a stage failed on, kept by ``on_error="skip"``."""

    stage: str
    item: Any
    error: BaseException


# ------------------------------------------------------------------ what workers run


def _name_of(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__


class _Filter:
    """Runs a predicate; the driver keeps the items it accepted (they are not sent back).

    These wrappers carry the wrapped function's name, which the pool's errors show."""

    def __init__(self, pred: Callable[[Any], Any]) -> None:
        self.pred = pred
        self.__qualname__ = _name_of(pred)

    def __call__(self, item: Any) -> bool:
        return bool(self.pred(item))


class _FlatMap:
    def __init__(self, fn: Callable[[Any], Iterable[Any]]) -> None:
        self.fn = fn
        self.__qualname__ = _name_of(fn)

    def __call__(self, item: Any) -> list[Any]:
        return list(self.fn(item))


class _Each:
    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn
        self.__qualname__ = _name_of(fn)

    def __call__(self, item: Any) -> None:
        self.fn(item)


# ----------------------------------------------------------------------------- stages


@dataclass
class _StageSpec:
    op: str  # map, filter, flat_map, each, batch, unbatch
    fn: Callable[..., Any] | None
    name: str
    workers: int = 1
    kind: str = "process"
    maxsize: int | None = None
    initializer: Callable[..., Any] | None = None
    initargs: tuple[Any, ...] = ()
    size: int = 0  # batch size


@dataclass
class Done:
    """A finished chunk: its items, their values (or errors), run time and worker."""

    seq: int
    items: list[Any]
    values: list[Any]
    errors: dict[int, BaseException]
    elapsed_ns: int
    worker: int


class Fifo:
    """A first-in first-out queue of items, added and taken in runs.

    A list and a read position: ``extend`` and ``take(n)`` are one C-level copy each,
    where a deque costs a Python-level ``popleft`` per item (a third of the driver's
    time on cheap items). The consumed head is dropped once it is most of the list."""

    __slots__ = ("head", "items")

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.head = 0

    def __len__(self) -> int:
        return len(self.items) - self.head

    def extend(self, more: Iterable[Any]) -> None:
        self.items.extend(more)

    def take(self, n: int) -> list[Any]:
        items, head = self.items, self.head
        if head == 0 and n >= len(items):
            self.items = []
            return items
        out = items[head:head + n]
        head += len(out)
        if head == len(items):
            items.clear()
            head = 0
        elif head > 4096 and 2 * head > len(items):
            del items[:head]
            head = 0
        self.head = head
        return out


_SEQ_SHIFT = 20  # a record's base is (chunk seq << 20) + its first item's place in the chunk


class ChunkSink:
    """Who is told about a chunk call's chunks (a stage here; the work queue's driver):
    ended chunks go to ``done``, and the driver waiting on ``cond`` is woken. Subclasses
    set the three fields."""

    cond: threading.Condition
    done: deque[Done]
    abort_error: BaseException | None

    def finished(self, done: Done) -> None:
        """A chunk has ended (called in the pool's supervisor thread)."""
        self.done.append(done)

    def wake(self) -> None:
        """A batch of results was delivered: the driver may have work."""
        with self.cond:
            self.cond.notify_all()

    def aborted(self, exc: BaseException) -> None:
        """The pool stopped (terminated or broken): the chunks still out will not end."""
        self.abort_error = exc
        self.wake()


class ChunkSizer:
    """Chooses a chunk size from measured run times: about 2 ms of work per chunk, so
    the per-chunk cost in the parent stays small against the work, and a slow item
    does not hold many others back."""

    __slots__ = ("bytes_per_item", "chunk", "per_item_ns")

    def __init__(self) -> None:
        self.chunk = 1
        self.per_item_ns = 0.0
        self.bytes_per_item = 0.0

    def learn(self, elapsed_ns: int, items: int) -> None:
        per_item = elapsed_ns / max(1, items)
        self.per_item_ns = per_item if not self.per_item_ns else (
            0.7 * self.per_item_ns + 0.3 * per_item)
        want = int(_TARGET_CHUNK_NS / max(self.per_item_ns, 1.0))
        if self.bytes_per_item:
            want = min(want, int(_MAX_CHUNK_BYTES / self.bytes_per_item))
        self.chunk = max(1, min(_MAX_CHUNK, want))

    def learn_size(self, nbytes: int, items: int) -> None:
        """The pickled size of a chunk just sent: large items make smaller chunks."""
        self.bytes_per_item = max(self.bytes_per_item * 0.7, nbytes / max(1, items))


class ChunkCall(_Call):
    """Runs chunks of items through a pool and reports each finished chunk to a sink.

    The pool may split a chunk (a worker died in it: the items before and after the lost
    one are re-run as records of their own), so parts are put back together here and
    the chunk is reported once all its items have ended."""

    def __init__(self, stage: ChunkSink, pool: Pool, fn: Callable[..., Any]) -> None:
        super().__init__(pool, pool._spec(fn), _worker.MAP, None, False)
        self.stage = stage
        self.parts: dict[int, Done] = {}
        self.left: dict[int, int] = {}

    def task_index(self, position: int) -> int | None:
        return None  # positions here are chunk bookkeeping; errors name the item instead

    def submit(self, seq: int, items: list[Any]) -> int:
        """Send one chunk; return its pickled size."""
        self.parts[seq] = Done(seq, items, [None] * len(items), {}, 0, -1)
        self.left[seq] = len(items)
        records = self._make_records(items, [(0, len(items))], offset=seq << _SEQ_SHIFT)
        self.sup.submit(records)
        data = records[0].data  # pickled here, so a pickling error names the item now
        return len(data) if data is not None else 0

    def complete(self, rec: Record, values: Any, errors: dict[int, BaseException],
                 skip: Any) -> None:
        seq, first = rec.base >> _SEQ_SHIFT, rec.base & ((1 << _SEQ_SHIFT) - 1)
        done = self.parts[seq]
        n = rec.size
        done.values[first:first + n] = values
        for k, exc in errors.items():
            done.errors[first + k] = exc
        done.elapsed_ns += rec.elapsed_ns
        done.worker = rec.worker
        self.left[seq] -= n - len(skip)
        if self.left[seq] == 0:
            del self.left[seq]
            self.stage.finished(self.parts.pop(seq))

    def flush(self) -> None:
        self.stage.wake()

    def abort(self, exc: BaseException) -> None:
        self.stage.aborted(exc)

    def callback_failed(self, exc: BaseException, which: str) -> None:  # no callbacks here
        self.stage.aborted(exc)


def _run_chunk_in_thread(fn: Callable[[Any], Any], items: list[Any], state: Any
                         ) -> tuple[list[Any], dict[int, BaseException], int, int]:
    _worker.set_thread_state(state)
    start = time.perf_counter_ns()
    values: list[Any] = []
    errors: dict[int, BaseException] = {}
    for k, item in enumerate(items):
        try:
            values.append(fn(item))
        except Exception as exc:
            errors[k] = exc
            values.append(None)
    return values, errors, time.perf_counter_ns() - start, threading.get_ident()


class _Stage(ChunkSink):
    """One stage's buffer, workers and bookkeeping, driven by the pipeline's driver."""

    def __init__(self, spec: _StageSpec, index: int, cond: threading.Condition,
                 default_maxsize: int) -> None:
        self.spec = spec
        self.index = index
        self.cond = cond
        self.maxsize = spec.maxsize or default_maxsize
        self.buffer = Fifo()
        self.held = 0  # items handed to workers and not yet moved on
        self.done: deque[Done] = deque()
        self.ready: dict[int, Done] = {}
        self.next_seq = 0
        self.emit_seq = 0
        self.closed_input = False
        self.items_in = 0
        self.items_out = 0
        self.busy: dict[int, int] = {}
        self.abort_error: BaseException | None = None
        self.sizer = ChunkSizer()
        self.pool: Pool | None = None
        self.threads: ThreadPoolExecutor | None = None
        self.call: ChunkCall | None = None
        self.thread_states: dict[int, Any] = {}
        self.local = spec.op in ("batch", "unbatch")
        self.batch_buf: list[Any] = []

    # ---- lifetime
    def start(self, start_method: str | None, cluster: Any = None) -> None:
        if self.local:
            return
        fn = self._worker_fn()
        if self.spec.kind == "process":
            self.pool = Pool(self.spec.workers, initializer=self.spec.initializer,
                             initargs=self.spec.initargs, start_method=start_method,
                             cluster=cluster)
            self.call = ChunkCall(self, self.pool, fn)
        else:
            self.threads = ThreadPoolExecutor(self.spec.workers,
                                              thread_name_prefix=f"conveyor-stage-{self.spec.name}")
            self._thread_fn = fn
            self._thread_state = (self.spec.initializer(*self.spec.initargs)
                                  if self.spec.initializer else None)

    def stop(self, terminate: bool) -> None:
        if self.pool is not None:
            if terminate:
                self.pool.terminate()
            else:
                self.pool.close()
                self.pool.join()
            self.pool = None
        if self.threads is not None:
            self.threads.shutdown(wait=True, cancel_futures=True)
            self.threads = None

    def _worker_fn(self) -> Callable[[Any], Any]:
        fn = self.spec.fn
        assert fn is not None
        op = self.spec.op
        if op == "filter":
            return _Filter(fn)
        if op == "flat_map":
            return _FlatMap(fn)
        if op == "each":
            return _Each(fn)
        return fn

    # ---- called from executor threads (finished/wake/aborted: ChunkSink)
    def _thread_done(self, seq: int, items: list[Any], fut: Future[Any]) -> None:
        try:
            values, errors, elapsed, ident = fut.result()
        except BaseException as exc:  # cancelled at shutdown
            self.aborted(exc)
            return
        worker = self.thread_states.setdefault(ident, len(self.thread_states))
        self.finished(Done(seq, items, values, errors, elapsed, worker))
        self.wake()

    # ---- called by the driver
    @property
    def capacity(self) -> int:
        # On a cluster the stage's pool has the cluster's threads, not spec.workers.
        workers = self.pool.workers if self.pool is not None else self.spec.workers
        return max(2 * workers * self.chunk, 2 * workers)

    def room(self) -> int:
        """How many more items this stage can take now: its buffer's free places, plus
        the free places in flight (items given now go straight on to the workers, so
        the buffer itself still never holds more than ``maxsize``)."""
        return self.maxsize + max(0, self.capacity - self.held) - len(self.buffer)

    def has_room(self) -> bool:
        return self.room() > 0

    def dispatch(self) -> None:
        """Hand buffered items to workers while fewer than ``capacity`` are held."""
        while self.buffer and self.held < self.capacity:
            n = min(self.chunk, len(self.buffer))
            if n < self.chunk and not self.closed_input and self.held:
                break  # wait for a fuller chunk while workers are busy anyway
            items = self.buffer.take(n)
            seq = self.next_seq
            self.next_seq += 1
            self.held += n
            self.items_in += n
            if self.call is not None:
                self.sizer.learn_size(self.call.submit(seq, items), n)
            else:
                assert self.threads is not None
                fut = self.threads.submit(_run_chunk_in_thread, self._thread_fn, items,
                                          self._thread_state)
                fut.add_done_callback(functools.partial(self._thread_done, seq, items))

    @property
    def chunk(self) -> int:
        return self.sizer.chunk

    def learn(self, done: Done) -> None:
        self.sizer.learn(done.elapsed_ns, len(done.items))
        self.busy[done.worker] = self.busy.get(done.worker, 0) + done.elapsed_ns

    @property
    def finished_all(self) -> bool:
        return self.closed_input and not self.buffer and self.held == 0 and not self.done \
            and not self.ready


class Pipeline:
    """A chain of stages, each with its own workers, joined by bounded buffers.

    Example::

        results = (conveyor.Pipeline(open("big.txt"))
                   .map(parse, workers=2)
                   .filter(lambda rec: rec is not None)
                   .batch(64)
                   .map(embed, workers=2)
                   .run(progress=True))

    Iterating yields results as they come; ``run()`` returns them as a list. With
    ``ordered=True`` (the default) results keep the source's order. Each stage runs in
    processes (``kind="process"``, the default, for CPU work) or threads
    (``kind="thread"``, for I/O); ``maxsize`` bounds the buffer in front of a stage
    (beyond it, each stage has two chunks per worker in flight, sized by run time and
    capped at about 1 MiB of pickled items each). With ``cluster=`` (what ``Pool``
    takes) the process stages run on a Dask cluster.

    Ctrl-C stops every stage and raises ``KeyboardInterrupt`` once the workers are gone;
    pressed again while they stop, it does not cut the clean-up short.

    An exception in a stage stops every stage and raises :class:`PipelineError` naming
    the stage and the item, with the original exception (and the worker's traceback) as
    its cause; with ``on_error="skip"`` failed items are recorded in ``errors`` instead.
    After a run, ``stats`` holds per-stage counts, busy times and utilisation.
    """

    def __init__(self, source: Iterable[Any], *, ordered: bool = True, maxsize: int = 1024,
                 start_method: str | None = None, cluster: Any = None) -> None:
        if not hasattr(source, "__iter__"):
            raise TypeError(f"a pipeline's source must be iterable, got {short_repr(source)}")
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self._source = source
        self._ordered = ordered
        self._maxsize = maxsize
        self._start_method = start_method
        self._cluster = cluster
        self._specs: list[_StageSpec] = []
        self._running = False
        self.errors: list[ItemError] = []
        self.stats = PipelineStatistics()

    # ------------------------------------------------------------------- building
    def _add(self, op: str, fn: Callable[..., Any] | None, workers: int, kind: str,
             maxsize: int | None, name: str | None, initializer: Callable[..., Any] | None,
             initargs: Iterable[Any], size: int = 0) -> Pipeline:
        if self._specs and self._specs[-1].op == "each":
            raise ValueError("each() ends a pipeline; no stage can follow it")
        if fn is not None and not callable(fn):
            raise TypeError(f"{op}() needs a callable, got {short_repr(fn)}")
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        if kind not in ("process", "thread"):
            raise ValueError(f'kind must be "process" or "thread", got {kind!r}')
        if maxsize is not None and maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        label = name or (f"{op}({getattr(fn, '__qualname__', type(fn).__name__)})"
                         if fn is not None else f"{op}({size})" if size else op)
        self._specs.append(_StageSpec(op, fn, label, workers, kind, maxsize, initializer,
                                      tuple(initargs), size))
        return self

    def map(self, fn: Callable[[Any], Any], *, workers: int = 1, kind: str = "process",
            maxsize: int | None = None, name: str | None = None,
            initializer: Callable[..., Any] | None = None,
            initargs: Iterable[Any] = ()) -> Pipeline:
        """Each item becomes ``fn(item)``."""
        return self._add("map", fn, workers, kind, maxsize, name, initializer, initargs)

    def filter(self, pred: Callable[[Any], Any], *, workers: int = 1, kind: str = "process",
               maxsize: int | None = None, name: str | None = None,
               initializer: Callable[..., Any] | None = None,
               initargs: Iterable[Any] = ()) -> Pipeline:
        """Keep the items for which ``pred(item)`` is true."""
        return self._add("filter", pred, workers, kind, maxsize, name, initializer, initargs)

    def flat_map(self, fn: Callable[[Any], Iterable[Any]], *, workers: int = 1,
                 kind: str = "process", maxsize: int | None = None, name: str | None = None,
                 initializer: Callable[..., Any] | None = None,
                 initargs: Iterable[Any] = ()) -> Pipeline:
        """Each item becomes the items ``fn(item)`` returns or yields (zero or more)."""
        return self._add("flat_map", fn, workers, kind, maxsize, name, initializer, initargs)

    def each(self, fn: Callable[[Any], Any], *, workers: int = 1, kind: str = "process",
             maxsize: int | None = None, name: str | None = None,
             initializer: Callable[..., Any] | None = None,
             initargs: Iterable[Any] = ()) -> Pipeline:
        """A sink: call ``fn(item)`` for every item; the pipeline then yields nothing."""
        return self._add("each", fn, workers, kind, maxsize, name, initializer, initargs)

    def batch(self, size: int) -> Pipeline:
        """Group items into lists of ``size`` (the last may be shorter)."""
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"batch size must be a positive integer, got {size!r}")
        return self._add("batch", None, 1, "process", None, None, None, (), size)

    def unbatch(self) -> Pipeline:
        """Flatten lists (or any iterables) of items back into items."""
        return self._add("unbatch", None, 1, "process", None, None, None, ())

    # -------------------------------------------------------------------- running
    def run(self, *, progress: bool = False, on_error: str = "raise") -> list[Any]:
        """Run to the end; return the last stage's outputs as a list."""
        return self._prepare(progress, on_error, self._ordered).collect()

    def iter(self, *, ordered: bool | None = None, progress: bool = False,
             on_error: str = "raise") -> Iterator[Any]:
        """Yield results as they come (``ordered`` overrides the pipeline's default)."""
        return self._drive(progress, on_error, self._ordered if ordered is None else ordered)

    def __iter__(self) -> Iterator[Any]:
        return self._drive(False, "raise", self._ordered)

    def _drive(self, progress: bool, on_error: str, ordered: bool) -> Iterator[Any]:
        return self._prepare(progress, on_error, ordered).results()

    def _prepare(self, progress: bool, on_error: str, ordered: bool) -> _Run:
        if on_error not in ("raise", "skip"):
            raise ValueError(f'on_error must be "raise" or "skip", got {on_error!r}')
        if self._running:
            raise RuntimeError("this pipeline is already running")
        return _Run(self, progress, on_error == "skip", ordered)


class _Run:
    """One execution of a pipeline: the driver loop and its cleanup."""

    def __init__(self, pipeline: Pipeline, progress: bool, skip: bool, ordered: bool) -> None:
        self.p = pipeline
        self.skip = skip
        self.ordered = ordered
        self.cond = threading.Condition()
        self.stages = [_Stage(spec, i, self.cond, pipeline._maxsize)
                       for i, spec in enumerate(pipeline._specs)]
        self.source: Iterator[Any] | None = iter(pipeline._source)
        self.out: deque[Any] = deque()
        self.bars: list[Any] = []
        self.progress = progress
        self.started = 0.0
        self.cluster: Any = None  # an open Dask cluster, while process stages run on it
        self.interrupts = Interrupts(hold_in=_Run.results.__code__)

    # ---- the driver loop, as a generator (iter) or to a list (run)
    #
    # Ctrl-C is held back while this code runs and raised by interrupts.check() at the
    # top of each round (see interrupts): the driver's locks, the pools' forks and the
    # finalizers the garbage collector runs here then never see a KeyboardInterrupt.
    # The shield is down only while the source's iterator and the caller's code run.

    def results(self) -> Iterator[Any]:
        stopping: BaseException | None = None
        try:
            self._begin()
            out = self.out
            while self._advance():
                self.interrupts.shielded = False
                while out:
                    yield out.popleft()
                    if self.interrupts.held:
                        break  # raised by _advance(), where stopping is clean
                self.interrupts.shielded = True
        except BaseException as exc:  # GeneratorExit too: the caller stopped early
            stopping = exc
            raise
        finally:
            self._end(stopping)

    def collect(self) -> list[Any]:
        results: list[Any] = []
        stopping: BaseException | None = None
        try:
            self._begin()
            while self._advance():
                results.extend(self.out)
                self.out.clear()
        except BaseException as exc:
            stopping = exc
            raise
        finally:
            self._end(stopping)
        return results

    def _begin(self) -> None:
        self.interrupts.install()
        p = self.p
        p._running = True
        p.errors = []
        self.started = time.monotonic()
        # Process stages run on the cluster (one client for the run); thread stages,
        # batch and unbatch stay here.
        if p._cluster is not None:
            from conveyor._dask._context import open_cluster

            self.cluster = open_cluster(p._cluster)
        client = self.cluster.client if self.cluster is not None else None
        for stage in self.stages:
            stage.start(p._start_method, client)
        if self.progress:
            self._open_bars()

    def _advance(self) -> bool:
        """Move items on until there is output (True) or the run has ended (False)."""
        while True:
            self.interrupts.check()
            self._step()
            if self.out:
                return True
            if self._finished():
                return False
            with self.cond:
                if not any(s.done for s in self.stages) and not self._abort():
                    self.cond.wait(0.05)

    def _end(self, stopping: BaseException | None) -> None:
        """Stop every stage (terminate unless the run ended by itself), shielded."""
        self.interrupts.shielded = True
        try:
            failure: BaseException | None = None
            for stage in self.stages:
                try:
                    stage.stop(terminate=stopping is not None)
                except BaseException as exc:  # stop the others before raising it
                    failure = failure or exc
            if self.cluster is not None:
                try:
                    self.cluster.close()
                except BaseException as exc:
                    failure = failure or exc
                self.cluster = None
            for bar in self.bars:
                bar.close()
            if failure is not None:
                raise failure
        finally:
            self.p._running = False
            self.p.stats = self._statistics()
            self.interrupts.restore(stopping)

    def _abort(self) -> BaseException | None:
        for stage in self.stages:
            if stage.abort_error is not None:
                return stage.abort_error
        return None

    def _finished(self) -> bool:
        return self.source is None and all(s.finished_all for s in self.stages) \
            and not self.out

    # ---- one round of moving items forward
    def _step(self) -> None:
        err = self._abort()
        if err is not None:
            raise PipelineError("pipeline", "-", f"the pipeline stopped: {err}") from err
        self._read_source()
        for i, stage in enumerate(self.stages):
            if stage.local:
                continue
            while stage.done:
                done = stage.done.popleft()
                stage.learn(done)
                stage.ready[done.seq] = done
            self._forward(i)
            stage.dispatch()
            if self.bars:
                self.bars[i].set_postfix_str(f"buffer {len(stage.buffer)}/{stage.maxsize}",
                                             refresh=False)

    def _room_after(self, i: int) -> bool:
        """Whether what follows stage i (local stages pass through) can take more."""
        for stage in self.stages[i + 1:]:
            if not stage.local:
                return stage.has_room()
        return len(self.out) < self.p._maxsize

    def _source_room(self) -> int:
        """How many source items may be read now: the room in the first buffer, or one
        at a time when an ``unbatch`` before it may turn one item into many."""
        for stage in self.stages:
            if not stage.local:
                return stage.room()
            if stage.spec.op == "unbatch":
                return 1 if self._room_after(stage.index) else 0
        return self.p._maxsize - len(self.out)

    def _read_source(self) -> None:
        source = self.source
        if source is None:
            return
        while (room := self._source_room()) > 0:
            self.interrupts.shielded = False  # the source is the user's code
            try:
                items = list(itertools.islice(source, room))
            except Exception as exc:
                self.source = None
                raise PipelineError("source", "-", f"the source raised {type(exc).__name__}: "
                                    f"{exc}") from exc
            finally:
                self.interrupts.shielded = True
            if items:
                self._deliver(-1, items)
            if len(items) < room:
                self.source = None  # exhausted
                self._close_after(-1)
                return

    def _forward(self, i: int) -> None:
        """Move stage i's finished output (in order if ordered) to what comes next."""
        stage = self.stages[i]
        if stage.local:
            return
        while True:
            if not self._room_after(i):
                return
            if self.ordered:
                done = stage.ready.pop(stage.emit_seq, None)
            else:
                done = stage.ready.pop(next(iter(stage.ready)), None) if stage.ready else None
            if done is None:
                break
            stage.emit_seq += 1
            stage.held -= len(done.items)
            outputs = self._outputs(stage, done)
            stage.items_out += len(outputs)
            if self.bars:
                self.bars[i].update(len(outputs))
            self._deliver(i, outputs)
        if stage.closed_input and not stage.buffer and stage.held == 0 and not stage.ready:
            self._close_after(i)

    def _outputs(self, stage: _Stage, done: Done) -> list[Any]:
        """What a finished chunk passes on: whole-list operations, no step per item."""
        items, values = done.items, done.values
        if done.errors:
            for k in sorted(done.errors):
                exc, item = done.errors[k], items[k]
                if not self.skip:
                    raise PipelineError(
                        stage.spec.name, short_repr(item),
                        f"stage {stage.spec.name!r} failed on item {short_repr(item)}: "
                        f"{type(exc).__name__}: {exc}") from exc
                self.p.errors.append(ItemError(stage.spec.name, item, exc))
            kept = [k for k in range(len(items)) if k not in done.errors]
            items = [items[k] for k in kept]
            values = [values[k] for k in kept]
        op = stage.spec.op
        if op == "map":
            return values
        if op == "filter":
            return list(itertools.compress(items, values))
        if op == "flat_map":
            return list(itertools.chain.from_iterable(values))
        return []  # each: a sink

    def _deliver(self, i: int, items: list[Any]) -> None:
        """Give items to stage i+1, running local (batch/unbatch) stages in line."""
        j = i + 1
        while j < len(self.stages) and self.stages[j].local:
            stage = self.stages[j]
            stage.items_in += len(items)
            items = self._regroup(stage, items, final=False)
            stage.items_out += len(items)
            if self.bars and items:
                self.bars[j].update(len(items))
            j += 1
        if j == len(self.stages):
            self.out.extend(items)
        else:
            self.stages[j].buffer.extend(items)

    def _regroup(self, stage: _Stage, items: list[Any], final: bool) -> list[Any]:
        if stage.spec.op == "unbatch":
            flat: list[Any] = []
            for group in items:
                flat.extend(group)
            return flat
        stage.batch_buf.extend(items)
        size = stage.spec.size
        groups = []
        while len(stage.batch_buf) >= size:
            groups.append(stage.batch_buf[:size])
            del stage.batch_buf[:size]
        if final and stage.batch_buf:
            groups.append(stage.batch_buf)
            stage.batch_buf = []
        return groups

    def _close_after(self, i: int) -> None:
        """Everything up to stage i has ended: close the next stage's input."""
        j = i + 1
        while j < len(self.stages):
            stage = self.stages[j]
            if stage.closed_input:
                return
            if not stage.local:
                stage.closed_input = True
                stage.dispatch()
                return
            stage.closed_input = True
            tail = self._regroup(stage, [], final=True)
            stage.items_out += len(tail)
            self._deliver(j, tail)  # as if this local stage had just produced it
            j += 1

    # ---- reporting
    def _open_bars(self) -> None:
        from conveyor._pool.progress import make_bar  # plain lines when not on a terminal

        for i, stage in enumerate(self.stages):
            self.bars.append(make_bar(desc=stage.spec.name[:24], position=i, unit="item",
                                      leave=True, dynamic_ncols=True))

    def _statistics(self) -> PipelineStatistics:
        wall = time.monotonic() - self.started
        stages = []
        for s in self.stages:
            busy = tuple(ns / 1e9 for _, ns in sorted(s.busy.items()))
            stages.append(StageStatistics(s.spec.name, s.spec.workers, s.items_in, s.items_out,
                                          busy, wall))
        return PipelineStatistics(tuple(stages), wall)

