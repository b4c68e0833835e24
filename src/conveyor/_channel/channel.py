"""Channel: a bounded producer-consumer buffer, carrying Python objects between processes.

The textbook producer-consumer guards a counter with two conditions, ``not_full`` and
``not_empty``, and never ends. A :class:`Channel` is that buffer made real::

    creator ──Channel(maxsize, senders=N)──► shared-memory ring (ring.py)
    producer i:  with ch: ch.put(x) ...        records ──► ring ──► records
    consumer j:  for x in ch: ...              (pickled by oob.py; large buffers
                                                in blocks of their own)

Who is a sender is declared up front: ``senders=N`` says N handles will each call
``close()`` (or leave a ``with`` block) once. End of stream is "N closes seen and the
ring drained", so a consumer cannot see it before a slow producer has even started,
nobody counts consumers, and a creator that only hands the channel out sends nothing
and closes nothing. (Cloning a sender per producer, as trio does, is the other sound
design; a declared count needs no registration before ``Process.start`` and reads the
same under fork, forkserver and spawn.)

A handle is small: pickling one sends the ring's name, and unpickling maps it (once per
process). Each handle, the creator's and every copy, counts at most one close. The
creator's handle owns the shared memory: it is unlinked by :meth:`Channel.unlink`,
when that handle is garbage, at interpreter exit (Ctrl-C included), and by the
stale-segment sweep if the creator is killed (once no live process maps the ring; see
``_shm_sweep``). Large items outlive their sender: a producer may exit right after
``put``.

Known limits: a sender that dies before its first ``put`` was never seen, so it cannot
be reported (receivers wait; give them a ``timeout`` or ``cancel()``); a process that
is *stopped* (SIGSTOP) inside a put or get holds a lock for as long, whatever the
others' timeouts; waiting is polling (see ring.py), which an oversubscribed machine
penalises more than a kernel wait; each side tracks at most 64 processes for deaths.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pickle import dumps, loads
from types import TracebackType
from typing import Any, Generic, TypeVar

from conveyor._channel import oob as _oob
from conveyor._channel.layout import CANCELLED
from conveyor._channel.ring import PROCESS, Ring, open_ring
from conveyor._ipc.segment import align8
from conveyor._ipc.serialize import PROTOCOL
from conveyor.errors import (
    ChannelEmpty,
    ChannelFull,
    ClosedChannelError,
    EndOfChannel,
    SerializationError,
)

T = TypeVar("T")

DEFAULT_MAXBYTES = 8 * 2**20
_PLAIN = frozenset({int, float, str, bool, type(None), tuple, list, dict})
_MAX_CAPACITY = 2**32 - 8  # offsets share a 64-bit word with a 32-bit count


@dataclass(frozen=True)
class ChannelStatistics:
    """A snapshot of a channel, from :meth:`Channel.statistics`."""

    qsize: int
    nbytes: int
    maxsize: int
    maxbytes: int
    senders: int
    senders_closed: int
    broken: bool


class Channel(Generic[T]):
    """A bounded, closable, many-to-many channel between processes.

    ``maxsize`` bounds the number of items (0: only ``maxbytes`` bounds it);
    ``maxbytes`` bounds the bytes of pickled items held (large buffers travel beside
    the ring and do not count); ``senders`` is how many handles will ``close()``
    before the stream ends. ``senders=0`` makes an open-ended channel: no end of
    stream (``get`` ends only by timeout or ``cancel()``), and a sender that dies does
    not break it, for transports whose senders come and go, like a pool's workers.

    Example::

        ch = Channel(maxsize=10, senders=2)
        # each of 2 producers:      with ch: ch.put(item) ...
        # any number of consumers:  for item in ch: ...   (ends at end of stream)
        ch.cancel("giving up")       # wakes every blocked put and get, everywhere
    """

    def __init__(
        self, maxsize: int = 0, *, maxbytes: int = DEFAULT_MAXBYTES, senders: int = 1
    ) -> None:
        if not isinstance(maxsize, int) or maxsize < 0:
            raise ValueError(f"maxsize must be an int >= 0 (0: no item limit), got {maxsize!r}")
        if not isinstance(senders, int) or senders < 0:
            raise ValueError(
                f"senders must be an int >= 0: how many handles will close() "
                f"(0: no end of stream), got {senders!r}"
            )
        if not isinstance(maxbytes, int) or not 64 <= maxbytes <= _MAX_CAPACITY:
            raise ValueError(f"maxbytes must be an int in [64, {_MAX_CAPACITY}], got {maxbytes!r}")
        self._ring = Ring.create(align8(maxbytes), maxsize, senders)
        self._fresh()

    def _fresh(self) -> None:
        # Records up to this size take put()'s fast path: in band, and sure to fit.
        self._fast_limit = min(_oob.THRESHOLD - 1, self._ring.capacity - 8)
        self._send_pid = 0  # == PROCESS.pid once this handle may put in this process
        self._slot = -1
        self._closed = False

    def __reduce__(self) -> tuple[Any, ...]:
        return _reopen, (self._ring.name,)

    def clone(self) -> Channel[T]:
        """Another handle on the same channel, with a close of its own.

        For several senders in one process (threads): each needs its own handle,
        since each handle counts one ``close()``. Pickling a handle does the same.

        Example::

            with ch.clone() as mine:    # in each of N sender threads (senders=N)
                mine.put(item)
        """
        return _reopen(self._ring.name)

    # -- sending -----------------------------------------------------------------------

    def put(self, item: T, timeout: float | None = None) -> None:
        """Send ``item``, waiting up to ``timeout`` seconds (None: forever) for room.

        Raises ``ChannelFull`` on timeout, ``ClosedChannelError`` after this handle's
        ``close()``, ``ChannelBroken`` if the channel broke, ``SerializationError`` if
        ``item`` cannot be pickled and ``ValueError`` if it can never fit ``maxbytes``;
        in those last two cases nothing was written.

        Example::

            ch.put({"id": 1}, timeout=5)
        """
        if self._send_pid != PROCESS.pid:
            self._start_sending()
        try:
            # Builtins never hand pickle a buffer: skip the probe, which costs ~40% of
            # a dumps. (A big array inside a list is then pickled in band once, found
            # too large for the fast path, and sent out of band by the general one.)
            if type(item) in _PLAIN:
                record = dumps(item, PROTOCOL)
            else:
                record = dumps(item, PROTOCOL, buffer_callback=_oob.probe)
        except Exception:  # unpicklable, or a large buffer: the general path sorts it out
            record = b""
        if 0 < len(record) <= self._fast_limit:
            # The common case, kept lean: one small record, usually room for it.
            ring = self._ring
            if not ring.write1(record) and not ring.put(((record, 0),), timeout):
                raise ChannelFull(f"no room in the channel within {timeout} s")
            return
        self._send([item], timeout)

    def put_nowait(self, item: T) -> None:
        """``put`` without waiting: ``ChannelFull`` (a ``queue.Full``) if there is no room."""
        self._send([item], 0)

    def put_many(self, items: Iterable[T], timeout: float | None = None) -> None:
        """Send ``items`` in order, in as few locked writes as room allows.

        Every item is pickled before the first is written, so a bad item sends
        nothing. On timeout ``ChannelFull.sent`` says how many went in.

        Example::

            ch.put_many(range(1000))
        """
        self._send(list(items), timeout)

    def _send(self, items: list[T], timeout: float | None) -> None:
        if self._send_pid != PROCESS.pid:
            self._start_sending()
        ring = self._ring
        records: list[tuple[bytes, int]] = []
        blocks = []
        try:
            for item in items:
                try:  # put()'s fast path, per item
                    record = dumps(item, PROTOCOL, buffer_callback=_oob.probe)
                except Exception:
                    record = b""
                if 0 < len(record) <= self._fast_limit:
                    records.append((record, 0))
                    continue
                record, flags, new = _oob.encode(item, ring.name)
                blocks += new
                if ring.record_size(len(record)) > ring.capacity:
                    raise ValueError(
                        f"an item of {len(record)} pickled bytes can never fit this channel "
                        f"(maxbytes={ring.capacity}); create it with a larger maxbytes"
                    )
                records.append((record, flags))
            sent = ring.put(records, timeout)
        except BaseException:
            _oob.discard(blocks)
            raise
        if blocks:
            _oob.handed_over(blocks)
        if sent < len(records):
            raise ChannelFull(
                f"no room in the channel within {timeout} s; {sent} of {len(records)} items sent",
                sent,
            )

    def _start_sending(self) -> None:
        if self._closed:
            raise ClosedChannelError("put() after close() on this handle; close() means 'I am done'")
        ring = self._ring
        if ring.senders and ring.closed_senders() >= ring.senders:
            raise ClosedChannelError(
                f"all {ring.senders} declared senders have closed this channel; "
                f"declare one more with Channel(senders={ring.senders + 1})"
            )
        self._slot = ring.register_sender()
        self._send_pid = PROCESS.pid

    def close(self) -> None:
        """This handle is done sending. Counts once toward ``senders``; idempotent.

        Leaving a ``with`` block closes; leaving it by an exception cancels the channel
        first, so consumers get ``ChannelBroken`` rather than a silently short stream.

        Example::

            with ch:            # close() at the end of the block, even on error
                ch.put(1)
        """
        if self._closed:
            return
        self._closed = True
        if self._ring.seg.closed:
            return  # after unlink(): nothing left to count the close in
        slot = self._slot if self._send_pid == PROCESS.pid else -1
        self._send_pid = 0
        self._ring.close_sender(slot)

    def __enter__(self) -> Channel[T]:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None and not self._ring.seg.closed:
            # A sender that fails must not look like a normal end of stream.
            self.cancel(f"a sender failed with {type(exc).__name__}: {exc}")
        self.close()

    # -- receiving ---------------------------------------------------------------------

    def get(self, timeout: float | None = None) -> T:
        """The next item, waiting up to ``timeout`` seconds (None: forever).

        Raises ``EndOfChannel`` at end of stream, ``ChannelEmpty`` on timeout,
        ``ChannelBroken`` if the channel broke.

        Example::

            item = ch.get(timeout=1.0)
        """
        ring = self._ring
        got = ring.read1()
        if got is None:
            waited = ring.get(1, timeout, tried=True)
            if not waited:
                raise ChannelEmpty(f"nothing arrived within {timeout} s")
            got = waited[0]
        record, flags = got
        if flags:
            return _oob.decode(record, flags)  # type: ignore[no-any-return]
        try:
            return loads(record)  # type: ignore[no-any-return]
        except Exception as exc:
            raise _oob.unpickle_error(exc) from exc

    def get_nowait(self) -> T:
        """``get`` without waiting: ``ChannelEmpty`` (a ``queue.Empty``) if nothing is there."""
        return self.get(0)

    def get_many(self, max_items: int, timeout: float | None = None) -> list[T]:
        """Between 1 and ``max_items`` items, waiting up to ``timeout`` for the first.

        Takes whatever is there in one locked read. Raises like :meth:`get`.

        Example::

            for item in ch.get_many(100, timeout=1.0): ...
        """
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        got = self._ring.get(max_items, timeout)
        if not got:
            raise ChannelEmpty(f"nothing arrived within {timeout} s")
        try:
            return [loads(record) if not flags else _oob.decode(record, flags) for record, flags in got]
        except SerializationError:
            raise
        except Exception as exc:
            raise _oob.unpickle_error(exc) from exc

    def __iter__(self) -> Iterator[T]:
        """Items until end of stream. Example: ``for item in ch: ...``"""
        return self

    def __next__(self) -> T:
        try:
            return self.get()
        except EndOfChannel:
            raise StopIteration from None

    # -- state ---------------------------------------------------------------------------

    def cancel(self, reason: str = "") -> None:
        """Break the channel: every blocked and future put and get, in every process,
        raises ``ChannelBroken`` (with ``reason="cancelled"``).

        Example::

            ch.cancel("the user pressed stop")
        """
        pid = os.getpid()
        self._ring.break_(CANCELLED, pid, f"cancelled by process {pid}" + (f": {reason}" if reason else ""))

    def qsize(self) -> int:
        """Items in the channel now (a snapshot)."""
        return self._ring.qsize()

    def empty(self) -> bool:
        """Whether the channel holds no item now (a snapshot)."""
        return self._ring.qsize() == 0

    def full(self) -> bool:
        """Whether ``maxsize`` items are in the channel now (a snapshot)."""
        return bool(self._ring.maxsize) and self._ring.qsize() >= self._ring.maxsize

    @property
    def maxsize(self) -> int:
        return int(self._ring.maxsize)

    @property
    def maxbytes(self) -> int:
        return int(self._ring.capacity)

    @property
    def senders(self) -> int:
        return int(self._ring.senders)

    def statistics(self) -> ChannelStatistics:
        """Counts and limits, as a frozen record. Example: ``ch.statistics().qsize``"""
        ring = self._ring
        return ChannelStatistics(
            qsize=ring.qsize(),
            nbytes=ring.nbytes(),
            maxsize=self.maxsize,
            maxbytes=self.maxbytes,
            senders=self.senders,
            senders_closed=ring.closed_senders(),
            broken=ring.broken,
        )

    def unlink(self) -> None:
        """Release the shared memory now instead of at exit.

        In the creating process this removes the ring and any unread large items:
        use it once every user is done. Elsewhere it only unmaps this process's view.

        Example::

            ch = Channel()
            ...  # start and join producers and consumers
            ch.unlink()
        """
        self._ring.destroy()

    def __repr__(self) -> str:
        ring = self._ring
        if ring.seg.closed:
            return f"<Channel {ring.name} released>"
        closed, senders = ring.closed_senders(), ring.senders
        if ring.broken:
            err = ring.broken_error()
            state = "cancelled" if err.reason == "cancelled" else f"broken ({err.reason})"
        elif not senders:
            state = "open (open-ended: no end of stream)"
        elif closed >= senders:
            state = f"closed ({closed} of {senders} senders closed)"
        else:
            state = f"open ({closed} of {senders} senders closed)"
        return f"<Channel {ring.name} {state} qsize={ring.qsize()} maxsize={ring.maxsize}>"

def _reopen(name: str) -> Channel[Any]:
    channel: Channel[Any] = Channel.__new__(Channel)
    channel._ring = open_ring(name)
    channel._fresh()
    return channel
