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
  by the buffers whatever the source's length, and a slow stage slows everything before
  it instead of filling memory.
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
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from conveyor._pool import worker as _worker
from conveyor._pool.pool import Pool, _Call
from conveyor._pool.supervisor import Record
from conveyor.errors import PipelineError, short_repr

_TARGET_CHUNK_NS = 2_000_000  # aim for chunks of about 2 ms of work
_MAX_CHUNK = 1024


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


class _Filter:
    """Runs a predicate; the driver keeps the items it accepted (they are not sent back)."""

    def __init__(self, pred: Callable[[Any], Any]) -> None:
        self.pred = pred

    def __call__(self, item: Any) -> bool:
        return bool(self.pred(item))


class _FlatMap:
    def __init__(self, fn: Callable[[Any], Iterable[Any]]) -> None:
        self.fn = fn

    def __call__(self, item: Any) -> list[Any]:
        return list(self.fn(item))


class _Each:
    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

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
class _Done:
    seq: int
    items: list[Any]
    values: list[Any]
    errors: dict[int, BaseException]
    elapsed_ns: int
    worker: int


_SEQ_SHIFT = 20  # a record's base is (chunk seq << 20) + its first item's place in the chunk


class _ChunkCall(_Call):
    """Receives a process stage's finished chunks from the stage pool's supervisor.

    The pool may split a chunk (a worker died in it: the items before and after the lost
    one are re-run as records of their own), so parts are put back together here and
    the chunk is reported once all its items have ended."""

    def __init__(self, stage: _Stage, pool: Pool, fn: Callable[..., Any]) -> None:
        super().__init__(pool, pool._spec(fn), _worker.MAP, None, False)
        self.stage = stage
        self.parts: dict[int, _Done] = {}
        self.left: dict[int, int] = {}

    def task_index(self, position: int) -> int | None:
        return None  # positions here are chunk bookkeeping; errors name the item instead

    def submit(self, seq: int, items: list[Any]) -> None:
        self.parts[seq] = _Done(seq, items, [None] * len(items), {}, 0, -1)
        self.left[seq] = len(items)
        self.sup.submit(self._make_records(items, [(0, len(items))], offset=seq << _SEQ_SHIFT))

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


