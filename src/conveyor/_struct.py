"""``@shared_struct``: classes declared like a dataclass whose instances live in shared memory.

A decorated class gets one data descriptor per annotated field. Reading or writing an
attribute unpacks or packs bytes at a fixed offset of the instance's segment, so every
process that holds the instance sees every write at once. Layout (8-byte aligned)::

    int    int64           float  float64         bool   1 byte
    Annotated[str, n]      uint32 length + n bytes of UTF-8
    Annotated[bytes, n]    uint32 length + n bytes
    Annotated[list[int], n] / Annotated[list[float], n]    n int64 / float64 items
    another shared struct  its own layout, inline

Reads and writes of an int, float or bool field are not locked: they are single aligned
8-byte accesses, which x86-64 and aarch64 perform atomically. Reading or writing a str or
bytes field, or assigning a whole array or nested struct, takes the instance's lock so no
process sees half a value. Compound updates (read, compute, write) need ``instance.lock``
(see :class:`conveyor._shared_common.SegmentLock`) or the atomic helpers.
Pickling sends a handle (class, segment name, offset) and re-attaches on the other side.
"""

from __future__ import annotations

import numbers
import operator
import struct
import typing
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, TypeVar

from conveyor._shared_common import SegmentLock, create_segment
from conveyor._shm import Segment

T = TypeVar("T")

_LEN = struct.Struct("I")

# Instance attributes and methods every shared struct has; a field may not shadow them.
RESERVED = frozenset(
    {"lock", "close", "closed", "add", "compare_and_set", "update", "asdict", "segment_name"}
)


def _align(n: int) -> int:
    return (n + 7) & ~7


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
        self.size = _align(4 + capacity)

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

    def __init__(self, field: _ArrayField, buf: memoryview, base: int) -> None:
        at = base + field.offset
        self._field = field
        self._view = buf[at : at + 8 * field.length].cast(field.code)  # type: ignore[call-overload]

    def __len__(self) -> int:
        return len(self._view)

    def __getitem__(self, index: int) -> Any:
        return self._view[index]

    def __setitem__(self, index: int, value: Any) -> None:
        self._view[index] = self._field.item(value)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._view.tolist())

    def tolist(self) -> list[Any]:
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
            offset += _align(f.size)
        self.size = max(offset, 8)
        self.signature = tuple((f.name, f.kind) for f in fields)
        self.numeric = {f.name: f for f in fields if isinstance(f, (_IntField, _FloatField))}

    def write(self, buf: memoryview, base: int, values: dict[str, Any]) -> None:
        for name, value in values.items():
            field = self.by_name.get(name)
            if field is None:
                raise TypeError(f"{self.cls_name} has no field {name!r}")
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


class _Descriptor:
    __slots__ = ("field",)

    def __init__(self, field: _Field) -> None:
        self.field = field

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        return self.field.get(obj._cv_buf, obj._cv_base)

    def __set__(self, obj: Any, value: Any) -> None:
        self.field.set(obj._cv_buf, obj._cv_base, value)


class _LockedDescriptor(_Descriptor):
    __slots__ = ()

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        with obj._cv_root.lock:
            return self.field.get(obj._cv_buf, obj._cv_base)


class _NestedDescriptor(_Descriptor):
    __slots__ = ()

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        f = self.field
        assert isinstance(f, _NestedField)
        return _view(f.cls, obj._cv_root, obj._cv_base + f.offset)


class _Root:
    """The segment and lock behind one struct instance and its nested views."""

    def __init__(self, seg: Segment) -> None:
        self.seg = seg
        self.lock = SegmentLock(seg.name)

    def close(self) -> None:
        self.lock.close()
        self.seg.close()


def _view(cls: type[T], root: _Root, base: int) -> T:
    obj = object.__new__(cls)
    d = obj.__dict__
    d["_cv_root"] = root
    d["_cv_buf"] = root.seg.buf
    d["_cv_base"] = base
    return obj


def _attach(cls: type[T], name: str, base: int, signature: tuple[Any, ...]) -> T:
    layout: Layout = cls.__conveyor_layout__  # type: ignore[attr-defined]
    if layout.signature != signature:
        raise TypeError(
            f"cannot attach {cls.__name__}: its fields differ between the sending and the "
            f"receiving process ({signature} vs {layout.signature})"
        )
    return _view(cls, _Root(Segment.attach(name)), base)


