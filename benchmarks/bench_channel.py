"""Channel against the standard queues and faster-fifo, all in one run on one machine.

Run: ``python benchmarks/bench_channel.py`` (about 3-4 minutes). Prints a markdown table
and writes it to ``benchmarks/results/channel.md``.

What is measured:

* items/s, 1 producer -> 1 consumer and 2 -> 2, with distinct ints and distinct
  100-byte ``bytes``, one item per call and in batches of 100 (``put_many``/``get_many``
  where the transport has them, each item still its own message; else one message
  holding a list of 100, shown for Channel too). Timed from the start signal until the
  last consumer has its last item. Processes start with fork, before the clock starts.
* the classic bounded-buffer case: 2 producers, 3 consumers, ``maxsize=10``, one int at a time; the
  hand-written buffer (a ``Value`` counter guarded by two conditions) moves no items,
  only a count, and is shown for reference.
* moving one numpy array of 100 MB and of 1 GB from one process to another: from just
  before ``put`` in the sender to just after ``get`` returns in the receiver, and to the
  end of ``arr.sum()`` there (the receiver reading every byte once).

Queue-like transports end with one ``None`` per consumer; a ``Pipe`` has one reader and
one writer, so it runs only 1 -> 1 (with manual pickling: ``send_bytes(pickle.dumps(x))``).
"""

from __future__ import annotations

import importlib.metadata
import multiprocessing as mp
import os
import pickle
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import conveyor as cv

try:
    import faster_fifo
except ImportError:  # pragma: no cover - optional peer
    faster_fifo = None

ctx = mp.get_context("fork")
BATCH = 100
RESULTS = Path(__file__).parent / "results" / "channel.md"


# -- transports: each is (make(producers, maxsize), produce(q, items, batched), consume(q, batched), end(q, consumers))


def ch_make(producers: int, maxsize: int) -> Any:
    return cv.Channel(maxsize=maxsize, senders=producers)


def ch_produce(q: Any, items: list[Any], batched: bool) -> None:
    with q:
        if batched:
            for i in range(0, len(items), BATCH):
                q.put_many(items[i : i + BATCH])
        else:
            for x in items:
                q.put(x)


def ch_consume(q: Any, batched: bool) -> int:
    n = 0
    if batched:
        try:
            while True:
                n += len(q.get_many(BATCH))
        except cv.ChannelClosed:
            return n
    for _ in q:
        n += 1
    return n


def chl_produce(q: Any, items: list[Any], batched: bool) -> None:
    with q:
        for i in range(0, len(items), BATCH):
            q.put(items[i : i + BATCH])


def chl_consume(q: Any, batched: bool) -> int:
    return sum(len(batch) for batch in q)


def q_produce(q: Any, items: list[Any], batched: bool) -> None:
    if batched:
        for i in range(0, len(items), BATCH):
            q.put(items[i : i + BATCH])
    else:
        for x in items:
            q.put(x)


def q_consume(q: Any, batched: bool, task_done: bool = False) -> int:
    n = 0
    while True:
        x = q.get()
        if task_done:
            q.task_done()
        if x is None:
            return n
        n += len(x) if batched else 1


def q_end(q: Any, consumers: int) -> None:
    for _ in range(consumers):
        q.put(None)


def ff_make(producers: int, maxsize: int) -> Any:
    return faster_fifo.Queue(max_size_bytes=8 * 2**20, maxsize=maxsize or 10**9)


def ff_produce(q: Any, items: list[Any], batched: bool) -> None:
    if batched:
        for i in range(0, len(items), BATCH):
            q.put_many(items[i : i + BATCH], timeout=100)
    else:
        for x in items:
            q.put(x, timeout=100)


def ff_consume(q: Any, batched: bool) -> int:
    n = 0
    while True:
        got = q.get_many(max_messages_to_get=BATCH, timeout=100) if batched else [q.get(timeout=100)]
        ends = sum(1 for x in got if x is None)
        n += len(got) - ends
        if ends:
            for _ in range(ends - 1):  # took another consumer's end marker: give it back
                q.put(None)
            return n


class PipeEnds:
    def __init__(self) -> None:
        self.r, self.w = ctx.Pipe(duplex=False)


def pipe_produce(q: Any, items: list[Any], batched: bool) -> None:
    if batched:
        for i in range(0, len(items), BATCH):
            q.w.send_bytes(pickle.dumps(items[i : i + BATCH], 5))
    else:
        for x in items:
            q.w.send_bytes(pickle.dumps(x, 5))


def pipe_consume(q: Any, batched: bool) -> int:
    n = 0
    while True:
        x = pickle.loads(q.r.recv_bytes())
        if x is None:
            return n
        n += len(x) if batched else 1


def pipe_end(q: Any, consumers: int) -> None:
    q.w.send_bytes(pickle.dumps(None))