class _Stage:
    """One stage's buffer, workers and bookkeeping, driven by the pipeline's driver."""

    def __init__(self, spec: _StageSpec, index: int, cond: threading.Condition,
                 default_maxsize: int) -> None:
        self.spec = spec
        self.index = index
        self.cond = cond
        self.maxsize = spec.maxsize or default_maxsize
        self.buffer: deque[Any] = deque()
        self.held = 0  # items handed to workers and not yet moved on
        self.done: deque[_Done] = deque()
        self.ready: dict[int, _Done] = {}
        self.next_seq = 0
        self.emit_seq = 0
        self.closed_input = False
        self.items_in = 0
        self.items_out = 0
        self.busy: dict[int, int] = {}
        self.abort_error: BaseException | None = None
        self.chunk = 1
        self._per_item_ns = 0.0
        self.pool: Pool | None = None
        self.threads: ThreadPoolExecutor | None = None
        self.call: _ChunkCall | None = None
        self.thread_states: dict[int, Any] = {}
        self.local = spec.op in ("batch", "unbatch")
        self.batch_buf: list[Any] = []

    # ---- lifetime
    def start(self, start_method: str | None) -> None:
        if self.local:
            return
        fn = self._worker_fn()
        if self.spec.kind == "process":
            self.pool = Pool(self.spec.workers, initializer=self.spec.initializer,
                             initargs=self.spec.initargs, start_method=start_method)
            self.call = _ChunkCall(self, self.pool, fn)
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

    # ---- called from supervisor / executor threads
    def finished(self, done: _Done) -> None:
        self.done.append(done)

    def wake(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def aborted(self, exc: BaseException) -> None:
        self.abort_error = exc
        self.wake()

    def _thread_done(self, seq: int, items: list[Any], fut: Future[Any]) -> None:
        try:
            values, errors, elapsed, ident = fut.result()
        except BaseException as exc:  # cancelled at shutdown
            self.aborted(exc)
            return
        worker = self.thread_states.setdefault(ident, len(self.thread_states))
        self.finished(_Done(seq, items, values, errors, elapsed, worker))
        self.wake()

    # ---- called by the driver
    @property
    def capacity(self) -> int:
        return max(2 * self.spec.workers * self.chunk, 2 * self.spec.workers)

    def has_room(self) -> bool:
        return len(self.buffer) < self.maxsize

    def dispatch(self) -> None:
        """Hand buffered items to workers while fewer than ``capacity`` are held."""
        while self.buffer and self.held < self.capacity:
            n = min(self.chunk, len(self.buffer))
            if n < self.chunk and not self.closed_input and self.held:
                break  # wait for a fuller chunk while workers are busy anyway
            items = [self.buffer.popleft() for _ in range(n)]
            seq = self.next_seq
            self.next_seq += 1
            self.held += n
            self.items_in += n
            if self.call is not None:
                self.call.submit(seq, items)
            else:
                assert self.threads is not None
                fut = self.threads.submit(_run_chunk_in_thread, self._thread_fn, items,
                                          self._thread_state)
                fut.add_done_callback(functools.partial(self._thread_done, seq, items))

    def learn(self, done: _Done) -> None:
        n = max(1, len(done.items))
        per_item = done.elapsed_ns / n
        self._per_item_ns = per_item if not self._per_item_ns else (
            0.7 * self._per_item_ns + 0.3 * per_item)
        want = int(_TARGET_CHUNK_NS / max(self._per_item_ns, 1.0))
        self.chunk = max(1, min(_MAX_CHUNK, want))
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
    (``kind="thread"``, for I/O); ``maxsize`` bounds the buffer in front of a stage.

    An exception in a stage stops every stage and raises :class:`PipelineError` naming
    the stage and the item, with the original exception (and the worker's traceback) as
    its cause; with ``on_error="skip"`` failed items are recorded in ``errors`` instead.
    After a run, ``stats`` holds per-stage counts, busy times and utilisation.
    """

    def __init__(self, source: Iterable[Any], *, ordered: bool = True, maxsize: int = 1024,
                 start_method: str | None = None) -> None:
        if not hasattr(source, "__iter__"):
            raise TypeError(f"a pipeline's source must be iterable, got {short_repr(source)}")
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self._source = source
        self._ordered = ordered
        self._maxsize = maxsize
        self._start_method = start_method
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
        return list(self._drive(progress, on_error, self._ordered))

    def iter(self, *, ordered: bool | None = None, progress: bool = False,
             on_error: str = "raise") -> Iterator[Any]:
        """Yield results as they come (``ordered`` overrides the pipeline's default)."""
        return self._drive(progress, on_error, self._ordered if ordered is None else ordered)

    def __iter__(self) -> Iterator[Any]:
        return self._drive(False, "raise", self._ordered)

    def _drive(self, progress: bool, on_error: str, ordered: bool) -> Iterator[Any]:
        if on_error not in ("raise", "skip"):
            raise ValueError(f'on_error must be "raise" or "skip", got {on_error!r}')
        if self._running:
            raise RuntimeError("this pipeline is already running")
        return _Run(self, progress, on_error == "skip", ordered).results()


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

    def results(self) -> Iterator[Any]:
        p = self.p
        p._running = True
        p.errors = []
        self.started = time.monotonic()
        clean = False
        try:
            for stage in self.stages:
                stage.start(p._start_method)
            if self.progress:
                self._open_bars()
            while True:
                self._step()
                while self.out:
                    yield self.out.popleft()
                if self._finished():
                    break
                with self.cond:
                    if not any(s.done for s in self.stages) and not self._abort():
                        self.cond.wait(0.05)
            clean = True
        finally:
            for stage in self.stages:
                stage.stop(terminate=not clean)
            for bar in self.bars:
                bar.close()
            p._running = False
            p.stats = self._statistics()

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

    def _read_source(self) -> None:
        if self.source is None:
            return
        while self._room_after(-1):
            try:
                item = next(self.source)
            except StopIteration:
                self.source = None
                break
            except Exception as exc:
                self.source = None
                raise PipelineError("source", "-", f"the source raised {type(exc).__name__}: "
                                    f"{exc}") from exc
            self._deliver(-1, [item])
        if self.source is None:
            self._close_after(-1)

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

    def _outputs(self, stage: _Stage, done: _Done) -> list[Any]:
        op = stage.spec.op
        out: list[Any] = []
        for k, item in enumerate(done.items):
            exc = done.errors.get(k)
            if exc is not None:
                if not self.skip:
                    raise PipelineError(
                        stage.spec.name, short_repr(item),
                        f"stage {stage.spec.name!r} failed on item {short_repr(item)}: "
                        f"{type(exc).__name__}: {exc}") from exc
                self.p.errors.append(ItemError(stage.spec.name, item, exc))
                continue
            value = done.values[k]
            if op == "map":
                out.append(value)
            elif op == "filter":
                if value:
                    out.append(item)
            elif op == "flat_map":
                out.extend(value)
        return out

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
        from tqdm.auto import tqdm

        for i, stage in enumerate(self.stages):
            self.bars.append(tqdm(desc=stage.spec.name[:24], position=i, unit="item",
                                  leave=True, dynamic_ncols=True))

    def _statistics(self) -> PipelineStatistics:
        wall = time.monotonic() - self.started
        stages = []
        for s in self.stages:
            busy = tuple(ns / 1e9 for _, ns in sorted(s.busy.items()))
            stages.append(StageStatistics(s.spec.name, s.spec.workers, s.items_in, s.items_out,
                                          busy, wall))
        return PipelineStatistics(tuple(stages), wall)

