"""``SharedArray``: a numpy array whose data lives in a shared-memory segment.

Pickling sends only the segment name, shape, dtype and order (a few hundred bytes); the
receiver maps the same memory, so a 1 GB array reaches a worker in the time it takes to
map it, and writes made there are seen by everyone. numpy is imported on first use.
"""

from __future__ import annotations

import math
import operator
import sys
from collections.abc import Iterator
from typing import Any

from conveyor._ipc.lock import SegmentLock, import_numpy, populate
from conveyor._ipc.segment import Segment


class SharedArray:
    """A numpy array in shared memory; sending it to another process sends a handle.

    Index it like an array (``a[i, j] = 1``, ``a[:, 0]``), use ``a.array`` or
    ``numpy.asarray(a)`` for the ndarray itself (a view of shared memory, no copy); other
    attributes (``shape``, ``sum()``, ...) are the ndarray's. ``a.lock`` guards compound
    updates. The creating process owns the memory: ``close()``, the end of a ``with`` block
    or process exit frees it. An ndarray obtained from it stays valid after ``close()``
    (the mapping lives until the last view goes), but its data is no longer shared by name.

    Example::

        grid = conveyor.SharedArray((1000, 1000), "float64")   # zero-filled
        with concurrent.futures.ProcessPoolExecutor() as ex:
            ex.submit(fill_row, grid, 3).result()              # the worker writes grid[3]
        print(grid[3].sum())
        grid.close()
    """

    def __init__(self, shape: int | tuple[int, ...], dtype: Any = "float64", *, order: str = "C") -> None:
        np = import_numpy()
        shape_t = _check_shape(shape)
        dt = np.dtype(dtype)
        if dt.hasobject:
            raise TypeError(
                f"SharedArray cannot hold dtype {dt} (Python objects live in one process); "
                "use a numeric or fixed-size dtype"
            )
        if order not in ("C", "F"):
            raise ValueError(f"order must be 'C' or 'F'; got {order!r}")
        nbytes = math.prod(shape_t) * dt.itemsize
        if nbytes > sys.maxsize:
            raise ValueError(
                f"SharedArray of shape {shape_t} and dtype {dt} would need {nbytes} bytes "
                f"({nbytes / 2**30:.3g} GiB); the limit is {sys.maxsize} bytes, the largest "
                "mapping a process can ask for (in practice, the free space of /dev/shm)"
            )
        self._setup(Segment.create(nbytes, "array", sweep=True), shape_t, dt, order)

    def _setup(self, seg: Segment, shape: tuple[int, ...], dtype: Any, order: str) -> None:
        np = import_numpy()
        self._seg = seg
        self._shape = shape
        self._dtype = np.dtype(dtype)
        self._order = order
        nbytes = math.prod(shape) * self._dtype.itemsize
        # frombuffer on a slice, not seg.buf itself: numpy then holds its own export, so
        # the segment can release its view on close while the mapping stays alive for as
        # long as any array uses it (np.ndarray(buffer=...) keeps no export: a view used
        # after close would crash).
        flat = np.frombuffer(seg.buf[:nbytes], self._dtype)
        self._array = flat.reshape(shape, order=order)
        self._lock: SegmentLock | None = None

    @classmethod
    def from_array(cls, a: Any) -> SharedArray:
        """A new SharedArray holding a copy of ``a`` (anything ``numpy.asarray`` accepts).

        Example::

            shared = SharedArray.from_array(np.arange(10.0))
        """
        np = import_numpy()
        src = np.asarray(a)
        order = "F" if src.flags.f_contiguous and not src.flags.c_contiguous else "C"
        out = cls(src.shape, src.dtype, order=order)
        populate(out._seg)
        out._array[...] = src
        return out

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _attach_array,
            (self._seg.name, self._shape, self._dtype.str, self._order),
        )

    @property
    def array(self) -> Any:
        """The numpy array (a view of the shared memory)."""
        return self._array

    @property
    def lock(self) -> SegmentLock:
        """A reentrant, process-safe lock for compound updates (made on first use)."""
        if self._lock is None:
            self._lock = SegmentLock(self._seg.name)
        return self._lock

    @property
    def name(self) -> str:
        """The shared-memory segment's name."""
        return self._seg.name

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        if dtype is None or dtype == self._array.dtype:
            return self._array
        return self._array.astype(dtype)

    def __getitem__(self, index: Any) -> Any:
        return self._array[index]

    def __setitem__(self, index: Any, value: Any) -> None:
        self._array[index] = value

    def __len__(self) -> int:
        return len(self._array)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._array)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names SharedArray itself lacks: shape, dtype, sum, ...
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._array, name)

    def close(self) -> None:
        """Unmap; in the creating process also free the shared memory. Safe to call twice."""
        if self._lock is not None:
            self._lock.close()
        self._seg.close()

    @property
    def closed(self) -> bool:
        return self._seg.closed

    def __enter__(self) -> SharedArray:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = " closed" if self.closed else ""
        return f"<SharedArray shape={self._shape} dtype={self._dtype}{state} {self._seg.name}>"


def _check_shape(shape: Any) -> tuple[int, ...]:
    """``shape`` as a tuple of ints >= 0, or a TypeError/ValueError naming the bad part."""
    dims = (shape,) if not isinstance(shape, (tuple, list)) else tuple(shape)
    out = []
    for n in dims:
        try:
            if isinstance(n, bool):
                raise TypeError
            out.append(operator.index(n))
        except TypeError:
            raise TypeError(
                f"SharedArray shape must be an int or a tuple of ints; got {shape!r} "
                f"({type(n).__name__} {n!r} in it)"
            ) from None
    if any(n < 0 for n in out):
        raise ValueError(f"SharedArray shape must not be negative; got {tuple(out)}")
    return tuple(out)


def _attach_array(name: str, shape: tuple[int, ...], dtype: str, order: str) -> SharedArray:
    # A module-level function, so pickle and cloudpickle both send it by reference.
    obj = SharedArray.__new__(SharedArray)
    obj._setup(Segment.attach(name), shape, dtype, order)
    return obj