_manager: Any = None


def manager_queue(producers: int, maxsize: int) -> Any:
    return _manager.Queue(maxsize)


TRANSPORTS: dict[str, tuple[Callable[..., Any], ...]] = {
    "conveyor.Channel": (ch_make, ch_produce, ch_consume, lambda q, c: None),
    "conveyor.Channel, a list per put": (ch_make, chl_produce, chl_consume, lambda q, c: None),
    "mp.Queue": (lambda p, m: ctx.Queue(m), q_produce, q_consume, q_end),
    "mp.SimpleQueue": (lambda p, m: ctx.SimpleQueue(), q_produce, q_consume, q_end),
    "mp.JoinableQueue": (
        lambda p, m: ctx.JoinableQueue(m),
        q_produce,
        lambda q, b: q_consume(q, b, task_done=True),
        q_end,
    ),
    "mp.Pipe": (lambda p, m: PipeEnds(), pipe_produce, pipe_consume, pipe_end),
    "Manager().Queue()": (manager_queue, q_produce, q_consume, q_end),
}
if faster_fifo is not None:
    TRANSPORTS["faster-fifo"] = (ff_make, ff_produce, ff_consume, q_end)


def _consumer(consume: Callable[..., int], q: Any, batched: bool, out: Any) -> None:
    out.put(consume(q, batched))


def make_items(kind: str, k: int, n: int) -> list[Any]:
    # Distinct objects: pickle would send repeats of one object as a back-reference.
    if kind == "int":
        return list(range(k * n, (k + 1) * n))
    return [i.to_bytes(4, "little") * 25 for i in range(k * n, (k + 1) * n)]


def _producer(produce: Callable[..., None], q: Any, spec: tuple[str, int, int], batched: bool, go: Any) -> None:
    items = make_items(*spec)
    go.wait()
    produce(q, items, batched)


def throughput(name: str, producers: int, consumers: int, kind: str, n: int, batched: bool, maxsize: int = 0) -> float:
    make, produce, consume, end = TRANSPORTS[name]
    q = make(producers, maxsize)
    go, out = ctx.Event(), ctx.SimpleQueue()
    per = n // producers
    ps = [ctx.Process(target=_producer, args=(produce, q, (kind, k, per), batched, go)) for k in range(producers)]
    cs = [ctx.Process(target=_consumer, args=(consume, q, batched, out)) for _ in range(consumers)]
    for p in ps + cs:
        p.start()
    time.sleep(0.05)
    t0 = time.perf_counter()
    go.set()
    for p in ps:
        p.join()
    end(q, consumers)
    got = sum(out.get() for _ in cs)
    elapsed = time.perf_counter() - t0
    for p in cs:
        p.join()
    if got != per * producers:
        raise AssertionError(f"{name}: {got} items arrived, {per * producers} sent")
    if isinstance(q, cv.Channel):
        q.unlink()
    return got / elapsed


