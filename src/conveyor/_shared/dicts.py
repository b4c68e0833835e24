"""``SharedDict``: a dict shared by processes, in shared memory (storage in ``_shared_store``)."""

from __future__ import annotations

import ast
import pickle
import struct
import zlib
from collections.abc import Iterable, Iterator, MutableMapping
from typing import Any

from conveyor._ipc.segment import align8
from conveyor._ipc.serialize import PROTOCOL
from conveyor._shared.store import (
    DELETED,
    EMPTY,
    ENTRY,
    F_CAP,
    F_COUNT,
    F_GARBAGE,
    F_INDEX,
    F_USED,
    MISSING,
    SLOT,
    Store,
)

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


class SharedDict(Store, MutableMapping[Any, Any]):
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
        cap = self._get(F_CAP)
        base = self._get(F_INDEX)
        mask = cap - 1
        i = h & mask
        free = -1
        klen = len(kb)
        while True:
            slot = base + 16 * i
            sh, off = SLOT.unpack_from(buf, slot)
            if off == EMPTY:
                return (free if free >= 0 else slot), 0
            if off == DELETED:
                if free < 0:
                    free = slot
            elif sh == h:
                k0 = off + ENTRY.size
                if struct.unpack_from("<I", buf, off)[0] == klen and buf[k0 : k0 + klen] == kb:
                    return slot, off
            i = (i + 1) & mask

    def _rebuild_now(self, index_cap: int, extra: int) -> None:
        live: list[tuple[bytes, bytes]] = []
        if self._get(F_INDEX):
            base, cap = self._get(F_INDEX), self._get(F_CAP)
            for i in range(cap):
                _, off = SLOT.unpack_from(self._buf, base + 16 * i)
                if off > DELETED:
                    live.append(self._raw_at(off))
        cap = max(8, index_cap)
        while len(live) * 2 > cap:
            cap *= 2
        live_bytes = sum(align8(ENTRY.size + len(k) + len(v)) for k, v in live)
        base = self._reset_heap(16 * cap, live_bytes, extra)
        self._set(F_INDEX, base)
        self._set(F_CAP, cap)
        self._set(F_USED, 0)
        self._set(F_COUNT, 0)
        for kb, vb in live:
            slot, _ = self._find(kb)
            SLOT.pack_into(self._buf, slot, zlib.crc32(kb) | 2, self._write_entry(kb, vb))
            self._set(F_COUNT, self._get(F_COUNT) + 1)
            self._set(F_USED, self._get(F_USED) + 1)

    def _store(self, kb: bytes, vb: bytes) -> None:
        # Room first: reserving may rebuild the index, which moves every slot.
        if (self._get(F_USED) + 1) * 5 > self._get(F_CAP) * 3:
            self._rebuild(self._get(F_CAP) * 2, ENTRY.size + len(kb) + len(vb))
        self._reserve(align8(ENTRY.size + len(kb) + len(vb) + len(vb) // 4))
        slot, off = self._find(kb)
        if off:
            new = self._replace_value(off, vb)
            if new != off:
                SLOT.pack_into(self._buf, slot, zlib.crc32(kb) | 2, new)
            return
        _, prev = SLOT.unpack_from(self._buf, slot)
        SLOT.pack_into(self._buf, slot, zlib.crc32(kb) | 2, self._write_entry(kb, vb))
        self._set(F_COUNT, self._get(F_COUNT) + 1)
        if prev == EMPTY:
            self._set(F_USED, self._get(F_USED) + 1)

    def _remove(self, slot: int, off: int) -> None:
        SLOT.pack_into(self._buf, slot, 0, DELETED)
        self._set(F_COUNT, self._get(F_COUNT) - 1)
        self._set(F_GARBAGE, self._get(F_GARBAGE) + self._entry_size(off))
        self._maybe_compact()

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
        vb = pickle.dumps(value, PROTOCOL)
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
            return self._get(F_COUNT)

    def _entries(self) -> list[int]:
        base, cap = self._get(F_INDEX), self._get(F_CAP)
        out = []
        for i in range(cap):
            _, off = SLOT.unpack_from(self._buf, base + 16 * i)
            if off > DELETED:
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

    def pop(self, key: Any, default: Any = MISSING) -> Any:
        kb = _key_bytes(key)
        with self._lock:
            self._sync()
            slot, off = self._find(kb)
            if not off:
                if default is MISSING:
                    raise KeyError(key)
                return default
            value = self._value_at(off)
            self._remove(slot, off)
            return value

    def setdefault(self, key: Any, default: Any = None) -> Any:
        with self._lock:
            value = self.get(key, MISSING)
            if value is MISSING:
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
            self._set(F_INDEX, 0)
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