def shared_struct(cls: type[T]) -> type[T]:
    """Make ``cls``'s instances live in shared memory, visible to every process that has them.

    Fields are declared with annotations, like a dataclass; fields without a default start
    at zero (``0``, ``0.0``, ``False``, ``""``). Instances pickle to a small handle, so one
    passed to a pool task or a ``multiprocessing.Process`` is the same object there.

    Every instance has ``.lock`` (reentrant, process-safe; the kernel frees it if its holder
    dies), ``add(field, delta)``, ``compare_and_set(field, expected, new)``,
    ``update(**fields)`` and ``asdict()`` (each atomic), ``close()`` and ``with`` support.
    The creating process owns the memory: it is freed when that process closes the
    instance, leaves its ``with`` block or exits.

    Example::

        @conveyor.shared_struct
        class Stats:
            processed: int
            seconds: float
            last: Annotated[str, 32] = "none"

        stats = Stats()
        stats.add("processed", 1)             # atomic, from any process
        with stats.lock:                      # compound update
            stats.seconds += 0.5
            stats.last = "job 7"
    """
    if "__conveyor_layout__" in cls.__dict__:
        return cls  # a SharedStruct subclass, already built by __init_subclass__
    hints = typing.get_type_hints(cls, include_extras=True)
    fields: list[_Field] = []
    defaults: dict[str, Any] = {}
    for name, hint in hints.items():
        if typing.get_origin(hint) is typing.ClassVar or hint is typing.ClassVar:
            continue
        if name.startswith("_"):
            raise TypeError(f"field {cls.__name__}.{name}: shared fields cannot start with '_'")
        if name in RESERVED:
            raise TypeError(
                f"field {cls.__name__}.{name}: the name is taken by the shared struct API "
                f"({', '.join(sorted(RESERVED))}); rename the field"
            )
        field = _make_field(cls.__name__, name, hint)
        fields.append(field)
        if name in cls.__dict__:
            defaults[name] = cls.__dict__[name]
    layout = Layout(cls.__name__, fields, defaults)
    # Check the defaults now, so a bad one fails at class definition, not at first use.
    probe = memoryview(bytearray(layout.size))
    layout.write(probe, 0, defaults)
    probe.release()

    for field in fields:
        desc: _Descriptor
        if isinstance(field, _NestedField):
            desc = _NestedDescriptor(field)
        elif isinstance(field, _TextField):
            desc = _LockedDescriptor(field)
        else:
            desc = _Descriptor(field)
        setattr(cls, field.name, desc)
    cls.__conveyor_layout__ = layout  # type: ignore[attr-defined]
    if not issubclass(cls, SharedStruct):
        for attr, value in _METHODS.items():
            setattr(cls, attr, value)
    return cls


# ---- methods installed on every shared struct class --------------------------------------

def _init(self: Any, *args: Any, **kwargs: Any) -> None:
    layout: Layout = type(self).__conveyor_layout__
    if len(args) > len(layout.fields):
        raise TypeError(
            f"{layout.cls_name}() takes at most {len(layout.fields)} positional arguments "
            f"({len(args)} given)"
        )
    values = {f.name: f.zero() for f in layout.fields}
    values.update(layout.defaults)
    for field, value in zip(layout.fields, args, strict=False):
        if field.name in kwargs:
            raise TypeError(f"{layout.cls_name}() got two values for field {field.name!r}")
        values[field.name] = value
    values.update(kwargs)
    seg = create_segment(layout.size, "struct")
    root = _Root(seg)
    try:
        d = self.__dict__
        d["_cv_root"] = root
        d["_cv_buf"] = seg.buf
        d["_cv_base"] = 0
        layout.write(seg.buf, 0, values)
    except BaseException:
        root.close()
        raise


def _setattr(self: Any, name: str, value: Any) -> None:
    field = type(self).__conveyor_layout__.by_name.get(name)
    if field is None:
        raise AttributeError(
            f"{type(self).__name__} has no shared field {name!r}; declare it in the class "
            "body so every process sees it"
        )
    if field.torn:
        with self._cv_root.lock:
            field.set(self._cv_buf, self._cv_base, value)
    else:
        field.set(self._cv_buf, self._cv_base, value)


def _lock(self: Any) -> SegmentLock:
    return self._cv_root.lock  # type: ignore[no-any-return]


def _add(self: Any, field_name: str, delta: float = 1) -> Any:
    """Atomically add ``delta`` to a numeric field; returns the new value."""
    field = type(self).__conveyor_layout__.numeric.get(field_name)
    if field is None:
        _numeric(self, field_name)  # raises the right error
    buf, base, lock = self._cv_buf, self._cv_base, self._cv_root.lock
    lock.acquire()
    try:
        new = field.get(buf, base) + delta
        field.set(buf, base, new)
    finally:
        lock.release()
    return new


