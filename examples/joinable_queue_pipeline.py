"""A JoinableQueue, and the question it leaves open.

The usual consumers loop ``while True: item = q.get(); ...; q.task_done()`` and the
producer calls ``q.join()``. When may a consumer's loop end? Two classic answers are
wrong, shown first; then the pipeline, which needs no answer at all.

Run: python examples/joinable_queue_pipeline.py
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import time

import conveyor as cv


def slow_producer(n: int):  # type: ignore[no-untyped-def]
    for i in range(n):
        time.sleep(0.02 if i % 5 else 0.15)  # bursts and pauses, like a real source
        yield i


# -- wrong 1: "stop when the queue is empty" quits during the producer's first pause.
def consumer_until_empty(q: mp.JoinableQueue, out: mp.Queue) -> None:  # type: ignore[type-arg]
    taken = 0
    while True:
        try:
            q.get(timeout=0.05)
        except queue.Empty:
            break  # the producer was merely slow
        taken += 1
        q.task_done()
    out.put(taken)


def wrong_stop_when_empty() -> int:
    q: mp.JoinableQueue = mp.JoinableQueue()  # type: ignore[type-arg]
    out: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    consumers = [mp.Process(target=consumer_until_empty, args=(q, out)) for _ in range(2)]
    for c in consumers:
        c.start()
    for item in slow_producer(30):
        q.put(item)
    taken = sum(out.get() for _ in consumers)
    for c in consumers:
        c.join()
    while not q.empty():  # what nobody consumed
        q.get()
        q.task_done()
    return taken


# -- wrong 2 would be sentinels: one per consumer, so the producer must know how many
# consumers exist, and a consumer that dies leaves the count wrong. Not shown running.


def square(x: int) -> int:
    return x * x


def main() -> None:
    taken = wrong_stop_when_empty()
    print(f"wrong (stop when empty): consumers took {taken} of 30 items, then quit early")

    # right: a pipeline ends when its source ends and every stage has drained.
    results = cv.Pipeline(slow_producer(30)).map(square, workers=3).run()
    print(f"pipeline: {len(results)} of 30 items, in order: {results[:5]} ... {results[-2:]}")
    assert results == [x * x for x in range(30)]


if __name__ == "__main__":
    main()
