"""Channel: the API in one process, then across processes under every start method."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import numpy as np
import pytest

import conveyor
from conftest import conveyor_segments
from conveyor import (
    Channel,
    ChannelBroken,
    ChannelClosed,
    ChannelEmpty,
    ChannelFull,
    SerializationError,
)
from conveyor._channel.oob import THRESHOLD

MakeChannel = Callable[..., Channel[Any]]


def segments_of(ch: Channel[Any]) -> set[str]:
    """The ring's segment and its large-item blocks (other tests may run beside us)."""
    return {name for name in conveyor_segments() if ch._ring.tag in name}


@pytest.fixture
def make() -> Iterator[MakeChannel]:
    made: list[Channel[Any]] = []

    def factory(*args: Any, **kwargs: Any) -> Channel[Any]:
        made.append(Channel(*args, **kwargs))
        return made[-1]

    yield factory
    for ch in made:
        ch.unlink()


# -- one process -------------------------------------------------------------------------


def test_fifo_and_end_of_stream(make: MakeChannel) -> None:
    ch = make()
    items = [0, "x", None, b"", [1, 2], {"a": (1.5, True)}]
    for item in items:
        ch.put(item)
    assert ch.qsize() == len(items) and not ch.empty()
    ch.close()
    assert list(ch) == items
    with pytest.raises(ChannelClosed):
        ch.get()
    with pytest.raises(ChannelClosed):
        ch.get_nowait()


def test_batches_keep_order(make: MakeChannel) -> None:
    ch = make(maxsize=1000)
    ch.put_many(range(500))
    ch.put(500)
    assert ch.get_many(10) == list(range(10))
    assert ch.get_many(10_000) == list(range(10, 501))
    with pytest.raises(ValueError):
        ch.get_many(0)


def test_nowait_errors_are_the_stdlib_ones(make: MakeChannel) -> None:
    ch = make(maxsize=2)
    with pytest.raises(queue.Empty):
        ch.get_nowait()
    ch.put_nowait(1)
    ch.put_nowait(2)
    assert ch.full()
    with pytest.raises(queue.Full):
        ch.put_nowait(3)
    with pytest.raises(ChannelFull):
        ch.put(3, timeout=0.05)
    assert ch.get_nowait() == 1
    ch.put_nowait(3)
    assert [ch.get(), ch.get()] == [2, 3]
    with pytest.raises(ChannelEmpty):
        ch.get(timeout=0.05)


def test_put_many_timeout_says_how_many_went_in(make: MakeChannel) -> None:
    ch = make(maxsize=3)
    with pytest.raises(ChannelFull) as info:
        ch.put_many(range(5), timeout=0.05)
    assert info.value.sent == 3
    assert ch.get_many(10) == [0, 1, 2]


def test_bounded_by_bytes(make: MakeChannel) -> None:
    ch = make(maxbytes=1024)
    ch.put(b"x" * 900)
    with pytest.raises(ChannelFull):
        ch.put_nowait(b"y" * 200)
    assert ch.statistics().nbytes > 900
    assert ch.get() == b"x" * 900
    ch.put_nowait(b"y" * 200)


def test_item_bigger_than_maxbytes_is_a_value_error(make: MakeChannel) -> None:
    ch = make(maxbytes=1024)
    with pytest.raises(ValueError, match="maxbytes"):
        ch.put(list(range(1000)))
    with pytest.raises(ValueError):
        ch.put_many([1, list(range(1000))])
    assert ch.qsize() == 0


def test_records_wrap_around_the_ring(make: MakeChannel) -> None:
    ch = make(maxbytes=256)
    sent = [bytes([i % 251]) * (i * 7 % 150) for i in range(400)]
    got = []
    for item in sent:
        while True:
            try:
                ch.put_nowait(item)
                break
            except ChannelFull:
                got.append(ch.get())
    ch.close()
    got += list(ch)
    assert got == sent


