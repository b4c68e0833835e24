"""The shared-memory ring beneath :class:`conveyor.Channel`, and how processes wait on it.

Layout: one :class:`~conveyor._ipc.segment.Segment` holds a 4 KiB header (the tail and
head words, state, sender and receiver rows) and a data area of ``capacity`` bytes of
length-prefixed records; the byte map is drawn once, in ``layout``'s docstring, beside its
constants. Waiting and breaking live in ``waiting``.

Atomic publication. Each side changes the ring with exactly one aligned 8-byte store:
a sender writes its records beyond the tail and only then stores the tail word; a
receiver copies its records out and only then stores the head word. Item count and
offset share the word, so a process killed at any instant (SIGKILL lands between any
two bytecodes) leaves either the old state or the new one, never a half-written record
in view. The stores and loads go through a native ``"Q"`` memoryview, which CPython
performs as single machine words; on x86-64 (TSO) stores are seen in program order,
which is what makes "record first, tail last" sufficient. Other architectures use one
lock for both sides, whose acquire/release are full barriers.

Locking. Senders serialise among themselves on byte 0 of the segment file, receivers
on byte 1, with ``fcntl.lockf`` (POSIX record locks, ~0.3 us per call here). The kernel
drops such a lock when its holder dies, so a process killed inside put or get cannot
wedge the others. Record locks belong to a process, not a thread, so a per-process
``threading.Lock`` is taken first; and closing *any* descriptor of the file would drop
them, so each process maps a channel once (:func:`open_ring` caches by name).

Waiting. Nobody sleeps holding a lock. A blocked put or get polls the two words
(cheap unlocked reads): a few plain spins, then up to 200 polls each after
``sched_yield`` (on an idle core that returns at once, so it is a spin; with more
processes than cores, as with 2 producers and 3 consumers on 2 CPUs, it hands the core to one that
has work), then sleeps doubling from 10 us to 1 ms. No doorbell means no wake-up state
that a killed process could leave half-updated; the price is up to ~1 ms of latency
after an idle period and a light poll while blocked. Cancellation is the state word,
seen on the next poll.

Dead peers (tables in peers.py). A receiver blocked on an empty ring checks every
0.2 s whether a sender with open handles has died, and then breaks the channel,
naming the pid. A sender blocked on a full ring does the same when every receiver
that ever got something is dead.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Sequence
from fcntl import LOCK_EX, LOCK_UN, lockf
from functools import partial
from time import monotonic

from conveyor._channel import peers as peers
from conveyor._channel.layout import (
    _CLOSED,
    _FIXED,
    _HALF,
    _HEAD,
    _RECV_BYTE,
    _RECV_ROWS,
    _SEND_BYTE,
    _SEND_ROWS,
    _SPLIT_LOCKS,
    _STATE,
    _TAIL,
    HEADER,
    M32,
    MAGIC,
)
from conveyor._channel.oob import sweep_blocks
from conveyor._channel.waiting import RingWaiting
from conveyor._ipc import forks
from conveyor._ipc.segment import SHM_DIR, Segment, align8
from conveyor.errors import ChannelBroken, EndOfChannel

Record = tuple[bytes, int]  # payload, flags


class Ring(RingWaiting):
    """A bounded ring of byte records in shared memory; see the module docstring.

    ``put``/``get`` move pre-serialised records; :class:`conveyor.Channel` does the
    pickling. Obtain one with :meth:`create` or :func:`open_ring`, never directly.

    Example::

        ring = Ring.create(capacity=1024, maxsize=0, senders=1)
        ring.put([(b"hi", 0)], timeout=None)
        assert ring.get(1, timeout=None) == [(b"hi", 0)]
        ring.destroy()
    """

    def __init__(self, seg: Segment) -> None:
        self.seg = seg
        self.name = seg.name
        self._w = seg.buf.cast("Q")
        self._data = seg.buf[HEADER:]
        magic, self.capacity, self.maxsize, self.senders = _FIXED.unpack_from(seg.buf, 192)
        self._maxcount = self.maxsize or 2**32
        if magic != MAGIC:
            raise ChannelBroken(f"shared memory {self.name} is not a conveyor channel", "gone")
        self.tag = self.name.rsplit("_", 1)[1]
        self._fd = os.open(SHM_DIR / self.name, os.O_RDWR | os.O_CLOEXEC)
        # A handle dropped without unlink() must not keep its descriptor (the mapping goes
        # with the memoryviews). Only this process's last Ring for the name closes it:
        # open_ring keeps one per process, and closing any descriptor of the file would
        # drop the record locks this process holds on it.
        self._fd_closer = weakref.finalize(self, _close_quietly, self._fd)
        self._start = peers.my_start()
        self._sweeper: weakref.finalize[[str], Ring] | None = None
        self._send_tlock = threading.Lock()
        self._recv_tlock = threading.Lock() if _SPLIT_LOCKS else self._send_tlock
        self._recv_registered = False
        self._head_seen = self._tail_seen = 0
        self._tail_mine = -1
        self._senders = peers.PeerTable(seg.buf, _SEND_ROWS)
        self._receivers = peers.PeerTable(seg.buf, _RECV_ROWS)

    @classmethod
    def create(cls, capacity: int, maxsize: int, senders: int) -> Ring:
        seg = Segment.create(HEADER + capacity, "chan")
        _FIXED.pack_into(seg.buf, 192, MAGIC, capacity, maxsize, senders)
        ring = cls(seg)
        # Large items' blocks pass from sender to receiver; unread ones die with the ring.
        ring._sweeper = weakref.finalize(ring, sweep_blocks, ring.tag)
        _RINGS[ring.name] = ring
        _watch_forks(ring)
        return ring

    # -- locking -------------------------------------------------------------------

    def _lock(self, tlock: threading.Lock, byte: int) -> None:
        self._w[_STATE]  # after destroy(): the clear error, not EBADF
        tlock.acquire()
        try:
            lockf(self._fd, LOCK_EX, 1, byte)
        except BaseException:
            tlock.release()
            raise

    def _unlock(self, tlock: threading.Lock, byte: int) -> None:
        try:
            lockf(self._fd, LOCK_UN, 1, byte)
        finally:
            tlock.release()

    # -- counts ----------------------------------------------------------------------

    def _used(self, tail_w: int, head_w: int) -> tuple[int, int]:
        """(items, bytes) in the ring for this pair of words."""
        count = ((tail_w >> 32) - (head_w >> 32)) & M32
        if not count:
            return 0, 0
        return count, ((tail_w & M32) - (head_w & M32)) % self.capacity or self.capacity

    def qsize(self) -> int:
        return self._used(self._w[_TAIL], self._w[_HEAD])[0]

    def nbytes(self) -> int:
        return self._used(self._w[_TAIL], self._w[_HEAD])[1]

    def record_size(self, n: int) -> int:
        return 8 + align8(n)

    # -- sending ------------------------------------------------------------------------

    def put(self, records: Sequence[Record], timeout: float | None) -> int:
        """Write all ``records`` in order, blocking for room; returns how many went in.

        Fewer than ``len(records)`` only when ``timeout`` ran out. Every record must
        fit the ring (the caller checks against :attr:`capacity`).
        """
        done = self.write(records, 0)
        if done == len(records) or (timeout is not None and timeout <= 0):
            return done
        deadline = None if timeout is None else monotonic() + timeout
        while done < len(records):
            need = self.record_size(len(records[done][0]))
            if not self._poll(partial(self._has_room, need), deadline, self._check_receivers):
                break
            done = self.write(records, done)
        return done

    def _has_room(self, need: int) -> bool:
        count, used = self._used(self._w[_TAIL], self._w[_HEAD])
        return not (self.maxsize and count >= self.maxsize) and need <= self.capacity - used

    def write1(self, rec: bytes) -> bool:
        """:meth:`write` for one in-band record that fits at once; False: use the general path.

        The same steps as ``write``, unrolled: this is every ``put``'s cost.
        """
        w, cap = self._w, self.capacity
        n = len(rec)
        need = 8 + ((n + 7) & ~7)  # record_size(n), inlined: the hot path
        with self._send_tlock:
            lockf(self._fd, LOCK_EX, 1, _SEND_BYTE)
            try:
                tail_w = w[_TAIL]
                if w[_STATE]:
                    return False
                if tail_w != self._tail_mine:
                    self._head_seen = w[_HEAD]
                head_w = self._head_seen
                tail = tail_w & M32
                count = ((tail_w >> 32) - (head_w >> 32)) & M32
                if count and (
                    count >= self._maxcount or need > cap - ((tail - (head_w & M32)) % cap or cap)
                ):
                    self._tail_mine = -1  # the general path will look at the live head
                    return False
                p = tail + 8
                if p + n > cap:
                    return False
                w[(HEADER + tail) >> 3] = n
                self._data[p : p + n] = rec
                w[_TAIL] = self._tail_mine = (((tail_w >> 32) + 1) & M32) << 32 | (tail + need) % cap
                return True
            finally:
                lockf(self._fd, LOCK_UN, 1, _SEND_BYTE)

    def write(self, records: Sequence[Record], i: int) -> int:
        """Write ``records[i:]`` while they fit, without waiting; returns the new ``i``."""
        w, data, cap, maxsize, fd = self._w, self._data, self.capacity, self.maxsize, self._fd
        with self._send_tlock:
            lockf(fd, LOCK_EX, 1, _SEND_BYTE)
            try:
                if w[_STATE]:
                    raise self.broken_error()
                tail_w = w[_TAIL]
                # The head we saw last time is an old, hence pessimistic, view of what
                # receivers freed; reading the live word costs a cache miss, so only
                # when the old view says "no room". The old view is sound only while
                # the tail is where we left it: byte offsets wrap, and a head older
                # than one lap of the ring would overstate the room.
                if tail_w != self._tail_mine:
                    self._head_seen = w[_HEAD]
                count, used = self._used(tail_w, self._head_seen)
                nput, tail = tail_w >> 32, tail_w & M32
                start = i
                while i < len(records):
                    rec, flags = records[i]
                    n = len(rec)
                    need = 8 + ((n + 7) & ~7)  # record_size(n), inlined: the hot path
                    if (maxsize and count >= maxsize) or need > cap - used:
                        if self._head_seen == w[_HEAD]:
                            break
                        self._head_seen = w[_HEAD]
                        count, used = self._used(((nput + i - start) & M32) << 32 | tail, self._head_seen)
                        continue
                    w[(HEADER + tail) >> 3] = n | flags << 32
                    p = tail + 8
                    if p == cap:
                        p = 0
                    if p + n <= cap:
                        data[p : p + n] = rec
                    else:
                        first = cap - p
                        view = memoryview(rec)
                        data[p:cap] = view[:first]
                        data[: n - first] = view[first:]
                    tail = (tail + need) % cap
                    used += need
                    count += 1
                    i += 1
                if i > start:
                    # Publication: the records are in place; this one store shows them.
                    w[_TAIL] = self._tail_mine = ((nput + i - start) & M32) << 32 | tail
                return i
            finally:
                lockf(fd, LOCK_UN, 1, _SEND_BYTE)

    def register_sender(self) -> int:
        """Count one more open sender handle in this process; returns its row or -1."""
        self._lock(self._send_tlock, _SEND_BYTE)
        try:
            return self._senders.claim(os.getpid(), self._start, count=True)
        finally:
            self._unlock(self._send_tlock, _SEND_BYTE)

    def close_sender(self, row: int) -> None:
        """One sender handle is done: count the close, then release its row."""
        self._lock(self._send_tlock, _SEND_BYTE)
        try:
            # Count first: a kill between the two stores leaves a dead "open" row,
            # which can only ever turn an end of stream into ChannelBroken, not a hang.
            self._w[_CLOSED] += 1
            self._senders.release(row, os.getpid())
        finally:
            self._unlock(self._send_tlock, _SEND_BYTE)

    # -- receiving ----------------------------------------------------------------------

    def get(self, max_items: int, timeout: float | None, tried: bool = False) -> list[Record]:
        """Take 1 to ``max_items`` records, blocking until there is one.

        Returns ``[]`` when ``timeout`` ran out; raises ``EndOfChannel`` at end of
        stream and ``ChannelBroken`` when the channel broke. ``tried``: the caller
        has just found the ring empty, so start by waiting.
        """
        got = [] if tried else self.read(max_items)
        if got or (timeout is not None and timeout <= 0):
            if not got:
                self._check_end()
            return got
        deadline = None if timeout is None else monotonic() + timeout
        while not got:
            if not self._poll(self._readable, deadline, self._check_senders):
                return []
            got = self.read(max_items)
        return got

    def _readable(self) -> bool:
        w = self._w
        if (w[_TAIL] ^ w[_HEAD]) >> 32:
            return True
        self._check_end()
        return False

    def _check_end(self) -> None:
        # Read "closed" before the counts: a sender publishes its last item before it
        # closes, so seeing every close and then an empty ring means truly drained.
        w = self._w
        if self.senders and w[_CLOSED] >= self.senders and not (w[_TAIL] ^ w[_HEAD]) >> 32:
            raise EndOfChannel("end of stream: every sender closed and the channel is drained")

    def read1(self) -> Record | None:
        """:meth:`read` for one record, unrolled: this is every ``get``'s cost."""
        if not self._recv_registered:
            self._register_receiver()
        w, cap = self._w, self.capacity
        with self._recv_tlock:
            lockf(self._fd, LOCK_EX, 1, _RECV_BYTE)
            try:
                if w[_STATE]:
                    raise self.broken_error()
                head_w = w[_HEAD]
                if (((self._tail_seen >> 32) - (head_w >> 32) - 1) & M32) >= _HALF:
                    self._tail_seen = w[_TAIL]  # none left in our old view: look again
                    if not (self._tail_seen ^ head_w) >> 32:
                        return None
                head = head_w & M32
                prefix = w[(HEADER + head) >> 3]
                n = prefix & M32
                p = head + 8
                if p == cap:
                    p = 0
                if p + n <= cap:
                    rec = bytes(self._data[p : p + n])
                else:
                    rec = bytes(self._data[p:cap]) + bytes(self._data[: n - (cap - p)])
                w[_HEAD] = (((head_w >> 32) + 1) & M32) << 32 | (head + 8 + ((n + 7) & ~7)) % cap  # record_size(n), inlined
                return rec, prefix >> 32
            finally:
                lockf(self._fd, LOCK_UN, 1, _RECV_BYTE)

    def read(self, max_items: int) -> list[Record]:
        """Take up to ``max_items`` records without waiting (maybe none)."""
        if not self._recv_registered:
            self._register_receiver()
        w, data, cap, fd = self._w, self._data, self.capacity, self._fd
        with self._recv_tlock:
            lockf(fd, LOCK_EX, 1, _RECV_BYTE)
            try:
                if w[_STATE]:
                    raise self.broken_error()
                head_w = w[_HEAD]
                # As in write(): an old tail is a pessimistic view of what was published
                # (other receivers may have moved the head past it: then look again).
                avail = ((self._tail_seen >> 32) - (head_w >> 32)) & M32
                if not avail or avail > _HALF:
                    self._tail_seen = w[_TAIL]
                    avail = ((self._tail_seen >> 32) - (head_w >> 32)) & M32
                    if not avail:
                        return []
                take = min(avail, max_items)
                out: list[Record] = []
                head = head_w & M32
                for _ in range(take):
                    prefix = w[(HEADER + head) >> 3]
                    n = prefix & M32
                    p = head + 8
                    if p == cap:
                        p = 0
                    if p + n <= cap:
                        out.append((bytes(data[p : p + n]), prefix >> 32))
                    else:
                        rec = bytes(data[p:cap]) + bytes(data[: n - (cap - p)])
                        out.append((rec, prefix >> 32))
                    head = (head + 8 + ((n + 7) & ~7)) % cap  # record_size(n), inlined
                w[_HEAD] = (((head_w >> 32) + take) & M32) << 32 | head
                return out
            finally:
                lockf(fd, LOCK_UN, 1, _RECV_BYTE)

    def _register_receiver(self) -> None:
        self._lock(self._recv_tlock, _RECV_BYTE)
        try:
            self._receivers.claim(os.getpid(), self._start, count=False)
            self._recv_registered = True
        finally:
            self._unlock(self._recv_tlock, _RECV_BYTE)

    # -- lifetime -------------------------------------------------------------------------

    def destroy(self) -> None:
        """Unmap here; the owner also unlinks the segment. Idempotent."""
        if _RINGS.get(self.name) is self:
            del _RINGS[self.name]
        if self.seg.closed:
            return
        self._w.release()
        self._data.release()
        self._w = _Released()  # type: ignore[assignment]  # every operation reads _w first
        self._fd_closer()
        self.seg.close()
        if self._sweeper is not None:
            self._sweeper()

    def _after_fork(self) -> None:
        # The child starts with no locks held (record locks are not inherited) but
        # may have copied a thread lock mid-acquire; it must not unlink the parent's
        # segment, and it is a new process for the peer tables.
        self._start = peers.my_start()
        self._send_tlock = threading.Lock()
        self._recv_tlock = threading.Lock() if _SPLIT_LOCKS else self._send_tlock
        self._recv_registered = False
        self._head_seen = self._tail_seen = 0
        self._tail_mine = -1
        if self._sweeper is not None:
            self._sweeper.detach()
            self._sweeper = None


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


