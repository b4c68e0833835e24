"""Shared-memory segments: names, ownership, attaching, reserving space.

Every segment conveyor makes is named ``conveyor_<pid>_<starttime>_<kind>_<token>``: the
pid and the kernel start time of the process that owns it. A segment whose owner is gone
(the pid is dead, or now belongs to a process that started at another time) and that no
live process can reach any more is stale; ``_shm_sweep`` removes those.

Ownership: exactly one :class:`Segment` per name is the owner (``create=True``); it is
the only one that unlinks. Other processes :meth:`Segment.attach` and never unlink.

An owner that cannot run its cleanup (SIGKILL, or SIGTERM's default action) is covered by
``_shm_sweep``: the reaper process its family started sweeps when the family is gone,
and the next run's :func:`~conveyor._shm_sweep.sweep_stale` catches the rest.

multiprocessing's ``SharedMemory`` and resource tracker are bypassed on purpose: before
Python 3.13 attaching registered the segment with the tracker, which then unlinked it
when the *attaching* process exited (bpo-39959, gh-82300); and the tracker warns about
"leaked" segments that conveyor frees itself (see ``_shm_sweep``).
"""

from __future__ import annotations

import errno
import mmap
import os
import secrets
import stat
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

from conveyor._ipc import forks
from conveyor._ipc.identity import start_time as _start_time

if TYPE_CHECKING:  # imported when needed: the reaper process imports this module
    from conveyor.errors import SharedMemoryFullError

SHM_DIR = Path("/dev/shm")
PREFIX = "conveyor_"
_KINDS = {"chan": "channel", "seg": "segment", "teamstate": "team state"}


def align8(n: int) -> int:
    """``n`` rounded up to a multiple of 8: every word conveyor puts in shared memory sits
    on an 8-byte boundary, so a single aligned store writes it whole (see ``_channel.ring``)."""
    return (n + 7) & ~7


def new_name(kind: str = "seg", owner: str | None = None) -> str:
    """A fresh segment name that records this process (or ``owner``) as its owner.

    ``owner``: the ``conveyor_<pid>_<start>`` part of another segment's name, for a
    segment whose life is tied to that one's owner rather than to its maker's.
    """
    if owner is None:
        pid = os.getpid()
        owner = f"{PREFIX}{pid}_{_start_time(pid)}"
    return f"{owner}_{kind}_{secrets.token_hex(4)}"


def owner_alive(name: str) -> bool:
    """Whether the process that owns segment ``name`` still runs."""
    try:
        _, pid, started, _rest = name.split("_", 3)
        return _start_time(int(pid)) == started
    except ValueError:
        return True  # not one of ours in the expected form: leave it alone


def _size_text(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n} bytes ({n / scale:.1f} {unit})"
    return f"{n} bytes"


def space_error(requested: int, what: str, pending: int = 0) -> SharedMemoryFullError:
    """The error for a segment that does not fit: the size asked, the space free, the mount.

    ``pending``: bytes of the failed attempt still held, about to be freed (not "used").
    """
    from conveyor.errors import SharedMemoryFullError
    try:
        st = os.statvfs(SHM_DIR)
        free = st.f_bavail * st.f_frsize + pending
        total = st.f_blocks * st.f_frsize
    except OSError:
        free = total = 0
    return SharedMemoryFullError(
        f"not enough shared memory for {what}: asked for {_size_text(requested)}, but "
        f"{SHM_DIR} has {_size_text(free)} free (of {_size_text(total)}); free some, or "
        f"enlarge {SHM_DIR} (in Docker: --shm-size)",
        requested,
        free,
        str(SHM_DIR),
    )


def reserve(fd: int, offset: int, length: int, what: str) -> None:
    """Make the kernel set aside the pages of ``[offset, offset + length)`` now.

    A tmpfs file is sparse: pages are found on first touch, and when /dev/shm is full
    that touch, a plain store into the mapping, gets SIGBUS and kills the process with no
    traceback. Reserving them when the segment is created or grown turns that into an
    error here, before anything is written. Raises :class:`SharedMemoryFullError`.
    """
    if length <= 0:
        return
    try:
        os.posix_fallocate(fd, offset, length)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.ENOMEM):
            raise space_error(length, what) from None
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        # A file system that cannot reserve: pages come on first touch, as before.


