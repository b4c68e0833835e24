"""The byte layout of a channel's ring segment, shared by the ring's parts.

Layout: one :class:`~conveyor._ipc.segment.Segment` holds a 4 KiB header and a data area of
``capacity`` bytes (a multiple of 8)::

    header  0  tail word   (items put, mod 2**32) << 32 | tail offset   written by senders
           64  head word   (items got, mod 2**32) << 32 | head offset   written by receivers
          128  state       0 open, else why it broke (cancelled / sender died / ...)
          136  closed      how many senders have closed
          192  magic, capacity, maxsize, senders (fixed at creation)
          224  pid of whoever broke it; 232 message length; 240.. message (UTF-8)
          512  sender rows   (pid, start time, open handles) x 64    see peers.py
         2048  receiver rows (pid, start time, 1) x 64
    data 4096  records: an 8-byte prefix (payload length | flags << 32), the payload,
               padding to 8 bytes; a payload may wrap around the end, a prefix never does
"""

from __future__ import annotations

import platform
import struct

from conveyor._channel import peers as peers

HEADER = 4096
MAGIC = 0x434F4E5645590001
M32 = 0xFFFFFFFF
_HALF = 2**31
# Word indexes. Tail, head and the rest sit on separate cache lines, so a sender's
# store does not evict what receivers poll, and the other way round.
_TAIL, _HEAD, _STATE, _CLOSED = 0, 8, 16, 17
_FIXED = struct.Struct("QQQQ")  # magic, capacity, maxsize, senders at byte 192
_BROKEN = struct.Struct("QQ")  # pid, message length at byte 224
_MSG_AT, _MSG_MAX = 240, 256
_SEND_ROWS, _RECV_ROWS = 512, 512 + peers.SIZE  # two peer tables, each 1.5 KiB

CANCELLED, SENDER_DIED, RECEIVER_DIED = 1, 2, 3
_REASONS = {CANCELLED: "cancelled", SENDER_DIED: "sender died", RECEIVER_DIED: "receiver died"}

SPIN, YIELDS, MAX_SLEEP, PEER_CHECK = 10, 200, 1e-3, 0.2
# On a weakly ordered CPU the unlocked tail/head reads need the barrier of a shared lock.
_SPLIT_LOCKS = platform.machine() in ("x86_64", "AMD64", "i686", "i386")
_SEND_BYTE, _RECV_BYTE = 0, (1 if _SPLIT_LOCKS else 0)
