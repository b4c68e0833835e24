"""Field kinds of shared structs: how each annotated type is laid out, read and written.

See :mod:`conveyor._shared.structs` for the layout table and the locking rules.
"""

from __future__ import annotations

import numbers
import operator
import struct
import typing
from collections.abc import Iterator
from typing import Any

from conveyor._ipc.segment import align8

_LEN = struct.Struct("I")

# Instance attributes and methods every shared struct has; a field may not shadow them.
RESERVED = frozenset(
    {"lock", "close", "closed", "add", "compare_and_set", "update", "asdict", "segment_name"}
)


class _Field:
    size = 8
    kind = "?"
    # Wider than one aligned 8-byte word: reads and writes take the lock, so another
    # process never sees half of an old value and half of a new one.
    torn = False

    def __init__(self, owner: str, name: str) -> None:
        self.owner = owner
        self.name = name
        self.offset = 0

    def where(self) -> str:
        return f"field {self.owner}.{self.name}"

    def zero(self) -> Any:
        raise NotImplementedError

    def get(self, buf: memoryview, base: int) -> Any:
        raise NotImplementedError

    def set(self, buf: memoryview, base: int, value: Any) -> None:
        raise NotImplementedError

    def prepare(self, value: Any) -> Any:
        """``value`` in a form that can be written twice (see :meth:`Layout.write`)."""
        return value


class _IntField(_Field):
    kind = "int"
    _s = struct.Struct("q")

    def zero(self) -> int:
        return 0

    def get(self, buf: memoryview, base: int) -> int:
        return int(self._s.unpack_from(buf, base + self.offset)[0])

    def check(self, value: Any) -> int:
        if type(value) is int:
            v = value
        elif isinstance(value, bool) or type(value).__name__ == "bool_":
            # operator.index(True) is 1: a bool stored here is almost always a mistake.
            raise TypeError(
                f"{self.where()} is an int; cannot store bool {value!r} "
                "(declare the field as bool, or store int(value))"
            )
        else:
            try:
                v = operator.index(value)
            except TypeError:
                raise TypeError(
                    f"{self.where()} is an int; cannot store {type(value).__name__} {value!r}"
                ) from None
        if not -(2**63) <= v < 2**63:
            raise ValueError(f"{self.where()} is a 64-bit int; {v} is out of range")
        return v

    def set(self, buf: memoryview, base: int, value: Any) -> None:
        self._s.pack_into(buf, base + self.offset, self.check(value))


class _FloatField(_Field):
    kind = "float"
    _s = struct.Struct("d")

    def zero(self) -> float:
        return 0.0

    def get(self, buf: memoryview, base: int) -> float:
        return float(self._s.unpack_from(buf, base + self.offset)[0])

    def check(self, value: Any) -> float:
        if type(value) is float or type(value) is int:
            return float(value)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(
                f"{self.where()} is a float; cannot store {type(value).__name__} {value!r}"
            )
        return float(value)

    def set(self, buf: memoryview, base: int, value: Any) -> None:
        self._s.pack_into(buf, base + self.offset, self.check(value))


class _BoolField(_Field):
    kind = "bool"

    def zero(self) -> bool:
        return False

    def get(self, buf: memoryview, base: int) -> bool:
        return bool(buf[base + self.offset])

    def set(self, buf: memoryview, base: int, value: Any) -> None:
        # numpy's bool_ is not a bool subclass; accept it by name rather than import numpy.
        if not (isinstance(value, bool) or type(value).__name__ == "bool_"):
            raise TypeError(
                f"{self.where()} is a bool; cannot store {type(value).__name__} {value!r}"
            )
        buf[base + self.offset] = 1 if value else 0