def test_unpicklable_item_raises_before_writing(make: MakeChannel) -> None:
    ch = make()
    with pytest.raises(SerializationError, match="cannot be pickled") as info:
        ch.put(threading.Lock())
    assert info.value.what == "item"
    with pytest.raises(SerializationError):
        ch.put_many([1, 2, threading.Lock()])
    assert ch.qsize() == 0


def test_unpicklable_on_the_way_out_is_a_serialization_error(make: MakeChannel) -> None:
    ch = make()
    ch.put(Unloadable())
    with pytest.raises(SerializationError, match="unpickled"):
        ch.get()


class Unloadable:
    def __reduce__(self) -> tuple[Any, ...]:
        return (_fail, ())


def _fail() -> None:
    raise RuntimeError("no")


def test_lambdas_travel_by_cloudpickle(make: MakeChannel) -> None:
    ch = make()
    k = 3
    ch.put(lambda x: x * k)
    assert ch.get()(2) == 6


def test_large_buffers_go_out_of_band_and_leave_nothing(make: MakeChannel) -> None:
    ch = make(maxbytes=64 * 1024)  # far smaller than the items: they must go beside the ring
    arr = np.arange(THRESHOLD, dtype=np.int64)
    blocks = partial(segments_of, ch)
    ch.put(arr)
    ch.put(b"b" * THRESHOLD)
    ch.put(bytearray(b"c" * THRESHOLD))
    ch.put(("nested", b"d" * THRESHOLD, [arr[::2].copy()]))
    assert len(blocks()) == 5 + 1  # the ring, and one block per large buffer
    got = ch.get()
    assert isinstance(got, np.ndarray) and np.array_equal(got, arr)
    assert got.flags.writeable
    assert ch.get() == b"b" * THRESHOLD
    ba = ch.get()
    assert type(ba) is bytearray and ba == b"c" * THRESHOLD
    nested = ch.get()
    assert nested[1] == b"d" * THRESHOLD and np.array_equal(nested[2][0], arr[::2])
    # The receiver unlinked every block's name on receipt; memory stays while mapped.
    assert blocks() == {ch._ring.name}
    got[0] = 99  # still usable
    assert got[0] == 99


def test_unread_large_items_are_swept_with_the_channel() -> None:
    ch: Channel[Any] = Channel()
    ch.put(np.zeros(THRESHOLD))
    assert len(segments_of(ch)) == 2
    ch.unlink()
    assert segments_of(ch) == set()


def test_senders_count_closes_per_handle(make: MakeChannel) -> None:
    ch = make(senders=2)
    a, b = pickle.loads(pickle.dumps(ch)), pickle.loads(pickle.dumps(ch))
    a.put(1)
    a.close()
    a.close()  # idempotent: still one close
    assert ch.get() == 1
    with pytest.raises(ChannelEmpty):
        ch.get(timeout=0.05)  # 1 was there; now empty but not ended
    b.close()
    with pytest.raises(ChannelClosed):
        ch.get(timeout=0.05)
    assert ch.statistics().senders_closed == 2


def test_put_after_close_is_refused(make: MakeChannel) -> None:
    ch = make(senders=2)
    ch.close()
    with pytest.raises(ChannelClosed, match="after close"):
        ch.put(1)
    other = pickle.loads(pickle.dumps(ch))
    other.close()
    late = pickle.loads(pickle.dumps(ch))
    with pytest.raises(ChannelClosed, match="senders=3"):
        late.put(1)


def test_with_block_closes_or_cancels(make: MakeChannel) -> None:
    ch = make()
    with ch:
        ch.put(1)
    assert list(ch) == [1]
    ch2 = make()
    with pytest.raises(ZeroDivisionError), ch2:
        ch2.put(1)
        1 / 0  # noqa: B018
    with pytest.raises(ChannelBroken, match="ZeroDivisionError") as info:
        ch2.get()
    assert info.value.reason == "cancelled"


