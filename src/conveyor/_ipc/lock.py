"""What every shared object stands on: owned segments, the segment lock, lazy numpy.

Ownership
---------
The process that creates a shared object (struct, value, array, dict, list) owns its
segment and is the only one that unlinks it: on ``close()``, at the end of its ``with``
block, when the object is garbage-collected, at interpreter exit (also after an exception
or Ctrl-C), or, after SIGKILL or SIGTERM, by the reaper its process family started or
the next run's sweep, once no live process maps it any more (see ``_ipc.sweep``). Every
other process gets a pickled handle and attaches; it never unlinks, and it bypasses the
resource tracker (which before Python 3.13 would unlink the segment when the *attaching*
process exits).
A forked child inherits owner objects but is disowned at fork, so it never unlinks either.

Consequence: create shared objects in the process that outlives their use (usually the
parent). One created inside a pool task is freed when the task drops it, and the handle
returned to the parent then names a segment that no longer exists.

The lock
--------
Shared objects travel to processes that are already running (a pool worker receives one
through a pipe), so their lock cannot be a ``multiprocessing.Lock``: those can only be
inherited when a process starts. The lock must be reachable from the segment's name alone.

We use a Linux *open file description* (OFD) byte-range lock (``F_OFD_SETLKW``) on the
segment's file in ``/dev/shm``. Why this one:

* the kernel releases it when the holder dies, even by SIGKILL, so a crashed worker never
  leaves a lock held forever (a lock word in shared memory would, and a semaphore too);
* a blocked acquire sleeps in the kernel, woken on release: no spinning, no polling;
* unlike classic ``lockf``/``F_SETLK`` locks, an OFD lock is not dropped when the process
  closes some *other* descriptor of the same file, and it belongs to one open descriptor,
  so two objects in one process over the same segment exclude each other.

An OFD lock does not exclude threads that share the descriptor, so a per-object
``threading.RLock``-like owner record sits in front of it; the lock is reentrant within a
thread (``with s.lock: s.add("n", 1)`` must not deadlock). After ``fork`` the child closes
the inherited descriptor (it shares the parent's lock state) and opens its own.

An uncontended acquire and release costs two system calls (about 1 µs together).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import threading
import time
import weakref
from types import ModuleType
from typing import Any

from conveyor._ipc import forks
from conveyor._ipc.segment import SHM_DIR, Segment
from conveyor.errors import SharedObjectClosedError

# struct flock on Linux (x86-64 and aarch64): short l_type, short l_whence, off_t l_start,
# off_t l_len, pid_t l_pid, padding. l_pid must be 0 for OFD locks.
_FLOCK = struct.Struct("hhqqi4x")

_fcntl = fcntl.fcntl
_OFD_SETLKW = fcntl.F_OFD_SETLKW
_OFD_SETLK = fcntl.F_OFD_SETLK
_get_ident = threading.get_ident

class SegmentLock:
    """A reentrant, process- and thread-safe lock bound to a shared-memory segment.

    Any process that knows the segment's name can use it; the kernel releases it if its
    holder dies. ``offset`` picks a byte of the segment's file, so one segment can carry
    several independent locks.

    Example::

        with shared.lock:          # blocks other processes and threads
            shared.a += 1
            shared.b -= 1
    """

    def __init__(self, segment_name: str, offset: int = 0) -> None:
        self.segment_name = segment_name
        self.offset = offset
        self._lock_args = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0)
        self._unlock_args = _FLOCK.pack(fcntl.F_UNLCK, os.SEEK_SET, offset, 1, 0)
        self._fd = -1
        self._closed_reason = f"the lock of segment {segment_name!r} was closed in this process"
        self._open()
        self._thread_lock = threading.Lock()
        self._owner: int | None = None
        self._depth = 0
        forks.register(self, SegmentLock._after_fork)
        self._finalizer = weakref.finalize(self, _close_fd, self._fd)

    def _open(self) -> None:
        self._fd = os.open(SHM_DIR / self.segment_name, os.O_RDWR | os.O_CLOEXEC)

    def _after_fork(self) -> None:
        # The inherited descriptor shares the parent's open file description, and with it
        # the parent's lock; a fresh one makes this child a separate lock holder.
        self._finalizer.detach()
        _close_fd(self._fd)
        self._thread_lock = threading.Lock()
        self._owner = None
        self._depth = 0
        try:
            self._open()
        except FileNotFoundError:
            self._fd = -1  # the owner already unlinked it; using the lock will say so
        self._finalizer = weakref.finalize(self, _close_fd, self._fd)

    def acquire(self, blocking: bool = True, timeout: float | None = -1) -> bool:
        """Acquire; like :meth:`threading.RLock.acquire`. Returns False on timeout."""
        me = _get_ident()
        if self._owner == me:
            self._depth += 1
            return True
        if self._fd < 0:
            raise SharedObjectClosedError(self._closed_reason)
        if blocking and (timeout is None or timeout < 0):
            self._thread_lock.acquire()
            try:
                # Sleeps in the kernel; Ctrl-C interrupts it (EINTR, then the handler).
                _fcntl(self._fd, _OFD_SETLKW, self._lock_args)
            except BaseException:
                self._thread_lock.release()
                raise
            self._owner = me
            self._depth = 1
            return True
        deadline = time.monotonic() + (max(0.0, timeout) if blocking and timeout else 0.0)
        if not self._thread_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return False
        try:
            got = self._try_until(deadline)
        except BaseException:
            self._thread_lock.release()
            raise
        if not got:
            self._thread_lock.release()
            return False
        self._owner = me
        self._depth = 1
        return True

    def _try_until(self, deadline: float) -> bool:
        # The kernel has no timed variant of F_OFD_SETLKW; poll with a growing pause.
        pause = 0.0001
        while True:
            try:
                _fcntl(self._fd, _OFD_SETLK, self._lock_args)
                return True
            except (BlockingIOError, PermissionError):
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.005)

    def release(self) -> None:
        """Release one level of ownership; raises RuntimeError if not held by this thread."""
        if self._owner != _get_ident():
            raise RuntimeError("cannot release a shared lock this thread does not hold")
        self._depth -= 1
        if self._depth:
            return
        self._owner = None
        try:
            _fcntl(self._fd, _OFD_SETLK, self._unlock_args)
        finally:
            self._thread_lock.release()

    def locked_by_me(self) -> bool:
        """Whether the calling thread holds this lock."""
        return self._owner == threading.get_ident()

    def close(self, reason: str | None = None) -> None:
        """Close the descriptor; later acquires raise ``SharedObjectClosedError(reason)``."""
        self._finalizer()
        self._fd = -1
        if reason:
            self._closed_reason = reason

    def __enter__(self) -> SegmentLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def locked(self) -> bool:
        """Whether some thread of this process holds the lock (as ``threading.Lock``)."""
        return self._owner is not None

    def __reduce__(self) -> tuple[Any, ...]:
        return (SegmentLock, (self.segment_name, self.offset))

    def __repr__(self) -> str:
        state = "held" if self._owner is not None else "free here"
        return f"<SegmentLock {self.segment_name}@{self.offset} {state}>"


def closed_error(what: str) -> SharedObjectClosedError:
    """The error for any use of a shared object after ``close()`` in this process."""
    return SharedObjectClosedError(
        f"{what} was closed in this process (close() or the end of its with block) "
        "and cannot be used any more; keep it open while you use it"
    )


def _close_fd(fd: int) -> None:
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)


# Linux 5.14+: fault in every page of a mapping for writing, in one call. Not exposed by
# the mmap module before Python 3.13 (as mmap.MADV_POPULATE_WRITE), hence the number.
_MADV_POPULATE_WRITE = 23


def populate(seg: Segment) -> None:
    """Pre-fault a segment that is about to be written in full.

    Filling 1 GB of fresh shared memory page by page costs a fault per 4 KiB page; asking
    the kernel for all of them at once cut that by about 40% on our test machine. Reaches
    into Segment's private mmap (the one place we do); on an older kernel it does nothing.
    """
    mm = getattr(seg, "_mmap", None)
    if mm is not None and seg.size >= 1 << 20:
        with contextlib.suppress(OSError, ValueError):
            mm.madvise(_MADV_POPULATE_WRITE)


def import_numpy() -> ModuleType:
    """numpy, imported on first use; a clear ImportError naming the extra when missing."""
    try:
        import numpy
    except ImportError as exc:
        raise ImportError(
            "this feature needs numpy; install it with: pip install conveyor[numpy]"
        ) from exc
    return numpy
