"""Turning channel items into records and back; large buffers travel out of band.

Small items are one ``pickle.dumps(item, PROTOCOL)``: the record *is* the pickle. Lambdas and
closures, which plain pickle refuses, fall back to cloudpickle (loaded on first need).

Large buffers (a contiguous numpy array, ``bytes`` or ``bytearray`` of at least
:data:`THRESHOLD` bytes, also inside other objects) would cost two copies through the
ring and could not exceed its size. Instead each goes into a block of its own: pickle
protocol 5 hands us the buffer (numpy's ``__reduce_ex__`` does so by itself; large
``bytes``/``bytearray``, also inside lists, tuples and dicts, through a stand-in), we
``pwrite`` it into a fresh :class:`~conveyor._shm.Segment` (one copy, done by the
kernel, about twice as fast here as faulting in a fresh mapping and copying into it),
and the record carries the small pickle plus the blocks' names.

Ownership travels with the record. The sender creates the block, named after the
channel's creator (``conveyor_<creator pid>_<start>_oob<tag>_<token>``), and after
publishing disowns it: the sender may exit at once, and the item still arrives (the
stale-segment sweep keeps a block while its channel's ring is alive; see ``_shm_sweep``).
The receiver maps the block and unlinks its name at once: the memory lives exactly as
long as the receiver's mapping, i.e. until the numpy array built on it (zero copies on
this side) is garbage. ``bytes`` and ``bytearray`` must own their memory, so the
receiver copies those once and the block goes immediately. Blocks nobody received
(the channel was dropped with items in it, or a receiver died between taking the
record and mapping the block) carry the channel's tag in their name and are swept
when the channel's creator releases the ring, or, if it was killed, when the ring is
swept.
"""

from __future__ import annotations

import errno
import os
import pickle
from contextlib import suppress
from typing import Any

from conveyor._ipc.segment import SHM_DIR, Segment, space_error
from conveyor._ipc.serialize import PROTOCOL, dumps_by_value
from conveyor.errors import ChannelBroken, SerializationError, short_repr

THRESHOLD = 256 * 1024
OOB = 1  # record flag: the payload is (pickle, [(block name, size), ...])


class _Large(Exception):
    """Raised from the probe callback: this item needs the out-of-band path."""


def probe(buf: pickle.PickleBuffer) -> bool:
    if memoryview(buf).nbytes >= THRESHOLD:
        raise _Large
    return True  # small: keep it in band


def _is_large_bytes(obj: object) -> bool:
    t = type(obj)
    return (t is bytes or t is bytearray) and len(obj) >= THRESHOLD  # type: ignore[arg-type]


def _rebuild_bytes(is_bytes: bool, buf: memoryview) -> bytes | bytearray:
    return bytes(buf) if is_bytes else bytearray(buf)


class _LargeBytes:
    """Stands in for a large ``bytes``/``bytearray`` so that pickle hands us its buffer.

    (``Pickler.reducer_override`` would be the natural hook, but pickle never calls it
    for exact ``bytes``, ``list``, ``tuple`` or ``dict``.)
    """

    __slots__ = ("obj",)

    def __init__(self, obj: bytes | bytearray) -> None:
        self.obj = obj

    def __reduce_ex__(self, protocol: Any) -> Any:
        return _rebuild_bytes, (type(self.obj) is bytes, pickle.PickleBuffer(self.obj))


def _wrap_large_bytes(obj: Any, depth: int = 4) -> Any:
    """``obj`` with large bytes, also inside lists, tuples and dicts, wrapped."""
    if _is_large_bytes(obj):
        return _LargeBytes(obj)
    if depth:
        t = type(obj)
        if t is list or t is tuple:
            return t(_wrap_large_bytes(x, depth - 1) for x in obj)
        if t is dict:
            return {k: _wrap_large_bytes(v, depth - 1) for k, v in obj.items()}
    return obj


def encode(item: object, ring_name: str) -> tuple[bytes, int, list[Segment]]:
    """``item`` -> (record, flags, blocks) for the channel ``ring_name``.

    Raises :class:`SerializationError`.
    The caller publishes the record, then calls :func:`handed_over` on the blocks, or
    :func:`discard` if publishing failed.
    """
    if not _is_large_bytes(item):
        try:
            record = pickle.dumps(item, PROTOCOL, buffer_callback=probe)
        except _Large:
            pass
        except Exception as exc:
            return _cloudpickle(item, exc, None), 0, []
        else:
            if len(record) < THRESHOLD:
                return record, 0, []
            # Large in band: perhaps large bytes inside a list, tuple or dict.
    return _encode_large(item, ring_name)