class _TextField(_Field):
    torn = True

    def __init__(self, owner: str, name: str, capacity: int, is_str: bool) -> None:
        super().__init__(owner, name)
        self.capacity = capacity
        self.is_str = is_str
        self.kind = f"{'str' if is_str else 'bytes'}[{capacity}]"
        self.size = align8(4 + capacity)

    def zero(self) -> str | bytes:
        return "" if self.is_str else b""

    def get(self, buf: memoryview, base: int) -> str | bytes:
        at = base + self.offset
        (n,) = _LEN.unpack_from(buf, at)
        raw = bytes(buf[at + 4 : at + 4 + n])
        return raw.decode() if self.is_str else raw

    def set(self, buf: memoryview, base: int, value: Any) -> None:
        want = str if self.is_str else bytes
        if not isinstance(value, want):
            raise TypeError(
                f"{self.where()} is {want.__name__}; cannot store {type(value).__name__} {value!r}"
            )
        raw = value.encode() if isinstance(value, str) else bytes(value)
        if len(raw) > self.capacity:
            raise ValueError(
                f"{self.where()} holds at most {self.capacity} bytes; "
                f"{value[:20]!r}... is {len(raw)} bytes"
                + (" in UTF-8" if self.is_str else "")
            )
        at = base + self.offset
        buf[at + 4 : at + 4 + len(raw)] = raw
        _LEN.pack_into(buf, at, len(raw))


class SharedFieldArray:
    """A live view of a fixed-size numeric array field: indexing reads and writes shared memory.

    Example::

        @shared_struct
        class Hist:
            bins: Annotated[list[int], 4]
        h = Hist()
        h.bins[2] += 1          # under h.lock if several processes do this
        h.bins.tolist()         # [0, 0, 1, 0]
    """

    def __init__(self, field: _ArrayField, buf: memoryview, base: int, root: Any = None) -> None:
        at = base + field.offset
        self._field = field
        self._root = root  # the struct's _Root: a view kept past close() must say so
        self._view = buf[at : at + 8 * field.length].cast(field.code)  # type: ignore[call-overload]

    def _check(self) -> None:
        if self._root is not None:
            self._root.check_open()

    def __len__(self) -> int:
        return len(self._view)

    def __getitem__(self, index: int | slice) -> Any:
        self._check()
        if isinstance(index, slice):
            return self._view[index].tolist()
        return self._view[index]

    def __setitem__(self, index: int | slice, value: Any) -> None:
        self._check()
        if isinstance(index, slice):
            items = [self._field.item(v) for v in value]
            target = range(len(self._view))[index]
            if len(items) != len(target):
                raise ValueError(
                    f"{self._field.where()}: cannot assign {len(items)} items to a slice "
                    f"of {len(target)} (the array's length is fixed)"
                )
            packed = struct.pack(f"{len(items)}{self._field.code}", *items)
            self._view[index] = memoryview(packed).cast(self._field.code)  # type: ignore[call-overload]
            return
        self._view[index] = self._field.item(value)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.tolist())

    def tolist(self) -> list[Any]:
        self._check()
        return list(self._view.tolist())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SharedFieldArray):
            return self.tolist() == other.tolist()
        if isinstance(other, (list, tuple)):
            return self.tolist() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self.tolist())


class _ArrayField(_Field):
    torn = True

    def __init__(self, owner: str, name: str, item_type: type, length: int) -> None:
        super().__init__(owner, name)
        self.item_type = item_type
        self.length = length
        self.code = "q" if item_type is int else "d"
        self.kind = f"{item_type.__name__}[{length}]"
        self.size = 8 * length
        self._scalar: _IntField | _FloatField = (
            _IntField(owner, name) if item_type is int else _FloatField(owner, name)
        )

    def item(self, value: Any) -> Any:
        return self._scalar.check(value)

    def zero(self) -> list[Any]:
        return [self.item_type()] * self.length

    def get(self, buf: memoryview, base: int) -> SharedFieldArray:
        return SharedFieldArray(self, buf, base)

    def prepare(self, value: Any) -> Any:
        # An iterator would be used up by the scratch write.
        if isinstance(value, (list, tuple)):
            return value
        try:
            return list(value)
        except TypeError:
            return value  # set() says what is wrong with it

    def set(self, buf: memoryview, base: int, value: Any) -> None:
        try:
            items = list(value)
        except TypeError:
            raise TypeError(
                f"{self.where()} is {self.kind}; cannot store {type(value).__name__} {value!r}"
            ) from None
        if len(items) != self.length:
            raise ValueError(f"{self.where()} has {self.length} items; got {len(items)}")
        checked = [self.item(v) for v in items]
        at = base + self.offset
        struct.pack_into(f"{self.length}{self.code}", buf, at, *checked)


