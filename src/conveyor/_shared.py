"""Single shared numbers: :class:`SharedValue` and :class:`SharedCounter`.

Each is one 8-byte cell in its own segment, with the segment's lock (see
``_shared_common``) for the read-modify-write helpers. Like every shared object, it pickles
to its segment name and re-attaches on the other side, so it can be sent to a pool worker
that is already running, which ``multiprocessing.Value`` cannot.
"""

from __future__ import annotations

import numbers
import struct
from typing import Any, Generic, TypeVar

from conveyor._shared_common import SegmentLock, create_segment
from conveyor._shm import Segment

N = TypeVar("N", int, float)

_CODES = {"q": "q", "l": "q", "i": "q", "h": "q", "b": "q", "d": "d", "f": "d"}


def _code_of(kind: str | type) -> str:
    if kind is int:
        return "q"
    if kind is float:
        return "d"
    if isinstance(kind, str) and kind in _CODES:
        return _CODES[kind]
    raise TypeError(
        f"SharedValue holds int or float (typecodes 'q', 'i', 'l', 'd', 'f'); got {kind!r}"
    )


class SharedValue(Generic[N]):
    """One number in shared memory, like ``multiprocessing.Value`` but sendable anywhere.

    ``kind`` is ``int``, ``float`` or a typecode (``"i"``, ``"q"``, ``"d"``, ...; integers are
    stored as int64, floats as float64). Reads and writes of ``.value`` are single aligned
    8-byte accesses; ``add`` and ``compare_and_set`` are atomic; ``with v.lock:`` guards
    anything longer. The creating process owns the memory.

    Example::

        total = conveyor.SharedValue("d", 0.0)
        total.add(2.5)                      # from any process, atomic
        with total.lock:
            total.value = total.value * 2
        total.close()
    """

    def __init__(self, kind: str | type = "q", value: N | None = None) -> None:
        code = _code_of(kind)
        self._init(create_segment(8, "value"), code)
        self.value = value if value is not None else (0 if code == "q" else 0.0)  # type: ignore[assignment]

    def _init(self, seg: Segment, code: str) -> None:
        self._seg = seg
        self._code = code
        self._cell = struct.Struct(code)
        self._buf = seg.buf
        self._lock = SegmentLock(seg.name)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_attach_value, (type(self), self._seg.name, self._code))

    @property
    def value(self) -> N:
        return self._cell.unpack_from(self._buf, 0)[0]  # type: ignore[no-any-return]

    @value.setter
    def value(self, new: N) -> None:
        self._cell.pack_into(self._buf, 0, self._check(new))

    def _check(self, new: Any) -> Any:
        if self._code == "q":
            if isinstance(new, bool) or not isinstance(new, numbers.Integral):
                raise TypeError(f"this SharedValue holds an int; cannot store {new!r}")
            if not -(2**63) <= int(new) < 2**63:
                raise ValueError(f"{new} does not fit in a 64-bit SharedValue")
            return int(new)
        if isinstance(new, bool) or not isinstance(new, numbers.Real):
            raise TypeError(f"this SharedValue holds a float; cannot store {new!r}")
        return float(new)

    @property
    def lock(self) -> SegmentLock:
        """The value's reentrant, process-safe lock."""
        return self._lock

    def get_lock(self) -> SegmentLock:
        """The lock, under the name ``multiprocessing.Value`` uses."""
        return self._lock

    def add(self, delta: N) -> N:
        """Atomically add ``delta``; returns the new value."""
        with self._lock:
            new = self._cell.unpack_from(self._buf, 0)[0] + delta
            self._cell.pack_into(self._buf, 0, self._check(new))
        return new  # type: ignore[no-any-return]

    def compare_and_set(self, expected: N, new: N) -> bool:
        """Atomically store ``new`` if the value equals ``expected``; True if it did."""
        with self._lock:
            if self._cell.unpack_from(self._buf, 0)[0] != expected:
                return False
            self._cell.pack_into(self._buf, 0, self._check(new))
            return True

    def close(self) -> None:
        """Unmap; in the creating process also free the shared memory. Safe to call twice."""
        self._lock.close()
        self._seg.close()

    @property
    def closed(self) -> bool:
        return self._seg.closed

    def __enter__(self) -> SharedValue[N]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.closed:
            return f"<{type(self).__name__} (closed)>"
        return f"{type(self).__name__}({self.value!r})"


class SharedCounter(SharedValue[int]):
    """A shared integer counter with atomic ``increment``.

    Example::

        done = conveyor.SharedCounter()
        # in any worker:
        done.increment()            # returns the new count
        print(done.value)
    """

    def __init__(self, value: int = 0) -> None:
        super().__init__("q", value)

    def increment(self, n: int = 1) -> int:
        """Atomically add ``n`` (default 1); returns the new count."""
        return self.add(n)

    def decrement(self, n: int = 1) -> int:
        """Atomically subtract ``n`` (default 1); returns the new count."""
        return self.add(-n)


def _attach_value(cls: type[SharedValue[Any]], name: str, code: str) -> SharedValue[Any]:
    # A module-level function, so pickle and cloudpickle both send it by reference.
    obj = cls.__new__(cls)
    obj._init(Segment.attach(name), code)
    return obj