def _encode_large(item: object, ring_name: str) -> tuple[bytes, int, list[Segment]]:
    views: list[memoryview] = []

    def keep(buf: pickle.PickleBuffer) -> bool:
        view = buf.raw()
        if view.nbytes < THRESHOLD:
            return True
        views.append(view)
        return False

    try:
        main = pickle.dumps(_wrap_large_bytes(item), PROTOCOL, buffer_callback=keep)
    except Exception as exc:
        views.clear()
        main = _cloudpickle(item, exc, keep)
    if not views:
        return main, 0, []
    # Named after the channel's creator, not the sender: the block lives as long as the
    # channel may deliver it, and a sweep by an older conveyor (which looks only at the
    # owner in the name) keeps it while the channel's creator runs.
    owner, _, tag = ring_name.rsplit("_", 2)
    blocks: list[Segment] = []
    try:
        for view in views:
            # Not reserved: pwrite fills every page and reports a full /dev/shm as an
            # error, and the receiver maps the block only once it is full.
            blocks.append(
                Segment.create(view.nbytes, f"oob{tag}", reserved=False, owner=owner)
            )
            _fill(blocks[-1].name, view)
    except BaseException:
        discard(blocks)
        raise
    record = pickle.dumps((main, [(b.name, b.size) for b in blocks]), PROTOCOL)
    return record, OOB, blocks


def _cloudpickle(item: object, first: Exception, keep: Any) -> bytes:
    try:
        return dumps_by_value(item, keep)
    except Exception as exc:
        raise SerializationError(
            f"cannot send {short_repr(item)} through the channel: it cannot be pickled "
            f"({type(first).__name__}: {first}); send plain data, or define functions and "
            "classes at module level",
            what="item",
        ) from exc


def _fill(name: str, view: memoryview) -> None:
    fd = os.open(SHM_DIR / name, os.O_RDWR)
    try:
        done = 0
        while done < view.nbytes:
            done += os.pwrite(fd, view[done:], done)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise space_error(view.nbytes, "a large channel item", pending=done) from None
        raise
    finally:
        os.close(fd)


def handed_over(blocks: list[Segment]) -> None:
    """The record is published: the receiver owns the blocks now (module docstring)."""
    for block in blocks:
        block.disown()
        block.close()


def discard(blocks: list[Segment]) -> None:
    """Publishing failed: unlink the blocks we still own."""
    for block in blocks:
        block.close()


def decode(record: bytes, flags: int) -> Any:
    """A record -> the item. Raises :class:`SerializationError` if it will not unpickle."""
    if flags & OOB:
        main, names = pickle.loads(record)
        buffers = _take_blocks(names)
    else:
        main, buffers = record, []
    try:
        return pickle.loads(main, buffers=buffers)
    except Exception as exc:
        raise unpickle_error(exc) from exc


def unpickle_error(exc: Exception) -> SerializationError:
    return SerializationError(
        f"an item received from the channel could not be unpickled "
        f"({type(exc).__name__}: {exc}); is the module defining it importable here?",
        what="item",
    )


def _take_blocks(names: list[tuple[str, int]]) -> list[memoryview]:
    views: list[memoryview] = []
    missing = []
    for name, size in names:
        try:
            block = Segment.attach(name)
        except FileNotFoundError:
            missing.append(name)
            continue
        # The record carried ownership here: drop the name now, the memory goes
        # when the last view of our mapping does.
        with suppress(FileNotFoundError):
            os.unlink(SHM_DIR / name)
        views.append(block.buf[:size])
    if missing:
        raise ChannelBroken(
            f"the shared-memory blocks {missing} of a large item are gone: the channel's "
            "creator released it while the item was in flight",
            "gone",
        )
    return views


def sweep_blocks(tag: str) -> None:
    """Unlink every block of the channel tagged ``tag`` still in /dev/shm: once its
    ring is gone, none of them can be received."""
    marker = f"_oob{tag}_"
    try:
        names = [p.name for p in SHM_DIR.iterdir() if marker in p.name]
    except OSError:
        return
    for name in names:
        with suppress(OSError):
            os.unlink(SHM_DIR / name)
