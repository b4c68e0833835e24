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
import typing
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, TypeVar

from conveyor._ipc.lock import SegmentLock, closed_error
from conveyor._ipc.segment import Segment
from conveyor._shared.fields import (
    RESERVED,
    Layout,
    SharedFieldArray,
    _ArrayField,
    _Field,
    _FloatField,
    _IntField,
    _make_field,
    _NestedField,
    _TextField,
)

T = TypeVar("T")


class _Descriptor:
    __slots__ = ("field",)

    def __init__(self, field: _Field) -> None:
        self.field = field

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        try:
            return self.field.get(obj._cv_buf, obj._cv_base)
        except ValueError:  # a released buffer: say why (a try costs nothing until it raises)
            obj._cv_root.check_open()
            raise

    def __set__(self, obj: Any, value: Any) -> None:
        try:
            self.field.set(obj._cv_buf, obj._cv_base, value)
        except (ValueError, TypeError):
            obj._cv_root.check_open()
            raise


class _LockedDescriptor(_Descriptor):
    __slots__ = ()

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        with obj._cv_root.lock:
            return self.field.get(obj._cv_buf, obj._cv_base)


class _ArrayDescriptor(_Descriptor):
    __slots__ = ()

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        obj._cv_root.check_open()
        f = self.field
        assert isinstance(f, _ArrayField)
        return SharedFieldArray(f, obj._cv_buf, obj._cv_base, obj._cv_root)


class _NestedDescriptor(_Descriptor):
    __slots__ = ()

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        f = self.field
        assert isinstance(f, _NestedField)
        obj._cv_root.check_open()
        return _view(f.cls, obj._cv_root, obj._cv_base + f.offset)


class _Root:
    """The segment and lock behind one struct instance and its nested views."""

    def __init__(self, seg: Segment, cls_name: str) -> None:
        self.seg = seg
        self.lock = SegmentLock(seg.name)
        self.what = f"the shared struct {cls_name} ({seg.name})"

    def check_open(self) -> None:
        if self.seg.closed:
            raise closed_error(self.what)

    def close(self) -> None:
        self.lock.close(str(closed_error(self.what)))
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
    return _view(cls, _Root(Segment.attach(name), cls.__name__), base)


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
        elif isinstance(field, _ArrayField):
            desc = _ArrayDescriptor(field)
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
    seg = Segment.create(layout.size, "struct", sweep=True)
    root = _Root(seg, layout.cls_name)
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
    try:
        if field.torn:
            with self._cv_root.lock:
                field.set(self._cv_buf, self._cv_base, value)
        else:
            field.set(self._cv_buf, self._cv_base, value)
    except (ValueError, TypeError):
        self._cv_root.check_open()
        raise


def _lock(self: Any) -> SegmentLock:
    return self._cv_root.lock  # type: ignore[no-any-return]


def _add(self: Any, field_name: str, delta: float = 1) -> Any:
    """Atomically add ``delta`` to a numeric field; returns the new value."""
    field = type(self).__conveyor_layout__.numeric.get(field_name)
    if field is None:
        _numeric(self, field_name)  # raises the right error
    if type(delta) is not int:
        _check_delta(self, field, delta)
    buf, base, lock = self._cv_buf, self._cv_base, self._cv_root.lock
    lock.acquire()
    try:
        new = field.get(buf, base) + delta
        field.set(buf, base, new)
    finally:
        lock.release()
    return new


def _check_delta(self: Any, field: _IntField | _FloatField, delta: Any) -> None:
    """Refuse a delta the field cannot take; for a float added to an int field, name the
    sum, which is what could not be stored."""
    if isinstance(field, _FloatField) and type(delta) is float:
        return
    call = f"add({field.name!r}, {delta!r})"
    if isinstance(delta, bool) or not isinstance(delta, numbers.Real):
        raise TypeError(
            f"{call}: the delta must be a number for {field.where()}, not "
            f"{type(delta).__name__}"
        )
    if isinstance(field, _IntField) and not isinstance(delta, numbers.Integral):
        try:
            current = field.get(self._cv_buf, self._cv_base)
        except ValueError:
            self._cv_root.check_open()
            raise
        raise TypeError(
            f"{call}: {field.where()} is an int, and {current!r} + {delta!r} = "
            f"{current + delta!r} is a {type(current + delta).__name__}, which it cannot "
            "hold; pass an int delta (or declare the field as float)"
        )


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
