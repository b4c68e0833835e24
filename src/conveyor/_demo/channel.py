"""``conveyor demo``: producer-consumer with a bounded buffer, live, on a :class:`Channel`.

Two producers and three consumers share a channel of ``maxsize=10``;
two progress bars show items produced and consumed, and the run ends by itself when
both producers have closed and the channel is drained. Takes a few seconds.

Example::

    from conveyor._demo.channel import run
    run()
"""

from __future__ import annotations

import multiprocessing as mp
import time
from typing import Any

from conveyor._channel.channel import Channel
from conveyor._pool.progress import make_bar

PRODUCERS, CONSUMERS, MAXSIZE = 2, 3, 10
PER_PRODUCER = 150_000
REPORT_EVERY = 2_000  # counters are shared memory: touch them rarely, not per item


def _produce(channel: Channel[int], counts: Any, slot: int) -> None:
    with channel:
        for i in range(PER_PRODUCER):
            channel.put(i)
            if i % REPORT_EVERY == 0:
                counts[slot] = i
    counts[slot] = PER_PRODUCER


def _consume(channel: Channel[int], counts: Any, slot: int) -> None:
    n = 0
    for _ in channel:
        n += 1
        if n % REPORT_EVERY == 0:
            counts[slot] = n
    counts[slot] = n


def run() -> None:
    """Show 2 producers and 3 consumers moving items through ``Channel(maxsize=10)``."""
    ctx = mp.get_context()
    total = PRODUCERS * PER_PRODUCER
    channel: Channel[int] = Channel(maxsize=MAXSIZE, senders=PRODUCERS)
    counts = ctx.Array("q", PRODUCERS + CONSUMERS, lock=False)
    procs = [ctx.Process(target=_produce, args=(channel, counts, k)) for k in range(PRODUCERS)]
    procs += [
        ctx.Process(target=_consume, args=(channel, counts, PRODUCERS + k)) for k in range(CONSUMERS)
    ]
    print(f"A bounded buffer as a Channel: {PRODUCERS} producers, {CONSUMERS} consumers, "
          f"maxsize {MAXSIZE}")
    for p in procs:  # before tqdm starts its monitor thread: forking threads is unsafe
        p.start()
    start = time.perf_counter()
    # We refresh every 0.1 s ourselves: no tqdm monitor thread.
    produced = make_bar(total=total, desc="produced", unit=" items", position=0, monitor=False)
    consumed = make_bar(total=total, desc="consumed", unit=" items", position=1, monitor=False)
    try:
        while any(p.is_alive() for p in procs):
            produced.update(sum(counts[:PRODUCERS]) - produced.n)
            consumed.update(sum(counts[PRODUCERS:]) - consumed.n)
            time.sleep(0.1)
        elapsed = time.perf_counter() - start
        produced.update(sum(counts[:PRODUCERS]) - produced.n)
        consumed.update(sum(counts[PRODUCERS:]) - consumed.n)
    finally:
        produced.close()
        consumed.close()
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join()
        channel.unlink()
    done = sum(counts[PRODUCERS:])
    print(
        f"{done:,} items moved in {elapsed:.2f} s: {done / elapsed:,.0f} items/s; every consumer "
        "stopped by itself at end of stream (no sentinels)"
    )


if __name__ == "__main__":
    run()
