"""``SharedDict`` and ``SharedList``: what a ``multiprocessing.Manager`` serves, without a server process.

``multiprocessing.Manager().dict()`` keeps the dict in a server process, so every ``d[k]``
is a request and a reply over a socket (tens of microseconds). Here the data itself lives
in one shared-memory segment that every process maps, and an operation is a lock, a hash
probe and a pickle, all in the calling process.

Segment layout (all integers little-endian uint64)::

    header   magic, file_size, count, index_off, index_cap, heap_top, garbage, used_slots
    heap     entries and the index, bump-allocated from heap_top upwards

    entry    klen u32, vlen u32, cap u64 (room for the value), key bytes, value pickle
    dict index   index_cap slots of (hash u64, entry offset u64); offset 0 empty, 1 deleted
    list index   index_cap entry offsets, the first ``count`` in list order

Replaced and deleted entries become garbage. When the heap is full, the structure is
rebuilt compactly if at least half of it is garbage (the freed space is reused), and
otherwise the file is grown with ``ftruncate`` under the lock, its new pages reserved
(``posix_fallocate``: a full /dev/shm is an error, not SIGBUS). The name does not
change, so ownership does not either, and other processes notice the new ``file_size``
in the header and map the file again. Memory goes back to the system too: ``clear()``,
and removals that leave three quarters of a large heap as garbage, rebuild it, and a
file four times larger than the live data needs is cut down (the same header check
makes other processes map it again before they touch it).

Consistency: every operation holds the lock, so processes never see each other's partial
updates. Ctrl-C and SIGTERM are deferred while the structure is being rebuilt. A process
killed by SIGKILL in the middle of an operation releases the lock (the kernel does) but
cannot finish the operation: the entry it was writing may be lost or the count off by one,
and a kill during a rebuild can lose entries. Do not SIGKILL processes mid-update if the
dict must stay exact.

Dict keys are str, bytes, int, float, bool, None or tuples of these, compared by a
canonical text form (``repr``), because Python's own ``hash`` differs between processes.
As in ``dict``, ``1``, ``1.0`` and ``True`` are the same key; it comes back as ``1``.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import struct
from collections.abc import Iterator
from typing import Any, TypeVar

from conveyor._ipc.lock import SegmentLock, closed_error
from conveyor._ipc.segment import SHM_DIR, Segment, align8, reserve

T = TypeVar("T")

_MAGIC = 0x636F6E7665796F72  # "conveyor"
_HEADER = struct.Struct("<8Q")
_HEADER_SIZE = 64
Q = struct.Struct("<Q")
ENTRY = struct.Struct("<IIQ")
SLOT = struct.Struct("<QQ")
(F_SIZE, F_COUNT, F_INDEX, F_CAP, F_TOP, F_GARBAGE, F_USED) = (8, 16, 24, 32, 40, 48, 56)
EMPTY, DELETED = 0, 1
MISSING: Any = object()


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    except (OSError, ValueError):
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


# A file over SHRINK_FLOOR bytes that is SHRINK_RATIO times what its live data needs is
# cut down when it is rebuilt (by clear(), or once removals leave mostly garbage).
SHRINK_FLOOR = 1 << 16
SHRINK_RATIO = 4


class Store:
    """A segment with a bump-allocated heap that can be grown or rebuilt, and its lock."""

    _kind = "store"

    def _create(self, initial_bytes: int) -> None:
        size = max(4096, 1 << max(0, initial_bytes - 1).bit_length())
        seg = Segment.create(size, self._kind, sweep=True)
        self._open(seg)
        _HEADER.pack_into(self._buf, 0, _MAGIC, size, 0, 0, 0, _HEADER_SIZE, 0, 0)

    def _open(self, seg: Segment) -> None:
        self._seg = seg  # owner (or first attachment): kept so the owner can unlink
        self._map = seg  # the current mapping; replaced when another process grows the file
        self._buf = seg.buf
        self._lock = SegmentLock(seg.name)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_attach_store, (type(self), self._seg.name))

    @property
    def lock(self) -> SegmentLock:
        """The reentrant, process-safe lock every operation takes; hold it for compound steps."""
        return self._lock

    @property
    def name(self) -> str:
        return self._seg.name

    def _get(self, field: int) -> int:
        return int(Q.unpack_from(self._buf, field)[0])

    def _set(self, field: int, value: int) -> None:
        Q.pack_into(self._buf, field, value)

    def _sync(self) -> None:
        # Called under the lock: another process may have grown the file since our last look.
        if self._buf.nbytes != self._get(F_SIZE):
            self._remap()

    def _remap(self) -> None:
        new = Segment.attach(self._seg.name)
        old, self._map, self._buf = self._map, new, new.buf
        if old is not self._seg:
            old.close()

    def _grow(self, needed_top: int) -> None:
        old = size = self._get(F_SIZE)
        while size < needed_top:
            size *= 2
        fd = os.open(SHM_DIR / self._seg.name, os.O_RDWR | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            try:
                # Set the new pages aside first: a store into a page /dev/shm cannot
                # supply is SIGBUS, not an exception. On a shortage nothing has changed.
                reserve(fd, old, size - old, f"a {type(self).__name__} growing to {size} bytes")
            except BaseException:
                os.ftruncate(fd, old)
                raise
        finally:
            os.close(fd)
        self._set(F_SIZE, size)
        self._remap()

    def _shrink(self, size: int) -> None:
        """Cut the file down to ``size`` bytes (under the lock, nothing live beyond it).

        Other processes still map the old length, but they touch the heap only under
        the lock and after :meth:`_sync`, which sees the new ``F_SIZE`` and maps again
        first, so none of them touches a page past the end (that would be SIGBUS).
        """
        os.truncate(SHM_DIR / self._seg.name, size)
        self._set(F_SIZE, size)
        self._remap()

    def _maybe_compact(self) -> None:
        """After a removal: rebuild once garbage dominates a large heap, and shrink.

        Amortised: the rebuild copies the live entries, which are at most a third of
        the garbage that had to pile up for it, so each removal pays O(1) on average.
        """
        top = self._get(F_TOP)
        if top > SHRINK_FLOOR and self._get(F_GARBAGE) * 4 >= (top - _HEADER_SIZE) * 3:
            self._rebuild(8)  # the index is sized again for what is left

    def _reserve(self, nbytes: int) -> None:
        """Make room for ``nbytes`` more heap bytes; may rebuild, so call before locating."""
        top = self._get(F_TOP)
        if top + nbytes <= self._get(F_SIZE):
            return
        if self._get(F_GARBAGE) * 2 >= top - _HEADER_SIZE:
            self._rebuild(self._get(F_CAP), nbytes)
        top = self._get(F_TOP)
        if top + nbytes > self._get(F_SIZE):
            self._grow(top + nbytes)

    def _alloc(self, nbytes: int) -> int:
        top = self._get(F_TOP)
        self._set(F_TOP, top + align8(nbytes))
        return top

    def _write_entry(self, kb: bytes, vb: bytes, extra: int = 0) -> int:
        cap = len(vb) + extra
        at = self._alloc(ENTRY.size + len(kb) + cap)
        buf = self._buf
        ENTRY.pack_into(buf, at, len(kb), len(vb), cap)
        k0 = at + ENTRY.size
        buf[k0 : k0 + len(kb)] = kb
        buf[k0 + len(kb) : k0 + len(kb) + len(vb)] = vb
        return at

    def _entry_size(self, at: int) -> int:
        klen, _, cap = ENTRY.unpack_from(self._buf, at)
        return align8(ENTRY.size + klen + cap)

    def _value_at(self, at: int) -> Any:
        klen, vlen, _ = ENTRY.unpack_from(self._buf, at)
        v0 = at + ENTRY.size + klen
        return pickle.loads(self._buf[v0 : v0 + vlen])

    def _key_bytes_at(self, at: int) -> bytes:
        (klen,) = struct.unpack_from("<I", self._buf, at)
        return bytes(self._buf[at + ENTRY.size : at + ENTRY.size + klen])

    def _raw_at(self, at: int) -> tuple[bytes, bytes]:
        klen, vlen, _ = ENTRY.unpack_from(self._buf, at)
        k0 = at + ENTRY.size
        return bytes(self._buf[k0 : k0 + klen]), bytes(self._buf[k0 + klen : k0 + klen + vlen])

    def _replace_value(self, at: int, vb: bytes) -> int:
        """Store ``vb`` for the entry at ``at``: in place if it fits, else as a new entry.

        Returns the entry's (possibly new) offset. The caller has reserved room.
        """
        klen, _, cap = ENTRY.unpack_from(self._buf, at)
        if len(vb) <= cap:
            v0 = at + ENTRY.size + klen
            self._buf[v0 : v0 + len(vb)] = vb
            ENTRY.pack_into(self._buf, at, klen, len(vb), cap)
            return at
        kb = self._key_bytes_at(at)
        self._set(F_GARBAGE, self._get(F_GARBAGE) + self._entry_size(at))
        # Leave slack so a value that keeps growing a little is not copied every time.
        return self._write_entry(kb, vb, extra=len(vb) // 4)

    def _rebuild(self, index_cap: int, extra: int = 0) -> None:
        """Rewrite the structure compactly, with an index of ``index_cap`` slots."""
        # Halfway through, the index is empty and the entries are being re-inserted: an
        # interruption there would lose data other processes rely on. Ctrl-C and SIGTERM
        # wait until it is done (SIGKILL cannot be deferred; see the module notes).
        with _signals_deferred():
            self._rebuild_now(index_cap, extra)

    def _rebuild_now(self, index_cap: int, extra: int) -> None:
        raise NotImplementedError

    def _reset_heap(self, index_bytes: int, live_bytes: int, extra: int) -> int:
        """Empty the heap and place a zeroed index of ``index_bytes`` at its start.

        The caller has copied the live entries out and writes them back compactly from
        there, so everything beyond ``needed`` is free: a file much larger than that is
        cut down, which gives the memory back to the system.
        """
        needed = _HEADER_SIZE + index_bytes + live_bytes + extra
        size = self._get(F_SIZE)
        if needed > size:
            self._grow(needed)
        elif size > SHRINK_FLOOR and needed * SHRINK_RATIO <= size:
            self._shrink(max(SHRINK_FLOOR, 1 << (2 * needed - 1).bit_length()))
        self._buf[_HEADER_SIZE : _HEADER_SIZE + index_bytes] = bytes(index_bytes)
        self._set(F_TOP, _HEADER_SIZE + align8(index_bytes))
        self._set(F_GARBAGE, 0)
        return _HEADER_SIZE

    def close(self) -> None:
        """Unmap; in the creating process also free the shared memory. Safe to call twice."""
        self._lock.close(str(closed_error(f"the {type(self).__name__} {self._seg.name}")))
        if self._map is not self._seg:
            self._map.close()
        self._seg.close()

    @property
    def closed(self) -> bool:
        return self._seg.closed

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _attach_store(cls: type[Store], name: str) -> Store:
    obj = cls.__new__(cls)
    obj._open(Segment.attach(name))
    return obj
