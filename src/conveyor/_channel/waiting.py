"""How processes wait on a channel's ring, and how a ring breaks.

Nobody sleeps holding a lock: a blocked put or get polls the two words (a few plain
spins, then ``sched_yield``, then sleeps doubling up to 1 ms), checks the state word for
cancellation on every poll, and every ``PEER_CHECK`` seconds asks the peer tables
whether the processes it waits for are still alive (see ``ring``'s docstring). A part
of :class:`~conveyor._channel.ring.Ring`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from time import monotonic, sleep

from conveyor._channel import peers
from conveyor._channel.layout import (
    _BROKEN,
    _CLOSED,
    _HEAD,
    _MSG_AT,
    _MSG_MAX,
    _REASONS,
    _STATE,
    _TAIL,
    MAX_SLEEP,
    PEER_CHECK,
    RECEIVER_DIED,
    SENDER_DIED,
    SPIN,
    YIELDS,
)
from conveyor._ipc.segment import Segment
from conveyor.errors import ChannelBroken


class RingWaiting:
    """The ring's waiting and breaking; ``Ring`` sets the fields declared here."""

    seg: Segment
    senders: int
    _w: memoryview
    _senders: peers.PeerTable
    _receivers: peers.PeerTable

    def closed_senders(self) -> int:
        return int(self._w[_CLOSED])

    def _poll(
        self, ready: Callable[[], bool], deadline: float | None, check_peers: Callable[[], None]
    ) -> bool:
        """Wait until ``ready()``; False if ``deadline`` passed first. See module docstring."""
        w = self._w
        spins = 0
        delay = 1e-5
        next_check = monotonic() + PEER_CHECK
        while True:
            if w[_STATE]:
                raise self.broken_error()
            if ready():
                return True
            spins += 1
            if spins < SPIN:
                continue
            if spins < SPIN + YIELDS:
                os.sched_yield()
            else:
                sleep(delay)
                delay = min(delay * 2, MAX_SLEEP)
            now = monotonic()
            if deadline is not None and now >= deadline:
                return False
            if now >= next_check:
                check_peers()
                next_check = now + PEER_CHECK

    def _check_senders(self) -> None:
        if not self.senders:
            return  # an open-ended channel: senders may come and go (a pool's workers)
        pid = self._senders.dead_with_open_handles()
        # It may have published its last items just before dying: deliver those first.
        if pid is not None and not (self._w[_TAIL] ^ self._w[_HEAD]) >> 32:
            self.break_(
                SENDER_DIED,
                pid,
                f"sender process {pid} died without closing the channel; "
                f"{self.closed_senders()} of {self.senders} senders had closed",
            )
            raise self.broken_error()

    def _check_receivers(self) -> None:
        pids = self._receivers.all_dead()
        if pids:
            self.break_(
                RECEIVER_DIED,
                pids[-1],
                f"every receiver of the channel has exited (pids {', '.join(map(str, pids))}) "
                "while it was full",
            )
            raise self.broken_error()

    def break_(self, code: int, pid: int, message: str) -> None:
        """Break the channel for every process; the first reason given wins."""
        if self._w[_STATE]:
            return
        raw = message.encode()[:_MSG_MAX]
        self.seg.buf[_MSG_AT : _MSG_AT + len(raw)] = raw
        _BROKEN.pack_into(self.seg.buf, 224, pid, len(raw))
        self._w[_STATE] = code  # last: whoever sees the state sees the message

    def broken_error(self) -> ChannelBroken:
        code = int(self._w[_STATE])
        pid, n = _BROKEN.unpack_from(self.seg.buf, 224)
        message = bytes(self.seg.buf[_MSG_AT : _MSG_AT + n]).decode(errors="replace")
        return ChannelBroken(message, _REASONS.get(code, "cancelled"), pid or None)

    @property
    def broken(self) -> bool:
        return bool(self._w[_STATE])
