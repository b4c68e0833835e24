"""The team's shared state: a barrier in shared memory and the team's "broken" flag.

A barrier is the one collective that carries no data, and the one users call in tight
loops (once per simulation step), so it does not go through the parent: each member
increments an arrival count under the segment lock; the last to arrive starts a new
generation and wakes the sleepers. A waiter first spins briefly on the generation word
(arrivals are usually close together), then sleeps on its own wake-up pipe.

The parent still watches every member. When one raises, dies or returns while others
wait, the parent sets the broken flag (with the culprit and the reason) and writes to
every wake-up pipe, so waiting members raise :class:`TeamBrokenError` at once. A member
killed while holding the segment lock cannot block the rest: the kernel drops its lock.

Layout (little-endian int64 words)::

    0 broken   8 failed rank   16 finished rank   24 count   32 generation   40 reason length
    48..560 reason (UTF-8)     576 + 16*r: waiting generation + 1 (0: not waiting), sleeping
"""

from __future__ import annotations

import contextlib
import os
import select
import struct
import time
from multiprocessing.connection import Connection

from conveyor._ipc.lock import SegmentLock
from conveyor._ipc.segment import Segment
from conveyor.errors import TeamBrokenError

_Q = struct.Struct("<q")
_BROKEN, _FAILED, _FINISHED, _COUNT, _GEN, _RLEN, _REASON = 0, 8, 16, 24, 32, 40, 48
_REASON_MAX = 512
_STATES = 576

# How long a waiter spins before it sleeps: long enough to catch members that arrive
# close together, short enough not to matter when they do not.
SPIN_SECONDS = 0.0002


class TeamState:
    """One process's view of the team segment (owner in the parent, attached in members)."""

    def __init__(self, seg: Segment, size: int, wake: list[Connection]) -> None:
        self.seg = seg
        self.buf = seg.buf
        self.size = size
        self.lock = SegmentLock(seg.name)
        self._wake_conns = wake  # kept open for as long as we may write to them
        self._wake_fds = [c.fileno() for c in wake]
        self._parent = os.getppid()
        self._poller: select.poll | None = None  # the member's wake-up pipe, made on first sleep
        for fd in self._wake_fds:
            os.set_blocking(fd, False)  # a full pipe already means "wake up"

    @classmethod
    def create(cls, size: int, wake: list[Connection]) -> TeamState:
        seg = Segment.create(_STATES + 16 * size, "team", sweep=True)
        state = cls(seg, size, wake)
        state._set(_FAILED, -1)
        state._set(_FINISHED, -1)
        return state

    def close(self) -> None:
        self.lock.close()
        self.seg.close()

    def _get(self, off: int) -> int:
        return int(_Q.unpack_from(self.buf, off)[0])

    def _set(self, off: int, value: int) -> None:
        _Q.pack_into(self.buf, off, value)

    def _wake(self, ranks: list[int] | range) -> None:
        for r in ranks:
            with contextlib.suppress(OSError):  # full (a wake-up is pending) or closed
                os.write(self._wake_fds[r], b"!")

    # -- used by the parent -------------------------------------------------------------

    def break_team(self, failed_rank: int | None, reason: str) -> None:
        with self.lock:
            self._break_locked(failed_rank, reason)

    def _break_locked(self, failed_rank: int | None, reason: str) -> None:
        if not self._get(_BROKEN):
            raw = reason.encode()[:_REASON_MAX]
            self.buf[_REASON : _REASON + len(raw)] = raw
            self._set(_RLEN, len(raw))
            self._set(_FAILED, -1 if failed_rank is None else failed_rank)
            self._set(_BROKEN, 1)
        self._wake(range(self.size))

    def set_finished(self, rank: int) -> None:
        """A member returned: members waiting in (or later calling) barrier() must fail."""
        with self.lock:
            if self._get(_FINISHED) < 0:
                self._set(_FINISHED, rank)
            self._wake(range(self.size))

    def waiting_in_current_barrier(self) -> list[int]:
        """Ranks waiting in the barrier of the current generation (not merely late to notice
        that it completed)."""
        current = self._get(_GEN) + 1
        return [r for r in range(self.size) if self._get(_STATES + 16 * r) == current]

    # -- used by members ----------------------------------------------------------------

    def _error(self, rank: int) -> TeamBrokenError | None:
        if self._get(_BROKEN):
            failed = self._get(_FAILED)
            reason = bytes(self.buf[_REASON : _REASON + self._get(_RLEN)]).decode(errors="replace")
            return TeamBrokenError(rank, failed if failed >= 0 else None, reason)
        finished = self._get(_FINISHED)
        if finished >= 0:
            return TeamBrokenError(rank, finished, "returned; it cannot join barrier()")
        return None

    def wait(self, rank: int, wake: Connection, timeout: float | None, spin: float) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        slot = _STATES + 16 * rank
        lock = self.lock
        lock.acquire()
        try:
            err = self._error(rank)
            if err is not None:
                raise err
            gen = self._get(_GEN)
            arrived = self._get(_COUNT) + 1
            if arrived == self.size:
                self._set(_COUNT, 0)
                self._set(_GEN, gen + 1)
                self._wake([r for r in range(self.size) if self._get(_STATES + 16 * r + 8)])
                return
            self._set(_COUNT, arrived)
            self._set(slot, gen + 1)
        finally:
            lock.release()
        try:
            end = time.perf_counter() + spin
            while time.perf_counter() < end:
                if self._get(_GEN) != gen:
                    return
                if self._get(_BROKEN) or self._get(_FINISHED) >= 0:
                    break
                # Yield, so that a member sharing this core (more processes than cores,
                # or other work on the machine) can arrive while we spin.
                os.sched_yield()
            while True:
                with lock:
                    if self._get(_GEN) != gen:
                        return
                    err = self._error(rank)
                    if err is not None:
                        raise err
                    if deadline is not None and time.monotonic() >= deadline:
                        # Like threading.Barrier: a timeout breaks the barrier for everyone.
                        reason = f"timed out after {timeout:g} s in barrier()"
                        self._break_locked(rank, reason)
                        raise TeamBrokenError(rank, rank, reason)
                    # Marked under the lock, with the generation checked under it too, so
                    # the last arrival cannot miss us.
                    self._set(slot + 8, 1)
                if os.getppid() != self._parent:
                    # Nobody is left to break the team if another member dies now.
                    raise TeamBrokenError(rank, None, "lost the team's parent process")
                pause = 1.0 if deadline is None else max(0.0, deadline - time.monotonic())
                if self._poller is None:
                    self._poller = select.poll()
                    self._poller.register(wake.fileno(), select.POLLIN)
                if self._poller.poll(min(pause, 1.0) * 1000):
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake.fileno(), 4096)
                self._set(slot + 8, 0)
        finally:
            self._set(slot, 0)
            self._set(slot + 8, 0)