def condition_buffer(n: int) -> float:
    """The textbook bounded buffer: a counter, two conditions, MAXSIZE 10."""
    count, lock = ctx.Value("i", 0, lock=False), ctx.Lock()
    not_full, not_empty = ctx.Condition(lock), ctx.Condition(lock)
    moved = ctx.Value("q", 0, lock=False)
    go = ctx.Event()

    def produce(k: int) -> None:
        go.wait()
        for _ in range(k):
            with not_full:
                while count.value >= 10:
                    not_full.wait()
                count.value += 1
                not_empty.notify_all()

    def consume() -> None:
        while True:
            with not_empty:
                while count.value <= 0 and moved.value < n:
                    not_empty.wait(0.05)
                if moved.value >= n:
                    return
                count.value -= 1
                moved.value += 1
                not_full.notify_all()

    ps = [ctx.Process(target=produce, args=(n // 2,)) for _ in range(2)]
    cs = [ctx.Process(target=consume) for _ in range(3)]
    for p in ps + cs:
        p.start()
    time.sleep(0.05)
    t0 = time.perf_counter()
    go.set()
    for p in ps + cs:
        p.join()
    return n / (time.perf_counter() - t0)


# -- large arrays


def _send_array(name: str, q: Any, nbytes: int, go: Any, t0: Any) -> None:
    arr = np.ones(nbytes // 8)
    go.wait()
    t0.value = time.monotonic()
    if name == "mp.Pipe":
        q.w.send(arr)
    elif name == "conveyor.Channel":
        with q:
            q.put(arr)
    else:
        q.put(arr)


def _recv_array(name: str, q: Any, out: Any) -> None:
    arr = q.r.recv() if name == "mp.Pipe" else q.get(timeout=600) if name == "faster-fifo" else q.get()
    t1 = time.monotonic()
    total = float(arr.sum())
    t2 = time.monotonic()
    out.put((t1, t2, total))


def move_array(name: str, nbytes: int) -> tuple[float, float]:
    if name == "faster-fifo":
        q: Any = faster_fifo.Queue(max_size_bytes=nbytes + 2**20)
    else:
        q = TRANSPORTS[name][0](1, 0)
    go, out, t0 = ctx.Event(), ctx.SimpleQueue(), ctx.Value("d", 0.0)
    s = ctx.Process(target=_send_array, args=(name, q, nbytes, go, t0))
    r = ctx.Process(target=_recv_array, args=(name, q, out))
    s.start()
    r.start()
    time.sleep(0.3 + nbytes / 2e9)  # let the sender build its array first
    go.set()
    t1, t2, total = out.get()
    s.join()
    r.join()
    if total != nbytes // 8:
        raise AssertionError(f"{name}: wrong array sum {total}")
    if isinstance(q, cv.Channel):
        q.unlink()
    return t1 - t0.value, t2 - t0.value


def fmt_rate(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,.0f}"


def main() -> None:
    global _manager
    load_start = os.getloadavg()
    _manager = ctx.Manager()
    lines = [
        f"Machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, numpy {np.__version__}"
        + (f", faster-fifo {importlib.metadata.version('faster-fifo')}" if faster_fifo else ""),
        "",
        "### Items per second (median of 3 runs)",
        "",
        "| transport | 1→1 int | 1→1 100 B | 1→1 int, batches | 1→1 100 B, batches "
        "| 2→2 int | 2→2 100 B | 2→2 int, batches | 2→2 100 B, batches |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    cases = [(p, kind, b) for p in (1, 2) for b in (False, True) for kind in ("int", "bytes")]
    for name in TRANSPORTS:
        slow = name == "Manager().Queue()"
        cells = []
        for p, item, batched in cases:
            if (name == "mp.Pipe" and p == 2) or (name.endswith("per put") and not batched):
                cells.append(None)
                continue
            n = (10_000 if slow else 200_000) * (3 if batched else 1)
            cells.append(statistics.median(throughput(name, p, p, item, n, batched) for _ in range(3)))
        row = f"| {name} | " + " | ".join(fmt_rate(c) for c in cells) + " |"
        print(row, flush=True)
        lines.append(row)

    lines += ["", "### A bounded buffer: 2 producers, 3 consumers, maxsize=10, one int at a time", ""]
    lines += ["| transport | items/s |", "|---|---:|"]
    buffer_rows = [
        ("conveyor.Channel(maxsize=10)", lambda: throughput("conveyor.Channel", 2, 3, "int", 200_000, False, 10)),
        ("mp.Queue(maxsize=10)", lambda: throughput("mp.Queue", 2, 3, "int", 100_000, False, 10)),
        ("mp.JoinableQueue(maxsize=10)", lambda: throughput("mp.JoinableQueue", 2, 3, "int", 100_000, False, 10)),
        ("Condition-guarded counter buffer (moves a count, no items)", lambda: condition_buffer(100_000)),
    ]
    if faster_fifo is not None:
        buffer_rows.insert(3, ("faster-fifo(maxsize=10)", lambda: throughput("faster-fifo", 2, 3, "int", 100_000, False, 10)))
    for label, run in buffer_rows:
        row = f"| {label} | {fmt_rate(statistics.median(run() for _ in range(3)))} |"
        print(row, flush=True)
        lines.append(row)

    lines += ["", "### Moving one numpy array between two processes (seconds)", ""]
    lines += [
        "| transport | 100 MB: get returned | 100 MB: + sum() | 1 GB: get returned | 1 GB: + sum() |",
        "|---|---:|---:|---:|---:|",
    ]
    big = ["conveyor.Channel", "mp.Queue", "mp.Pipe", "mp.SimpleQueue"] + (["faster-fifo"] if faster_fifo else [])
    for name in big:
        small = [move_array(name, 100 * 2**20) for _ in range(3)]
        a = statistics.median(x[0] for x in small)
        b = statistics.median(x[1] for x in small)
        if name == "faster-fifo":
            c = d = None  # its one buffer would need a 1 GB allocation per queue
        else:
            c, d = move_array(name, 2**30)
        cell = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
        row = f"| {name} | {cell(a)} | {cell(b)} | {cell(c)} | {cell(d)} |"
        print(row, flush=True)
        lines.append(row)
    _manager.shutdown()

    load_end = os.getloadavg()
    lines[1:1] = [
        f"Load average (1, 5, 15 min) at start {load_start[0]:.2f}, {load_start[1]:.2f}, "
        f"{load_start[2]:.2f}; at end {load_end[0]:.2f}, {load_end[1]:.2f}, {load_end[2]:.2f} "
        "(other work on the machine shows up here).",
    ]
    text = "\n".join(lines) + "\n"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    print()
    print(text)


if __name__ == "__main__":
    main()
