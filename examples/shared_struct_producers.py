"""A custom struct shared by producers and consumers ("custom structs are troublesome").

With ``multiprocessing`` a struct means ``ctypes.Structure`` subclasses, ``Value(MyStruct)``
and manual locking. Here it is a class with annotations. ``Buffer`` is the classic bounded
buffer of 10 slots, with its bookkeeping and statistics in one shared struct; ``with
buf.lock:`` makes each put and take atomic across processes.

Run: python examples/shared_struct_producers.py
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Annotated

import conveyor

SIZE = 10


@conveyor.shared_struct
class Buffer:
    items: Annotated[list[int], SIZE]
    head: int                       # next slot to take
    count: int                      # items in the buffer
    produced: int
    consumed: int
    total: int                      # sum of everything consumed
    last_producer: Annotated[str, 16] = "nobody"


def produce(buf: Buffer, name: str, values: range) -> None:
    for v in values:
        while True:
            with buf.lock:
                if buf.count < SIZE:                    # room: put it in
                    buf.items[(buf.head + buf.count) % SIZE] = v
                    buf.count += 1
                    buf.produced += 1
                    buf.last_producer = name
                    break
            time.sleep(0.0005)                          # full: let the consumers work


def consume(buf: Buffer, expected: int) -> None:
    while True:
        with buf.lock:
            if buf.count:
                v = buf.items[buf.head]
                buf.head = (buf.head + 1) % SIZE
                buf.count -= 1
                buf.consumed += 1
                buf.total += v
            elif buf.consumed >= expected:
                return                                  # everything was consumed
            else:
                v = None
        if v is None:
            time.sleep(0.0005)


def main() -> None:
    n_per_producer = 500
    with Buffer() as buf:
        expected = 2 * n_per_producer
        procs = [
            multiprocessing.Process(target=produce, args=(buf, "producer-a", range(0, 500))),
            multiprocessing.Process(target=produce, args=(buf, "producer-b", range(500, 1000))),
        ] + [multiprocessing.Process(target=consume, args=(buf, expected)) for _ in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        print(buf)
        print(f"produced {buf.produced}, consumed {buf.consumed}, total {buf.total}")
        assert buf.total == sum(range(1000)) and buf.count == 0


if __name__ == "__main__":
    main()
