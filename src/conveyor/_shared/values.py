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

from conveyor._ipc.lock import SegmentLock, closed_error
from conveyor._ipc.segment import Segment

N = TypeVar("N", int, float)

# Integers are stored as int64 ("q"), floats as float64 ("d"), whatever width was asked:
# the cell is 8 bytes anyway, and a wider type never overflows where a narrower would.
# Typecodes as multiprocessing.Value takes them, and dtype names as SharedArray does.
_CODES = {
    "q": "q", "l": "q", "i": "q", "h": "q", "b": "q", "d": "d", "f": "d",
    "int": "q", "int64": "q", "int32": "q", "int16": "q", "int8": "q",
    "float": "d", "float64": "d", "float32": "d", "double": "d",
}


def _code_of(kind: str | type | Any) -> str:
    if kind is int:
        return "q"
    if kind is float:
        return "d"
    if isinstance(kind, str) and kind in _CODES:
        return _CODES[kind]
    code = _numpy_code(kind)
    if code:
        return code
    raise TypeError(
        f"SharedValue kind must be int, float, a typecode ('q', 'i', 'l', 'h', 'b', 'd', 'f') "
        f"or a numeric dtype as SharedArray takes it ('int64', 'float32', numpy.int32, ...); "
        f"got {kind!r}"
    )


def _numpy_code(kind: Any) -> str | None:
    """The cell code for any other dtype spelling numpy knows (``"<i8"``, ``np.float32``)."""
    if isinstance(kind, str) or type(kind).__module__.startswith("numpy") or (
        isinstance(kind, type) and kind.__module__.startswith("numpy")
    ):
        try:
            from conveyor._ipc.lock import import_numpy

            dt = import_numpy().dtype(kind)
        except (ImportError, TypeError, ValueError):
            return None
        if dt.kind == "i" or (dt.kind == "u" and dt.itemsize < 8):
            return "q"
        if dt.kind == "f" and dt.itemsize <= 8:
            return "d"
    return None


class SharedValue(Generic[N]):
    """One number in shared memory, like ``multiprocessing.Value`` but sendable anywhere.

    ``kind`` is ``int``, ``float``, a typecode (``"i"``, ``"q"``, ``"d"``, ...) or a numeric
    dtype spelled as :class:`SharedArray` takes it (``"int64"``, ``"float32"``,
    ``numpy.int32``); integers are stored as int64, floats as float64. Reads and writes of ``.value`` are single aligned
    8-byte accesses; ``add`` and ``compare_and_set`` are atomic; ``with v.lock:`` guards
    anything longer. The creating process owns the memory.

    Example::

        total = conveyor.SharedValue("d", 0.0)
        total.add(2.5)                      # from any process, atomic
        with total.lock:
            total.value = total.value * 2
        total.close()
    """

    def __init__(self, kind: str | type | Any = "q", value: N | None = None) -> None:
        code = _code_of(kind)
        self._init(Segment.create(8, "value", sweep=True), code)
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
        try:
            return self._cell.unpack_from(self._buf, 0)[0]  # type: ignore[no-any-return]
        except ValueError:  # a released buffer: say why
            self._check_open()
            raise

    @value.setter
    def value(self, new: N) -> None:
        try:
            self._cell.pack_into(self._buf, 0, self._check(new))
        except (ValueError, TypeError):
            self._check_open()
            raise

    def _what(self) -> str:
        return f"the {type(self).__name__} {self._seg.name}"

    def _check_open(self) -> None:
        if self._seg.closed:
            raise closed_error(self._what())

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
        if type(delta) is not int and not (self._code == "d" and type(delta) is float):
            self._check_delta(delta)
        with self._lock:
            new = self._cell.unpack_from(self._buf, 0)[0] + delta
            self._cell.pack_into(self._buf, 0, self._check(new))
        return new  # type: ignore[no-any-return]

    def _check_delta(self, delta: Any) -> None:
        if isinstance(delta, bool) or not isinstance(delta, numbers.Real):
            raise TypeError(f"add({delta!r}): the delta must be a number, not {type(delta).__name__}")
        if self._code == "q" and not isinstance(delta, numbers.Integral):
            current = self.value
            raise TypeError(
                f"add({delta!r}): this SharedValue holds an int, and {current!r} + {delta!r} = "
                f"{current + delta!r} is a {type(current + delta).__name__}, which it cannot "
                "hold; pass an int delta (or create it with kind=float)"
            )

    def compare_and_set(self, expected: N, new: N) -> bool:
        """Atomically store ``new`` if the value equals ``expected``; True if it did."""
        with self._lock:
            if self._cell.unpack_from(self._buf, 0)[0] != expected:
                return False
            self._cell.pack_into(self._buf, 0, self._check(new))
            return True

    def close(self) -> None:
        """Unmap; in the creating process also free the shared memory. Safe to call twice."""
        self._lock.close(str(closed_error(self._what())))
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