def test_cancel_breaks_every_operation(make: MakeChannel) -> None:
    ch = make()
    ch.put(1)
    ch.cancel("stop now")
    for op in (ch.get, lambda: ch.put(2), ch.get_nowait, lambda: ch.get_many(3)):
        with pytest.raises(ChannelBroken, match="stop now") as info:
            op()
    assert info.value.pid is not None
    assert ch.statistics().broken


def test_cancel_wakes_blocked_threads(make: MakeChannel) -> None:
    ch = make(maxsize=1)
    full = make(maxsize=1)
    full.put(0)
    errors: list[BaseException] = []

    def wait(op: Callable[[], Any]) -> None:
        try:
            op()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=wait, args=(ch.get,)) for _ in range(3)]
    threads += [threading.Thread(target=wait, args=(lambda: full.put(1),))]
    for t in threads:
        t.start()
    time.sleep(0.2)
    ch.cancel()
    full.cancel()
    for t in threads:
        t.join(5)
    assert len(errors) == 4 and all(isinstance(e, ChannelBroken) for e in errors)


def test_threads_share_a_handle(make: MakeChannel) -> None:
    ch = make(maxsize=8, senders=4)
    got: list[int] = []
    lock = threading.Lock()

    def produce(k: int) -> None:
        with ch.clone() as mine:  # one handle per sender: each counts one close
            for i in range(500):
                mine.put(k * 1000 + i)

    def consume() -> None:
        for x in ch:
            with lock:
                got.append(x)

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(4)]
    threads += [threading.Thread(target=consume) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(got) == sorted(k * 1000 + i for k in range(4) for i in range(500))


def test_errors_pickle_with_their_facts() -> None:
    for exc in (ChannelBroken("m", "sender died", 12), ChannelFull("m", 3), ChannelEmpty("m")):
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is type(exc) and str(back) == "m"
        assert vars(back) == vars(exc)
    assert issubclass(ChannelFull, queue.Full) and issubclass(ChannelEmpty, queue.Empty)
    assert ChannelBroken.__module__ == "conveyor"


def test_exports() -> None:
    assert {"Channel", "ChannelBroken", "ChannelClosed", "ChannelEmpty", "ChannelFull"} <= set(
        conveyor.__all__
    )
    assert conveyor.__all__ == sorted(conveyor.__all__)
    for name in conveyor.__all__:
        assert getattr(conveyor, name) is not None


def test_bad_arguments() -> None:
    for kwargs in ({"maxsize": -1}, {"senders": -1}, {"maxbytes": 8}, {"maxbytes": 2**33}):
        with pytest.raises(ValueError):
            Channel(**kwargs)


def test_a_released_channel_cannot_be_attached() -> None:
    ch: Channel[Any] = Channel()
    data = pickle.dumps(ch)
    ch.unlink()
    for op in (lambda: ch.put(1), ch.get_nowait, ch.qsize):
        with pytest.raises(ChannelBroken, match="unlink"):
            op()
    with pytest.raises(ChannelBroken, match="gone") as info:
        pickle.loads(data)
    assert info.value.reason == "gone"


def test_repr_and_statistics(make: MakeChannel) -> None:
    ch = make(maxsize=5, senders=2)
    ch.put("a")
    stats = ch.statistics()
    assert (stats.qsize, stats.maxsize, stats.senders, stats.senders_closed) == (1, 5, 2, 0)
    assert "qsize=1" in repr(ch)


def _close_one(ch: Channel[Any]) -> None:
    with ch:
        ch.put("from a child")


def test_repr_says_open_closed_or_cancelled(start_method: str) -> None:
    ctx = mp.get_context(start_method)
    ch: Channel[Any] = Channel(maxsize=5, senders=2)
    name = ch._ring.name
    assert repr(ch) == f"<Channel {name} open (0 of 2 senders closed) qsize=0 maxsize=5>"
    p = ctx.Process(target=_close_one, args=(ch,))
    p.start()
    p.join(30)
    assert repr(ch) == f"<Channel {name} open (1 of 2 senders closed) qsize=1 maxsize=5>"
    ch.close()
    assert repr(ch) == f"<Channel {name} closed (2 of 2 senders closed) qsize=1 maxsize=5>"
    ch.cancel("stop")
    assert repr(ch) == f"<Channel {name} cancelled qsize=1 maxsize=5>"
    ch.unlink()
    assert repr(ch) == f"<Channel {name} released>"
    ch.close()  # close() after unlink() is a no-op
    ch.unlink()
    endless: Channel[Any] = Channel(senders=0)
    assert "open (open-ended: no end of stream)" in repr(endless)
    endless.unlink()


def _put_after_close(ch: Channel[Any], out: Any) -> None:
    ch.put("last")
    ch.close()
    try:
        ch.put("too late")
    except conveyor.ClosedChannelError as exc:
        out.put(("closed by you", isinstance(exc, ChannelClosed), str(exc)))
    except Exception as exc:  # reported, so the parent's assertion names it
        out.put(("other", type(exc).__name__, str(exc)))


@pytest.mark.timeout(60)
def test_closed_by_you_and_end_of_stream_are_two_errors(start_method: str) -> None:
    """A sender that put after its own close() gets ClosedChannelError; the receiver at
    the end of the stream gets EndOfChannel; ``except ChannelClosed`` still takes both."""
    ctx = mp.get_context(start_method)
    ch: Channel[Any] = Channel(maxsize=5, senders=1)
    out = ctx.SimpleQueue()
    p = ctx.Process(target=_put_after_close, args=(ch, out))
    p.start()
    p.join(30)
    kind, is_base, message = out.get()
    assert (kind, is_base) == ("closed by you", True), message
    assert "after close()" in message
    assert ch.get(timeout=10) == "last"
    with pytest.raises(conveyor.EndOfChannel, match="end of stream") as info:
        ch.get(timeout=10)
    assert isinstance(info.value, ChannelClosed)
    assert not isinstance(info.value, conveyor.ClosedChannelError)
    with pytest.raises(conveyor.ClosedChannelError, match="senders"):
        ch.put("after every declared sender closed")
    for exc in (conveyor.EndOfChannel("x"), conveyor.ClosedChannelError("y")):
        again = pickle.loads(pickle.dumps(exc))
        assert type(again) is type(exc) and type(exc).__module__ == "conveyor"
    ch.unlink()


def test_close_after_unlink_is_a_no_op() -> None:
    ch: Channel[Any] = Channel()
    ch.put(1)
    other = ch.clone()
    ch.unlink()
    ch.close()
    other.close()  # the same mapping in this process: released too
    ch.close()


def _fds_and_maps() -> tuple[int, int]:
    with open("/proc/self/maps") as f:
        maps = sum("/dev/shm/conveyor_" in line for line in f)
    return len(os.listdir("/proc/self/fd")), maps


def _open_and_drop(data: bytes, n: int) -> tuple[int, int]:
    before = _fds_and_maps()
    for _ in range(n):
        handle = pickle.loads(data)
        handle.qsize()
        del handle
    after = _fds_and_maps()
    return after[0] - before[0], after[1] - before[1]


def test_dropped_handles_close_their_descriptor_and_mapping(start_method: str) -> None:
    import concurrent.futures

    warm: Channel[Any] = Channel()  # starts whatever a first channel starts
    warm.unlink()
    before = _fds_and_maps()
    tags = []
    for _ in range(200):
        ch: Channel[Any] = Channel()
        ch.put(np.zeros(THRESHOLD // 8 + 1))  # a large item in flight: freed with the ring
        tags.append(ch._ring.tag)
        del ch
    assert _fds_and_maps() == before
    assert not [n for n in conveyor_segments() if any(tag in n for tag in tags)]
    # A consumer that unpickles and drops many handles keeps none of them.
    kept: Channel[Any] = Channel()
    ctx = mp.get_context(start_method)
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as ex:
        data = pickle.dumps(kept)
        ex.submit(_open_and_drop, data, 1).result(timeout=60)  # warm up the worker
        assert ex.submit(_open_and_drop, data, 300).result(timeout=60) == (0, 0)
    kept.unlink()


# -- across processes ----------------------------------------------------------------------


def _produce(ch: Channel[Any], k: int, n: int) -> None:
    with ch:
        for i in range(n):
            ch.put((k, i))


def _consume(ch: Channel[Any], out: Any) -> None:
    out.put([x for x in ch])


def test_many_to_many_under_each_start_method(start_method: str) -> None:
    ctx = mp.get_context(start_method)
    ch: Channel[Any] = Channel(maxsize=10, senders=2)
    out = ctx.SimpleQueue()
    procs = [ctx.Process(target=_produce, args=(ch, k, 2000)) for k in range(2)]
    procs += [ctx.Process(target=_consume, args=(ch, out)) for _ in range(3)]
    try:
        for p in procs:
            p.start()
        results = [out.get() for _ in range(3)]
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        ch.unlink()
        out.close()
    every = [x for r in results for x in r]
    assert sorted(every) == [(k, i) for k in range(2) for i in range(2000)]
    for r in results:  # FIFO per producer, as each consumer saw it
        for k in range(2):
            seq = [i for kk, i in r if kk == k]
            assert seq == sorted(seq)


def _send_array(ch: Channel[Any]) -> None:
    with ch:
        ch.put(np.full(2**20, 7.0))


def _cancel_later(ch: Channel[Any]) -> None:
    time.sleep(0.3)
    ch.cancel("from a child")


def test_large_array_between_processes(start_method: str) -> None:
    ctx = mp.get_context(start_method)
    ch: Channel[Any] = Channel()
    p = ctx.Process(target=_send_array, args=(ch,))
    p.start()
    try:
        arr = ch.get(timeout=30)
        assert arr.shape == (2**20,) and float(arr.sum()) == 7.0 * 2**20
        with pytest.raises(ChannelClosed):
            ch.get(timeout=30)
    finally:
        p.join(30)
        ch.unlink()
    del arr


def test_cancel_in_another_process_wakes_this_one() -> None:
    ctx = mp.get_context("fork")
    ch: Channel[Any] = Channel()
    p = ctx.Process(target=_cancel_later, args=(ch,))
    p.start()
    try:
        with pytest.raises(ChannelBroken, match="from a child") as info:
            ch.get(timeout=30)
        assert info.value.pid == p.pid
    finally:
        p.join(30)
        ch.unlink()


def _put_then_die(ch: Channel[Any]) -> None:
    ch.put("last words")
    os._exit(1)


def test_open_ended_channel_outlives_its_senders() -> None:
    ctx = mp.get_context("fork")
    ch: Channel[Any] = Channel(senders=0)
    p = ctx.Process(target=_put_then_die, args=(ch,))
    p.start()
    try:
        assert ch.get(timeout=30) == "last words"
        p.join(30)
        with pytest.raises(ChannelEmpty):  # not ChannelBroken, not ChannelClosed
            ch.get(timeout=0.6)
        ch.close()  # closing counts but never ends the stream
        with pytest.raises(ChannelEmpty):
            ch.get(timeout=0.05)
        ch.clone().put(1)
        assert ch.get() == 1
    finally:
        p.join(30)
        ch.unlink()


def test_demo_runs_and_reports_a_rate(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from conveyor._demo import channel as _demo_channel

    monkeypatch.setattr(_demo_channel, "PER_PRODUCER", 3000)
    _demo_channel.run()
    out = capsys.readouterr().out
    assert "6,000 items moved" in out and "items/s" in out