def _unlink_owned(name: str, mm: mmap.mmap | None) -> None:
    # Runs from a finalizer: must not raise, and must not depend on the Segment object.
    if mm is not None:
        try:
            mm.close()
        except BufferError:
            pass  # views still exported; the mapping goes when they do
    try:
        os.unlink(SHM_DIR / name)
    except FileNotFoundError:
        pass


class Segment:
    """A named block of shared memory, mapped into this process.

    ``Segment.create(size)`` makes and owns one; ``Segment.attach(name)`` maps an
    existing one. ``close()`` unmaps; the owner's ``close()`` also unlinks the name.
    The owner's segment is unlinked at the latest when the owner object is collected or
    the interpreter exits.

    Example::

        seg = Segment.create(1024)
        other = Segment.attach(seg.name)   # in any process
        other.buf[0] = 7
        assert seg.buf[0] == 7
        other.close(); seg.close()
    """

    def __init__(self, name: str, mm: mmap.mmap, size: int, owner: bool) -> None:
        self.name = name
        self.size = size
        self.owner = owner
        self._mmap: mmap.mmap | None = mm
        self.buf = memoryview(mm)
        self._finalizer = (
            weakref.finalize(self, _unlink_owned, name, None) if owner else None
        )
        if owner:
            # A forked child holds a copy of this owner object; without this, its
            # garbage collection would unlink the parent's segment (the standard
            # SharedMemory has the same trap under fork).
            forks.register(self, Segment.disown)

    @classmethod
    def create(
        cls, size: int, kind: str = "seg", *, reserved: bool = True, owner: str | None = None,
        sweep: bool = False,
    ) -> Segment:
        """A new segment of ``size`` bytes, owned by this process: the one way to make one.

        Forked children disown it (see ``forks``). ``sweep``: the first such call in a
        process first removes what killed runs left (:func:`~conveyor._ipc.sweep.sweep_stale`);
        shared objects and teams ask for it, so every run that makes shared state looks once.

        ``reserved``: set its pages aside now (see :func:`reserve`), so that writing
        into the mapping can never hit a full /dev/shm. A segment filled only with
        ``write``/``pwrite`` (which report a full disk as an error) can skip it.
        ``owner``: name it after another owner (see :func:`new_name`).
        """
        if size < 0:
            raise ValueError(f"segment size must be >= 0, got {size}")
        from conveyor._ipc.sweep import join_reaper, sweep_stale_once

        if sweep:
            sweep_stale_once()
        join_reaper()  # before the segment exists: a kill right after it is covered
        name = new_name(kind, owner)
        path = SHM_DIR / name
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, max(size, 1))
            if reserved:
                reserve(fd, 0, max(size, 1), f"a new shared {_KINDS.get(kind, kind)}")
            mm = mmap.mmap(fd, max(size, 1))
        except BaseException:
            os.close(fd)
            _unlink_owned(name, None)
            raise
        os.close(fd)
        return cls(name, mm, size, owner=True)

    @classmethod
    def attach(cls, name: str) -> Segment:
        try:
            fd = os.open(SHM_DIR / name, os.O_RDWR)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"shared-memory segment {name!r} does not exist (its owner closed it or exited)"
            ) from None
        try:
            size = os.fstat(fd).st_size
            mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        return cls(name, mm, size, owner=False)

    def close(self) -> None:
        """Unmap (and, for the owner, unlink). Safe to call twice."""
        mm, self._mmap = self._mmap, None
        if mm is None:
            return
        self.buf.release()
        if self._finalizer is not None:
            self._finalizer.detach()
            _unlink_owned(self.name, mm)
        else:
            try:
                mm.close()
            except BufferError:
                pass

    def disown(self) -> None:
        """Give up ownership: this process will no longer unlink the name.

        For handing a segment to another process that unlinks it (a channel's large
        items), and for a forked child that inherited its parent's owner object.
        """
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        self.owner = False

    @property
    def closed(self) -> bool:
        return self._mmap is None

    def __enter__(self) -> Segment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        role = "owner" if self.owner else "attached"
        return f"<Segment {self.name} {self.size} bytes {role}{' closed' if self.closed else ''}>"


def segment_exists(name: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(SHM_DIR / name).st_mode)
    except OSError:
        return False