class _Released:
    """Stands in for the header words after :meth:`Ring.destroy`: a clear error."""

    def __getitem__(self, index: int) -> int:
        raise ChannelBroken("this channel was released here with unlink()", "gone")

    def __setitem__(self, index: int, value: int) -> None:
        self[index]


class _Process:
    """This process's pid, kept current across forks without a syscall per use."""

    pid = os.getpid()


PROCESS = _Process()


_RINGS: weakref.WeakValueDictionary[str, Ring] = weakref.WeakValueDictionary()


def _watch_forks(ring: Ring) -> None:
    # The segment disowns itself in the child (Segment registers for that).
    forks.call_in_child(_update_pid)
    forks.register(ring, Ring._after_fork)


def _update_pid() -> None:
    PROCESS.pid = os.getpid()


def open_ring(name: str) -> Ring:
    """This process's mapping of channel ``name`` (one per process; see module docstring)."""
    ring = _RINGS.get(name)
    if ring is None:
        try:
            seg = Segment.attach(name)
        except FileNotFoundError:
            raise ChannelBroken(
                f"the channel's shared memory {name} is gone: the process that created "
                "the channel released it or exited; keep the Channel object alive in its "
                "creator while others use it",
                "gone",
            ) from None
        ring = _RINGS[name] = Ring(seg)
        _watch_forks(ring)
    return ring