class _NestedField(_Field):
    torn = True

    def __init__(self, owner: str, name: str, cls: type) -> None:
        super().__init__(owner, name)
        self.cls = cls
        self.layout: Layout = cls.__conveyor_layout__  # type: ignore[attr-defined]
        self.kind = cls.__name__
        self.size = self.layout.size

    def zero(self) -> dict[str, Any]:
        values = {f.name: f.zero() for f in self.layout.fields}
        values.update(self.layout.defaults)
        return values

    def get(self, buf: memoryview, base: int) -> Any:
        raise AssertionError("nested fields are read through the descriptor")

    def prepare(self, value: Any) -> Any:
        # One snapshot of a struct instance, so both writes store the same values.
        return value.asdict() if isinstance(value, self.cls) else value  # type: ignore[attr-defined]

    def set(self, buf: memoryview, base: int, value: Any) -> None:
        if isinstance(value, self.cls):
            values = value.asdict()  # type: ignore[attr-defined]
        elif isinstance(value, dict):
            values = value
        else:
            raise TypeError(
                f"{self.where()} is a {self.cls.__name__}; cannot store "
                f"{type(value).__name__} {value!r}"
            )
        self.layout.write(buf, base + self.offset, values)


class Layout:
    """Field offsets of a shared struct class."""

    def __init__(self, cls_name: str, fields: list[_Field], defaults: dict[str, Any]) -> None:
        self.cls_name = cls_name
        self.fields = fields
        self.by_name = {f.name: f for f in fields}
        self.defaults = defaults
        offset = 0
        for f in fields:
            f.offset = offset
            offset += align8(f.size)
        self.size = max(offset, 8)
        self.signature = tuple((f.name, f.kind) for f in fields)
        self.numeric = {f.name: f for f in fields if isinstance(f, (_IntField, _FloatField))}

    def write(self, buf: memoryview, base: int, values: dict[str, Any]) -> None:
        """Write ``values`` (field name -> value): all of them, or, if one is bad, none.

        Every value is first written to a scratch copy of the layout, where a bad one
        raises before shared memory is touched (``update(n=99, x="bad")`` must not leave
        ``n`` at 99).
        """
        pairs = []
        for name, value in values.items():
            field = self.by_name.get(name)
            if field is None:
                raise TypeError(
                    f"{self.cls_name} has no field {name!r}; its fields are "
                    f"{', '.join(self.by_name)}"
                )
            pairs.append((field, field.prepare(value)))
        scratch = memoryview(bytearray(self.size))
        try:
            for field, value in pairs:
                field.set(scratch, 0, value)
        finally:
            scratch.release()
        for field, value in pairs:
            field.set(buf, base, value)


def _make_field(owner: str, name: str, hint: Any) -> _Field:
    if hint is int:
        return _IntField(owner, name)
    if hint is float:
        return _FloatField(owner, name)
    if hint is bool:
        return _BoolField(owner, name)
    if isinstance(hint, type) and hasattr(hint, "__conveyor_layout__"):
        return _NestedField(owner, name, hint)
    if typing.get_origin(hint) is typing.Annotated:
        base, *meta = typing.get_args(hint)
        sizes = [m for m in meta if isinstance(m, int) and not isinstance(m, bool)]
        if sizes and sizes[0] > 0:
            if base in (str, bytes):
                return _TextField(owner, name, sizes[0], base is str)
            if typing.get_origin(base) is list and typing.get_args(base) in ((int,), (float,)):
                return _ArrayField(owner, name, typing.get_args(base)[0], sizes[0])
    raise TypeError(
        f"field {owner}.{name}: cannot store {hint!r} in shared memory. Use int, float, "
        "bool, Annotated[str, max_bytes], Annotated[bytes, max_bytes], "
        "Annotated[list[int], length], Annotated[list[float], length] or another "
        "@shared_struct class"
    )
