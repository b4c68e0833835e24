"""Who uses a channel: tables of sender and receiver processes in its header.

A row is ``(pid, start time, open handles)``. The kernel's start time of the process
(from ``/proc``) makes a row unambiguous: a zombie, or a new process that reused the
pid, reads as dead. Rows are written only under the ring's lock for that side; reads
for liveness checks are lock-free (a stale read only delays a verdict by one check).

Senders claim a row on their first ``put`` and count open handles in it, so that "a
sender died without closing" is a fact, not a guess. Receivers claim a row on their
first ``get``; their count stays 1. Rows of dead or finished processes are reused.

Example::

    table = PeerTable(seg.buf, offset=512)
    row = table.claim(os.getpid(), my_start(), count=True)
    table.release(row, os.getpid())
"""

from __future__ import annotations

import os
import struct

from conveyor._ipc.identity import start_time as _start_time

ROWS = 64
_ROW = struct.Struct("qqq")
SIZE = ROWS * _ROW.size  # bytes of header one table takes


def my_start() -> int:
    """This process's kernel start time, in clock ticks since boot."""
    return int(_start_time(os.getpid()) or 0)


def alive(pid: int, start: int) -> bool:
    """Whether ``pid`` runs and is the same process that started at ``start``."""
    return _start_time(pid) == str(start)


class PeerTable:
    """One table of peer rows at ``offset`` in ``buf``; see the module docstring."""

    def __init__(self, buf: memoryview, offset: int) -> None:
        self.buf = buf
        self.offset = offset

    def _at(self, row: int) -> int:
        return self.offset + row * _ROW.size

    def rows(self) -> list[tuple[int, int, int]]:
        return [_ROW.unpack_from(self.buf, self._at(k)) for k in range(ROWS)]

    def claim(self, pid: int, start: int, count: bool) -> int:
        """The row of (pid, start), made if needed; with ``count``, one more open handle.

        Returns the row, or -1 if the table is full (that process's death then goes
        unnoticed; its stream can still end normally).
        """
        free = -1
        for k, (p, started, opened) in enumerate(self.rows()):
            if p == pid and started == start:
                if count:
                    _ROW.pack_into(self.buf, self._at(k), pid, start, opened + 1)
                return k
            if free < 0 and (p == 0 or (count and opened <= 0) or not alive(p, started)):
                free = k
        if free >= 0:
            _ROW.pack_into(self.buf, self._at(free), pid, start, 1)
        return free

    def release(self, row: int, pid: int) -> None:
        """One open handle of ``pid`` in ``row`` is closed."""
        if row < 0:
            return
        p, started, opened = _ROW.unpack_from(self.buf, self._at(row))
        if p == pid:
            _ROW.pack_into(self.buf, self._at(row), p, started, max(opened - 1, 0))

    def dead_with_open_handles(self) -> int | None:
        """The pid of a process that died while it held open handles, if any."""
        for pid, started, opened in self.rows():
            if pid and opened > 0 and not alive(pid, started):
                return pid
        return None

    def all_dead(self) -> list[int]:
        """The pids in the table if there are some and every one is dead, else ``[]``."""
        rows = [(pid, started) for pid, started, _ in self.rows() if pid]
        if any(alive(pid, started) for pid, started in rows):
            return []
        return [pid for pid, _ in rows]