def _compare_and_set(self: Any, field_name: str, expected: Any, new: Any) -> bool:
    """Atomically set the field to ``new`` if it equals ``expected``; True if it did."""
    field = _field(self, field_name)
    if isinstance(field, (_NestedField, _ArrayField)):
        raise TypeError(f"compare_and_set works on single values; {field.where()} is {field.kind}")
    with self._cv_root.lock:
        if field.get(self._cv_buf, self._cv_base) != expected:
            return False
        field.set(self._cv_buf, self._cv_base, new)
        return True


def _update(self: Any, **values: Any) -> None:
    """Atomically write several fields."""
    layout: Layout = type(self).__conveyor_layout__
    with self._cv_root.lock:
        layout.write(self._cv_buf, self._cv_base, values)


def _asdict(self: Any) -> dict[str, Any]:
    """A consistent snapshot of every field (taken under the lock), as plain values."""
    with self._cv_root.lock:
        return _plain(self)


def _plain(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in type(obj).__conveyor_layout__.fields:
        value = getattr(obj, f.name)
        if isinstance(f, _NestedField):
            value = _plain(value)
        elif isinstance(value, SharedFieldArray):
            value = value.tolist()
        out[f.name] = value
    return out


def _field(self: Any, name: str) -> _Field:
    field = type(self).__conveyor_layout__.by_name.get(name)
    if field is None:
        raise AttributeError(f"{type(self).__name__} has no shared field {name!r}")
    return field  # type: ignore[no-any-return]


def _numeric(self: Any, name: str) -> _IntField | _FloatField:
    field = _field(self, name)
    if not isinstance(field, (_IntField, _FloatField)):
        raise TypeError(f"add() works on int and float fields; {field.where()} is {field.kind}")
    return field


def _repr(self: Any) -> str:
    if self._cv_root.seg.closed:
        return f"<{type(self).__name__} (closed)>"
    inner = ", ".join(f"{k}={v!r}" for k, v in _plain_repr(self))
    return f"{type(self).__name__}({inner})"


def _plain_repr(obj: Any) -> Iterator[tuple[str, Any]]:
    for f in type(obj).__conveyor_layout__.fields:
        yield f.name, getattr(obj, f.name)


def _eq(self: Any, other: object) -> Any:
    if type(other) is not type(self):
        return NotImplemented
    return _plain(self) == _plain(other)


def _reduce(self: Any) -> tuple[Any, ...]:
    layout: Layout = type(self).__conveyor_layout__
    return (_attach, (type(self), self._cv_root.seg.name, self._cv_base, layout.signature))


def _close(self: Any) -> None:
    """Unmap; if this process created the instance, also free the shared memory."""
    self._cv_root.close()


def _closed(self: Any) -> bool:
    return bool(self._cv_root.seg.closed)


def _segment_name(self: Any) -> str:
    return str(self._cv_root.seg.name)


def _enter(self: T) -> T:
    return self


def _exit(self: Any, *exc: object) -> None:
    self.close()


_METHODS: dict[str, Callable[..., Any] | property | None] = {
    "__init__": _init,
    "__setattr__": _setattr,
    "__repr__": _repr,
    "__eq__": _eq,
    "__hash__": None,
    "__reduce__": _reduce,
    "__enter__": _enter,
    "__exit__": _exit,
    "lock": property(_lock, doc="The instance's reentrant, process-safe lock."),
    "add": _add,
    "compare_and_set": _compare_and_set,
    "update": _update,
    "asdict": _asdict,
    "close": _close,
    "closed": property(_closed),
    "segment_name": property(_segment_name),
}


class SharedStruct:
    """Base class: the same as ``@shared_struct``, and type checkers see the struct API.

    Subclasses are built when they are defined; their instances have ``lock``, ``add``,
    ``compare_and_set``, ``update``, ``asdict``, ``close`` and ``with`` support.

    Example::

        class Stats(conveyor.SharedStruct):
            processed: int
            seconds: float

        with Stats() as stats:
            stats.add("processed", 1)
    """

    __conveyor_layout__: ClassVar[Layout]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        shared_struct(cls)

    __init__ = _init
    __setattr__ = _setattr
    __repr__ = _repr
    __eq__ = _eq
    __hash__ = None  # type: ignore[assignment]
    __reduce__ = _reduce
    lock = property(_lock, doc="The instance's reentrant, process-safe lock.")
    closed = property(_closed)
    segment_name = property(_segment_name)
    add = _add
    compare_and_set = _compare_and_set
    update = _update
    asdict = _asdict
    close = _close

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
