"""``SharedList``: a list in shared memory (storage in ``_shared_store``)."""

from __future__ import annotations

import pickle
import struct
from collections.abc import Iterable, Iterator, MutableSequence
from typing import Any, overload

from conveyor._ipc.segment import align8
from conveyor._ipc.serialize import PROTOCOL
from conveyor._shared.store import (
    ENTRY,
    F_CAP,
    F_COUNT,
    F_GARBAGE,
    F_INDEX,
    Q,
    Store,
)


class SharedList(Store, MutableSequence[Any]):
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
        n, base = self._get(F_COUNT), self._get(F_INDEX)
        return list(struct.unpack_from(f"<{n}Q", self._buf, base)) if n else []

    def _rebuild_now(self, index_cap: int, extra: int) -> None:
        live = [self._raw_at(off)[1] for off in self._offsets()] if self._get(F_INDEX) else []
        cap = max(8, index_cap, len(live))
        live_bytes = sum(align8(ENTRY.size + len(v)) for v in live)
        base = self._reset_heap(8 * cap, live_bytes, extra)
        self._set(F_INDEX, base)
        self._set(F_CAP, cap)
        for i, vb in enumerate(live):
            Q.pack_into(self._buf, base + 8 * i, self._write_entry(b"", vb))
        self._set(F_COUNT, len(live))

    def _room_for(self, vb: bytes) -> None:
        if self._get(F_COUNT) >= self._get(F_CAP):
            self._rebuild(self._get(F_CAP) * 2, ENTRY.size + len(vb))
        self._reserve(align8(ENTRY.size + len(vb) + len(vb) // 4))

    def _index(self, i: int) -> int:
        n = self._get(F_COUNT)
        j = i + n if i < 0 else i
        if not 0 <= j < n:
            raise IndexError("SharedList index out of range")
        return j

    def _slot(self, j: int) -> int:
        return self._get(F_INDEX) + 8 * j

    @overload
    def __getitem__(self, i: int) -> Any: ...
    @overload
    def __getitem__(self, i: slice) -> list[Any]: ...
    def __getitem__(self, i: int | slice) -> Any:
        with self._lock:
            self._sync()
            if isinstance(i, slice):
                return [self._value_at(off) for off in self._offsets()[i]]
            return self._value_at(Q.unpack_from(self._buf, self._slot(self._index(i)))[0])

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
        vb = pickle.dumps(value, PROTOCOL)
        with self._lock:
            self._sync()
            self._room_for(vb)
            slot = self._slot(self._index(i))
            (off,) = Q.unpack_from(self._buf, slot)
            Q.pack_into(self._buf, slot, self._replace_value(off, vb))

    def __delitem__(self, i: int | slice) -> None:
        with self._lock:
            self._sync()
            if isinstance(i, slice):
                items = self[:]
                del items[i]
                self._replace_all(items)
                return
            j = self._index(i)
            n = self._get(F_COUNT)
            (off,) = Q.unpack_from(self._buf, self._slot(j))
            tail = bytes(self._buf[self._slot(j + 1) : self._slot(n)])
            self._buf[self._slot(j) : self._slot(j) + len(tail)] = tail
            self._set(F_COUNT, n - 1)
            self._set(F_GARBAGE, self._get(F_GARBAGE) + self._entry_size(off))
            self._maybe_compact()

    def _replace_all(self, items: list[Any]) -> None:
        self._set(F_COUNT, 0)
        self._rebuild(8)
        self.extend(items)

    def __len__(self) -> int:
        with self._lock:
            return self._get(F_COUNT)

    def insert(self, index: int, value: Any) -> None:
        vb = pickle.dumps(value, PROTOCOL)
        with self._lock:
            self._sync()
            self._room_for(vb)
            n = self._get(F_COUNT)
            j = max(0, min(n, index + n if index < 0 else index))
            tail = bytes(self._buf[self._slot(j) : self._slot(n)])
            self._buf[self._slot(j + 1) : self._slot(j + 1) + len(tail)] = tail
            Q.pack_into(self._buf, self._slot(j), self._write_entry(b"", vb))
            self._set(F_COUNT, n + 1)

    def append(self, value: Any) -> None:
        vb = pickle.dumps(value, PROTOCOL)
        with self._lock:
            self._sync()
            self._room_for(vb)
            n = self._get(F_COUNT)
            Q.pack_into(self._buf, self._slot(n), self._write_entry(b"", vb))
            self._set(F_COUNT, n + 1)

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
