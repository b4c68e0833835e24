"""``SharedDict`` and ``SharedList``: the seed's Manager use case, without a server process.

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
rebuilt compactly if at least half of it is garbage, and otherwise the file is grown with
``ftruncate`` under the lock; the name does not change, so ownership does not either, and
other processes notice the new ``file_size`` in the header and map the file again.

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

import ast
import contextlib
import os
import pickle
import signal
import struct
import zlib
from collections.abc import Iterable, Iterator, MutableMapping, MutableSequence
from typing import Any, TypeVar, overload

from conveyor._shared_common import SegmentLock, create_segment
from conveyor._shm import SHM_DIR, Segment

T = TypeVar("T")

_MAGIC = 0x636F6E7665796F72  # "conveyor"
_HEADER = struct.Struct("<8Q")
_HEADER_SIZE = 64
_Q = struct.Struct("<Q")
_ENTRY = struct.Struct("<IIQ")
_SLOT = struct.Struct("<QQ")
(_F_SIZE, _F_COUNT, _F_INDEX, _F_CAP, _F_TOP, _F_GARBAGE, _F_USED) = (8, 16, 24, 32, 40, 48, 56)
_EMPTY, _DELETED = 0, 1
_MISSING: Any = object()


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


def _aligned(n: int) -> int:
    return (n + 7) & ~7


class _Store:
    """A segment with a bump-allocated heap that can be grown or rebuilt, and its lock."""

    _kind = "store"

    def _create(self, initial_bytes: int) -> None:
        size = max(4096, 1 << max(0, initial_bytes - 1).bit_length())
        seg = create_segment(size, self._kind)
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
        return int(_Q.unpack_from(self._buf, field)[0])

    def _set(self, field: int, value: int) -> None:
        _Q.pack_into(self._buf, field, value)

    def _sync(self) -> None:
        # Called under the lock: another process may have grown the file since our last look.
        if self._buf.nbytes != self._get(_F_SIZE):
            self._remap()

    def _remap(self) -> None:
        new = Segment.attach(self._seg.name)
        old, self._map, self._buf = self._map, new, new.buf
        if old is not self._seg:
            old.close()

    def _grow(self, needed_top: int) -> None:
        size = self._get(_F_SIZE)
        while size < needed_top:
            size *= 2
        os.truncate(SHM_DIR / self._seg.name, size)
        self._set(_F_SIZE, size)
        self._remap()

    def _reserve(self, nbytes: int) -> None:
        """Make room for ``nbytes`` more heap bytes; may rebuild, so call before locating."""
        top = self._get(_F_TOP)
        if top + nbytes <= self._get(_F_SIZE):
            return
        if self._get(_F_GARBAGE) * 2 >= top - _HEADER_SIZE:
            self._rebuild(self._get(_F_CAP), nbytes)
        top = self._get(_F_TOP)
        if top + nbytes > self._get(_F_SIZE):
            self._grow(top + nbytes)

    def _alloc(self, nbytes: int) -> int:
        top = self._get(_F_TOP)
        self._set(_F_TOP, top + _aligned(nbytes))
        return top

    def _write_entry(self, kb: bytes, vb: bytes, extra: int = 0) -> int:
        cap = len(vb) + extra
        at = self._alloc(_ENTRY.size + len(kb) + cap)
        buf = self._buf
        _ENTRY.pack_into(buf, at, len(kb), len(vb), cap)
        k0 = at + _ENTRY.size
        buf[k0 : k0 + len(kb)] = kb
        buf[k0 + len(kb) : k0 + len(kb) + len(vb)] = vb
        return at

    def _entry_size(self, at: int) -> int:
        klen, _, cap = _ENTRY.unpack_from(self._buf, at)
        return _aligned(_ENTRY.size + klen + cap)

    def _value_at(self, at: int) -> Any:
        klen, vlen, _ = _ENTRY.unpack_from(self._buf, at)
        v0 = at + _ENTRY.size + klen
        return pickle.loads(self._buf[v0 : v0 + vlen])

    def _key_bytes_at(self, at: int) -> bytes:
        (klen,) = struct.unpack_from("<I", self._buf, at)
        return bytes(self._buf[at + _ENTRY.size : at + _ENTRY.size + klen])

    def _raw_at(self, at: int) -> tuple[bytes, bytes]:
        klen, vlen, _ = _ENTRY.unpack_from(self._buf, at)
        k0 = at + _ENTRY.size
        return bytes(self._buf[k0 : k0 + klen]), bytes(self._buf[k0 + klen : k0 + klen + vlen])

    def _replace_value(self, at: int, vb: bytes) -> int:
        """Store ``vb`` for the entry at ``at``: in place if it fits, else as a new entry.

        Returns the entry's (possibly new) offset. The caller has reserved room.
        """
        klen, _, cap = _ENTRY.unpack_from(self._buf, at)
        if len(vb) <= cap:
            v0 = at + _ENTRY.size + klen
            self._buf[v0 : v0 + len(vb)] = vb
            _ENTRY.pack_into(self._buf, at, klen, len(vb), cap)
            return at
        kb = self._key_bytes_at(at)
        self._set(_F_GARBAGE, self._get(_F_GARBAGE) + self._entry_size(at))
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
        """Empty the heap and place a zeroed index of ``index_bytes`` at its start."""
        needed = _HEADER_SIZE + index_bytes + live_bytes + extra
        if needed > self._get(_F_SIZE):
            self._grow(needed)
        self._buf[_HEADER_SIZE : _HEADER_SIZE + index_bytes] = bytes(index_bytes)
        self._set(_F_TOP, _HEADER_SIZE + _aligned(index_bytes))
        self._set(_F_GARBAGE, 0)
        return _HEADER_SIZE

    def close(self) -> None:
        """Unmap; in the creating process also free the shared memory. Safe to call twice."""
        self._lock.close()
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


def _attach_store(cls: type[_Store], name: str) -> _Store:
    obj = cls.__new__(cls)
    obj._open(Segment.attach(name))
    return obj


_KEY_SCALARS = (str, bytes, int, float, type(None))


def _key_bytes(key: Any) -> bytes:
    t = type(key)
    if t is str or (t is int):
        return repr(key).encode("utf-8", "surrogatepass")
    return repr(_canonical(key, key)).encode("utf-8", "surrogatepass")


def _canonical(key: Any, whole: Any) -> Any:
    if isinstance(key, bool):
        return int(key)
    if isinstance(key, float):
        if key != key or key in (float("inf"), float("-inf")):
            raise TypeError(f"SharedDict keys cannot be nan or infinite; got {whole!r}")
        return int(key) if key.is_integer() else key
    if type(key) in _KEY_SCALARS:
        return key
    if type(key) is tuple:
        return tuple(_canonical(k, whole) for k in key)
    raise TypeError(
        f"SharedDict keys must be str, bytes, int, float, bool, None or tuples of these "
        f"(they are compared across processes by value); got {type(key).__name__} in {whole!r}"
    )


class SharedDict(_Store, MutableMapping[Any, Any]):
    """A dict in shared memory, usable from any process: pool tasks, pipelines, Processes.

    Every operation is atomic (it holds ``d.lock``); ``with d.lock:`` makes several into
    one. Values are pickled; keys are str, bytes, int, float, bool, None or tuples of
    these. Iteration and ``keys()``/``values()``/``items()`` work on a snapshot. The
    creating process owns the memory; pickling sends only the segment name.

    Example::

        counts = conveyor.SharedDict()
        def task(word):                  # in a pool worker
            counts.add(word, 1)          # atomic read-add-write
        ...
        print(counts.copy())             # a plain dict
        counts.close()
    """

    _kind = "dict"

    def __init__(self, items: Iterable[tuple[Any, Any]] | dict[Any, Any] = (), *, initial_bytes: int = 1 << 16) -> None:
        self._create(initial_bytes)
        with self._lock:
            self._rebuild(8)
            if items:
                self.update(items)

    # -- index ------------------------------------------------------------------------------

    def _find(self, kb: bytes) -> tuple[int, int]:
        """(slot address, entry offset) for key bytes; entry 0 if absent, with the slot
        address of the first free place to insert it."""
        buf = self._buf
        h = zlib.crc32(kb) | 2  # never 0 or 1, so a hash cannot look like a slot marker
        cap = self._get(_F_CAP)
        base = self._get(_F_INDEX)
        mask = cap - 1
        i = h & mask
        free = -1
        klen = len(kb)
        while True:
            slot = base + 16 * i
            sh, off = _SLOT.unpack_from(buf, slot)
            if off == _EMPTY:
                return (free if free >= 0 else slot), 0
            if off == _DELETED:
                if free < 0:
                    free = slot
            elif sh == h:
                k0 = off + _ENTRY.size
                if struct.unpack_from("<I", buf, off)[0] == klen and buf[k0 : k0 + klen] == kb:
                    return slot, off
            i = (i + 1) & mask

    def _rebuild_now(self, index_cap: int, extra: int) -> None:
        live: list[tuple[bytes, bytes]] = []
        if self._get(_F_INDEX):
            base, cap = self._get(_F_INDEX), self._get(_F_CAP)
            for i in range(cap):
                _, off = _SLOT.unpack_from(self._buf, base + 16 * i)
                if off > _DELETED:
                    live.append(self._raw_at(off))
        cap = max(8, index_cap)
        while len(live) * 2 > cap:
            cap *= 2
        live_bytes = sum(_aligned(_ENTRY.size + len(k) + len(v)) for k, v in live)
        base = self._reset_heap(16 * cap, live_bytes, extra)
        self._set(_F_INDEX, base)
        self._set(_F_CAP, cap)
        self._set(_F_USED, 0)
        self._set(_F_COUNT, 0)
        for kb, vb in live:
            slot, _ = self._find(kb)
            _SLOT.pack_into(self._buf, slot, zlib.crc32(kb) | 2, self._write_entry(kb, vb))
            self._set(_F_COUNT, self._get(_F_COUNT) + 1)
            self._set(_F_USED, self._get(_F_USED) + 1)

    def _store(self, kb: bytes, vb: bytes) -> None:
        # Room first: reserving may rebuild the index, which moves every slot.
        if (self._get(_F_USED) + 1) * 5 > self._get(_F_CAP) * 3:
            self._rebuild(self._get(_F_CAP) * 2, _ENTRY.size + len(kb) + len(vb))
        self._reserve(_aligned(_ENTRY.size + len(kb) + len(vb) + len(vb) // 4))
        slot, off = self._find(kb)
        if off:
            new = self._replace_value(off, vb)
            if new != off:
                _SLOT.pack_into(self._buf, slot, zlib.crc32(kb) | 2, new)
            return
        _, prev = _SLOT.unpack_from(self._buf, slot)
        _SLOT.pack_into(self._buf, slot, zlib.crc32(kb) | 2, self._write_entry(kb, vb))
        self._set(_F_COUNT, self._get(_F_COUNT) + 1)
        if prev == _EMPTY:
            self._set(_F_USED, self._get(_F_USED) + 1)

    def _remove(self, slot: int, off: int) -> None:
        _SLOT.pack_into(self._buf, slot, 0, _DELETED)
        self._set(_F_COUNT, self._get(_F_COUNT) - 1)
        self._set(_F_GARBAGE, self._get(_F_GARBAGE) + self._entry_size(off))

    # -- the mapping protocol -------------------------------------------------------------

    def __getitem__(self, key: Any) -> Any:
        kb = _key_bytes(key)
        with self._lock:
            self._sync()
            _, off = self._find(kb)
            if not off:
                raise KeyError(key)
            return self._value_at(off)

    def __setitem__(self, key: Any, value: Any) -> None:
        kb = _key_bytes(key)
        vb = pickle.dumps(value, 5)
        with self._lock:
            self._sync()
            self._store(kb, vb)

    def __delitem__(self, key: Any) -> None:
        kb = _key_bytes(key)
        with self._lock:
            self._sync()
            slot, off = self._find(kb)
            if not off:
                raise KeyError(key)
            self._remove(slot, off)

    def __contains__(self, key: object) -> bool:
        kb = _key_bytes(key)
        with self._lock:
            self._sync()
            return self._find(kb)[1] != 0

    def __len__(self) -> int:
        with self._lock:
            return self._get(_F_COUNT)

    def _entries(self) -> list[int]:
        base, cap = self._get(_F_INDEX), self._get(_F_CAP)
        out = []
        for i in range(cap):
            _, off = _SLOT.unpack_from(self._buf, base + 16 * i)
            if off > _DELETED:
                out.append(off)
        return out

    def __iter__(self) -> Iterator[Any]:
        return iter(self.keys())

    def keys(self) -> list[Any]:  # type: ignore[override]
        """A snapshot list of the keys."""
        with self._lock:
            self._sync()
            raw = [self._key_bytes_at(off) for off in self._entries()]
        return [ast.literal_eval(kb.decode("utf-8", "surrogatepass")) for kb in raw]

    def values(self) -> list[Any]:  # type: ignore[override]
        """A snapshot list of the values."""
        with self._lock:
            self._sync()
            return [self._value_at(off) for off in self._entries()]

    def items(self) -> list[tuple[Any, Any]]:  # type: ignore[override]
        """A snapshot list of (key, value) pairs."""
        with self._lock:
            self._sync()
            raw = [self._raw_at(off) for off in self._entries()]
        return [
            (ast.literal_eval(kb.decode("utf-8", "surrogatepass")), pickle.loads(vb))
            for kb, vb in raw
        ]

    def copy(self) -> dict[Any, Any]:
        """A plain dict with the current contents (a consistent snapshot)."""
        return dict(self.items())

    def get(self, key: Any, default: Any = None) -> Any:
        kb = _key_bytes(key)
        with self._lock:
            self._sync()
            _, off = self._find(kb)
            return self._value_at(off) if off else default

    def pop(self, key: Any, default: Any = _MISSING) -> Any:
        kb = _key_bytes(key)
        with self._lock:
            self._sync()
            slot, off = self._find(kb)
            if not off:
                if default is _MISSING:
                    raise KeyError(key)
                return default
            value = self._value_at(off)
            self._remove(slot, off)
            return value

    def setdefault(self, key: Any, default: Any = None) -> Any:
        with self._lock:
            value = self.get(key, _MISSING)
            if value is _MISSING:
                self[key] = value = default
            return value

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Like dict.update, atomically."""
        with self._lock:
            for k, v in dict(*args, **kwargs).items():
                self[k] = v

    def add(self, key: Any, delta: Any = 1, default: Any = 0) -> Any:
        """Atomically ``d[key] = d.get(key, default) + delta``; returns the new value."""
        with self._lock:
            new = self.get(key, default) + delta
            self[key] = new
            return new

    def clear(self) -> None:
        with self._lock:
            self._sync()
            self._set(_F_INDEX, 0)
            self._rebuild(8)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (SharedDict, dict)):
            return self.copy() == (other.copy() if isinstance(other, SharedDict) else other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        if self.closed:
            return "<SharedDict (closed)>"
        return f"SharedDict({self.copy()!r})"


class SharedList(_Store, MutableSequence[Any]):
    """A list in shared memory, usable from any process; every operation is atomic.

    Values are pickled. ``with lst.lock:`` makes several operations one; iteration works
    on a snapshot. The creating process owns the memory.

    Example::

        results = conveyor.SharedList()
        def task(x):                 # in a pool worker
            results.append(x * x)
        ...
        print(sorted(results))
        results.close()
    """

    _kind = "list"

    def __init__(self, items: Iterable[Any] = (), *, initial_bytes: int = 1 << 16) -> None:
        self._create(initial_bytes)
        with self._lock:
            self._rebuild(8)
            self.extend(items)

    def _offsets(self) -> list[int]:
        n, base = self._get(_F_COUNT), self._get(_F_INDEX)
        return list(struct.unpack_from(f"<{n}Q", self._buf, base)) if n else []

    def _rebuild_now(self, index_cap: int, extra: int) -> None:
        live = [self._raw_at(off)[1] for off in self._offsets()] if self._get(_F_INDEX) else []
        cap = max(8, index_cap, len(live))
        live_bytes = sum(_aligned(_ENTRY.size + len(v)) for v in live)
        base = self._reset_heap(8 * cap, live_bytes, extra)
        self._set(_F_INDEX, base)
        self._set(_F_CAP, cap)
        for i, vb in enumerate(live):
            _Q.pack_into(self._buf, base + 8 * i, self._write_entry(b"", vb))
        self._set(_F_COUNT, len(live))

    def _room_for(self, vb: bytes) -> None:
        if self._get(_F_COUNT) >= self._get(_F_CAP):
            self._rebuild(self._get(_F_CAP) * 2, _ENTRY.size + len(vb))
        self._reserve(_aligned(_ENTRY.size + len(vb) + len(vb) // 4))

    def _index(self, i: int) -> int:
        n = self._get(_F_COUNT)
        j = i + n if i < 0 else i
        if not 0 <= j < n:
            raise IndexError("SharedList index out of range")
        return j

    def _slot(self, j: int) -> int:
        return self._get(_F_INDEX) + 8 * j

    @overload
    def __getitem__(self, i: int) -> Any: ...
    @overload
    def __getitem__(self, i: slice) -> list[Any]: ...
    def __getitem__(self, i: int | slice) -> Any:
        with self._lock:
            self._sync()
            if isinstance(i, slice):
                return [self._value_at(off) for off in self._offsets()[i]]
            return self._value_at(_Q.unpack_from(self._buf, self._slot(self._index(i)))[0])

    @overload
    def __setitem__(self, i: int, value: Any) -> None: ...
    @overload
    def __setitem__(self, i: slice, value: Iterable[Any]) -> None: ...
    def __setitem__(self, i: int | slice, value: Any) -> None:
        if isinstance(i, slice):
            with self._lock:
                items = self[:]
                items[i] = value
                self._replace_all(items)
            return
        vb = pickle.dumps(value, 5)
        with self._lock:
            self._sync()
            self._room_for(vb)
            slot = self._slot(self._index(i))
            (off,) = _Q.unpack_from(self._buf, slot)
            _Q.pack_into(self._buf, slot, self._replace_value(off, vb))

    def __delitem__(self, i: int | slice) -> None:
        with self._lock:
            self._sync()
            if isinstance(i, slice):
                items = self[:]
                del items[i]
                self._replace_all(items)
                return
            j = self._index(i)
            n = self._get(_F_COUNT)
            (off,) = _Q.unpack_from(self._buf, self._slot(j))
            tail = bytes(self._buf[self._slot(j + 1) : self._slot(n)])
            self._buf[self._slot(j) : self._slot(j) + len(tail)] = tail
            self._set(_F_COUNT, n - 1)
            self._set(_F_GARBAGE, self._get(_F_GARBAGE) + self._entry_size(off))

    def _replace_all(self, items: list[Any]) -> None:
        self._set(_F_COUNT, 0)
        self._rebuild(8)
        self.extend(items)

    def __len__(self) -> int:
        with self._lock:
            return self._get(_F_COUNT)

    def insert(self, index: int, value: Any) -> None:
        vb = pickle.dumps(value, 5)
        with self._lock:
            self._sync()
            self._room_for(vb)
            n = self._get(_F_COUNT)
            j = max(0, min(n, index + n if index < 0 else index))
            tail = bytes(self._buf[self._slot(j) : self._slot(n)])
            self._buf[self._slot(j + 1) : self._slot(j + 1) + len(tail)] = tail
            _Q.pack_into(self._buf, self._slot(j), self._write_entry(b"", vb))
            self._set(_F_COUNT, n + 1)

    def append(self, value: Any) -> None:
        vb = pickle.dumps(value, 5)
        with self._lock:
            self._sync()
            self._room_for(vb)
            n = self._get(_F_COUNT)
            _Q.pack_into(self._buf, self._slot(n), self._write_entry(b"", vb))
            self._set(_F_COUNT, n + 1)

    def extend(self, values: Iterable[Any]) -> None:
        with self._lock:
            for v in values:
                self.append(v)

    def pop(self, index: int = -1) -> Any:
        with self._lock:
            self._sync()
            value = self[index]
            del self[index]
            return value

    def clear(self) -> None:
        with self._lock:
            self._sync()
            self._replace_all([])

    def __iter__(self) -> Iterator[Any]:
        return iter(self[:])

    def tolist(self) -> list[Any]:
        """A plain list with the current contents (a consistent snapshot)."""
        return self[:]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (SharedList, list)):
            return self[:] == other[:]
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        if self.closed:
            return "<SharedList (closed)>"
        return f"SharedList({self[:]!r})"
