"""Producer–consumer with a bounded buffer, on a conveyor Channel: 2 producers, 3 consumers.

The textbook version guards a shared counter with two conditions, ``not_full`` and ``not_empty``,
and runs until it is killed after 20 s. Here the buffer carries real items, the
channel does the waiting (a full channel blocks ``put``, an empty one blocks ``get``),
and the run ends by itself: each producer closes its end when it is done, and once
both have closed and the buffer is drained every consumer's ``for`` loop stops. No
sentinels, and nobody needs to know how many consumers there are.

Run: ``python examples/producer_consumer.py``
"""

from __future__ import annotations

import multiprocessing as mp
import random
import time

import conveyor as cv

MAXSIZE = 10
ITEMS_PER_PRODUCER = 200


class Producer(mp.Process):
    def __init__(self, channel: cv.Channel[tuple[str, int]], results: mp.SimpleQueue) -> None:  # type: ignore[type-arg]
        super().__init__(daemon=True)  # workers die with the parent
        self.channel = channel
        self.results = results

    def run(self) -> None:
        with self.channel:  # closes our end when done, even on error
            for i in range(ITEMS_PER_PRODUCER):
                self.channel.put((self.name, i))  # blocks while 10 items wait
                if random.random() < 0.05:
                    time.sleep(0.001)  # producers at uneven speeds
        self.results.put(("produced", self.name, ITEMS_PER_PRODUCER))


class Consumer(mp.Process):
    def __init__(self, channel: cv.Channel[tuple[str, int]], results: mp.SimpleQueue) -> None:  # type: ignore[type-arg]
        super().__init__(daemon=True)
        self.channel = channel
        self.results = results

    def run(self) -> None:
        count = 0
        last: dict[str, int] = {}
        for producer, i in self.channel:  # ends at end of stream
            assert i > last.get(producer, -1), "items of one producer arrive in order"
            last[producer] = i
            count += 1
        self.results.put(("consumed", self.name, count))


def main() -> None:
    channel: cv.Channel[tuple[str, int]] = cv.Channel(maxsize=MAXSIZE, senders=2)
    results: mp.SimpleQueue = mp.SimpleQueue()  # type: ignore[type-arg]
    workers = [Producer(channel, results) for _ in range(2)]
    workers += [Consumer(channel, results) for _ in range(3)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    reports = [results.get() for _ in workers]
    channel.unlink()

    produced = sum(n for kind, _, n in reports if kind == "produced")
    consumed = sum(n for kind, _, n in reports if kind == "consumed")
    for kind, name, n in sorted(reports):
        print(f"{name:>12} {kind} {n} items")
    print(f"produced {produced}, consumed {consumed}, maxsize {MAXSIZE}, {elapsed:.2f} s")
    if produced != consumed:
        raise SystemExit("items were lost")
    print("every consumer stopped by itself at end of stream")


if __name__ == "__main__":
    main()
