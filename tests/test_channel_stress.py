"""Property: any number of producers and consumers, any item sizes, any maxsize —
every item arrives exactly once, each producer's items in order, and everything ends."""

from __future__ import annotations

import multiprocessing as mp
import zlib
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor import Channel
from conveyor._channel.oob import THRESHOLD

# Mostly small items, some medium, a few of several MB (those go out of band).
# Medium ones stay below the smallest maxbytes; larger ones would be a ValueError in band.
SIZES = st.one_of(
    st.integers(0, 64), st.integers(0, 64), st.integers(65, 60_000), st.integers(THRESHOLD, 3 * 2**20)
)
# Per producer: (size, as numpy?) per item.
PLAN = st.lists(st.tuples(SIZES, st.booleans()), min_size=0, max_size=40)


def payload(k: int, i: int, size: int, as_array: bool) -> Any:
    raw = (f"{k}.{i}|".encode() * (size // 4 + 1))[:size]
    return np.frombuffer(raw, dtype=np.uint8).copy() if as_array else raw


def produce(ch: Channel[Any], k: int, plan: list[tuple[int, bool]], batch: bool) -> None:
    with ch:
        items = [(k, i, zlib.crc32(payload(k, i, s, a)), payload(k, i, s, a)) for i, (s, a) in enumerate(plan)]
        if batch:
            for j in range(0, len(items), 7):
                ch.put_many(items[j : j + 7])
        else:
            for item in items:
                ch.put(item)


def consume(ch: Channel[Any], out: Any, batch: bool) -> None:
    seen = []
    try:
        while True:
            got = ch.get_many(5) if batch else [ch.get()]
            for k, i, crc, data in got:
                raw = data.tobytes() if isinstance(data, np.ndarray) else data
                seen.append((k, i, zlib.crc32(raw) == crc))
    except Exception as exc:  # EndOfChannel ends it; anything else is reported
        out.put((seen, type(exc).__name__))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plans=st.lists(PLAN, min_size=1, max_size=3),
    consumers=st.integers(1, 3),
    maxsize=st.integers(0, 12),
    maxbytes=st.sampled_from([64 * 1024, 1 << 20]),
    batch=st.booleans(),
)
def test_every_item_arrives_once_in_producer_order(
    plans: list[list[tuple[int, bool]]], consumers: int, maxsize: int, maxbytes: int, batch: bool
) -> None:
    ctx = mp.get_context("fork")
    ch: Channel[Any] = Channel(maxsize=maxsize, maxbytes=maxbytes, senders=len(plans))
    out = ctx.SimpleQueue()
    procs = [ctx.Process(target=produce, args=(ch, k, plan, batch)) for k, plan in enumerate(plans)]
    procs += [ctx.Process(target=consume, args=(ch, out, batch)) for _ in range(consumers)]
    try:
        for p in procs:
            p.start()
        reports = [out.get() for _ in range(consumers)]
        for p in procs:
            p.join(60)
            assert p.exitcode == 0, f"{p.name} exited with {p.exitcode}"
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        out.close()
        ch.unlink()
    assert [end for _, end in reports] == ["EndOfChannel"] * consumers
    received = [(k, i) for seen, _ in reports for k, i, _ in seen]
    assert sorted(received) == [(k, i) for k, plan in enumerate(plans) for i in range(len(plan))]
    assert all(ok for seen, _ in reports for _, _, ok in seen), "an item arrived corrupted"
    for seen, _ in reports:
        for k in range(len(plans)):
            order = [i for kk, i, _ in seen if kk == k]
            assert order == sorted(order), f"producer {k}'s items out of order"
