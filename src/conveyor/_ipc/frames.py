"""Length-prefixed frames over raw pipes: blocking on the worker side, non-blocking on the
supervisor side.

The supervisor never blocks on a pipe: a worker busy writing a large result while the
supervisor is blocked writing it a large task would deadlock both (the classic
two-full-pipes deadlock). So the supervisor keeps an output queue per worker
(:class:`FrameWriter`) and a reassembly buffer per worker (:class:`FrameReader`), and
moves bytes only when ``poll`` says the pipe is ready.

A frame is a 12-byte header (payload length: u64, kind: u32) and the payload.
"""

from __future__ import annotations

import fcntl
import os
import struct
from collections import deque
from collections.abc import Iterator

HEADER = struct.Struct("<QI")
_CHUNK = 1 << 18
# Bigger pipe buffers mean fewer wake-ups per megabyte; 1 MiB is the default
# /proc/sys/fs/pipe-max-size for unprivileged processes.
_PIPE_SIZE = 1 << 20


def make_pipe() -> tuple[int, int]:
    """A pipe with a large buffer, both ends close-on-exec."""
    r, w = os.pipe2(os.O_CLOEXEC) if hasattr(os, "pipe2") else os.pipe()
    try:
        fcntl.fcntl(w, getattr(fcntl, "F_SETPIPE_SZ", 1031), _PIPE_SIZE)
    except OSError:
        pass  # a smaller buffer is slower, not wrong
    return r, w


# ---------------------------------------------------------------- worker side (blocking)


def _read_exact(fd: int, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    pos = 0
    while pos < n:
        got = os.readv(fd, [view[pos:]])
        if got == 0:
            raise EOFError("pipe closed")
        pos += got
    return buf


def read_frame(fd: int) -> tuple[int, bytearray]:
    """Block until a whole frame arrives. Raises EOFError when the writer is gone."""
    length, kind = HEADER.unpack(_read_exact(fd, HEADER.size))
    return kind, _read_exact(fd, length)


def write_frame(fd: int, kind: int,
                payload: bytes | bytearray | memoryview | list[bytes]) -> None:
    """Block until the whole frame is written; a list payload is sent as the
    concatenation of its parts (gathered by ``writev``, not joined)."""
    chunks = payload if isinstance(payload, list) else [payload]
    length = sum(len(c) for c in chunks)
    parts = [memoryview(HEADER.pack(length, kind)), *(memoryview(c) for c in chunks if len(c))]
    while parts:
        sent = os.writev(fd, parts[:512])  # IOV_MAX is 1024 on Linux
        while parts and sent >= len(parts[0]):
            sent -= len(parts[0])
            parts.pop(0)
        if parts and sent:
            parts[0] = parts[0][sent:]


# ------------------------------------------------------------ supervisor side (non-blocking)


class FrameWriter:
    """Queued frames for one non-blocking pipe."""

    __slots__ = ("_parts", "fd", "pending_bytes")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)
        self._parts: deque[memoryview] = deque()
        self.pending_bytes = 0

    def push(self, kind: int, payload: bytes | bytearray | list[bytes]) -> None:
        """Queue a frame; a list payload is sent as the concatenation of its parts."""
        parts = payload if isinstance(payload, list) else [payload]
        length = sum(len(p) for p in parts)
        self._parts.append(memoryview(HEADER.pack(length, kind)))
        self._parts.extend(memoryview(p) for p in parts)
        self.pending_bytes += HEADER.size + length

    def flush(self) -> bool:
        """Write what the pipe takes now. True when everything queued is written.

        Raises BrokenPipeError when the reader is gone.
        """
        parts = self._parts
        while parts:
            try:
                sent = os.writev(self.fd, list(parts)[:64])
            except BlockingIOError:
                return False
            except InterruptedError:
                continue
            self.pending_bytes -= sent
            while parts and sent >= len(parts[0]):
                sent -= len(parts[0])
                parts.popleft()
            if sent:
                parts[0] = parts[0][sent:]
        return True

    @property
    def empty(self) -> bool:
        return not self._parts


class FrameReader:
    """Reassembles frames from one non-blocking pipe."""

    __slots__ = ("_big", "_big_kind", "_big_pos", "_buf", "fd")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)
        self._buf = bytearray()
        self._big: bytearray | None = None
        self._big_kind = 0
        self._big_pos = 0

    def read(self) -> tuple[list[tuple[int, bytearray]], bool]:
        """Read what is available. Returns (complete frames, eof)."""
        frames: list[tuple[int, bytearray]] = []
        eof = False
        while True:
            if self._big is not None:
                # A large frame: read straight into its final buffer, no re-copying.
                try:
                    got = os.readv(self.fd, [memoryview(self._big)[self._big_pos :]])
                except BlockingIOError:
                    break
                except InterruptedError:
                    continue
                if got == 0:
                    eof = True
                    break
                self._big_pos += got
                if self._big_pos == len(self._big):
                    frames.append((self._big_kind, self._big))
                    self._big = None
                continue
            try:
                chunk = os.read(self.fd, _CHUNK)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            if not chunk:
                eof = True
                break
            self._buf += chunk
            frames.extend(self._split())
            if len(chunk) < _CHUNK and self._big is None:
                break  # drained for now; avoid an extra EAGAIN syscall
        return frames, eof

    def _split(self) -> Iterator[tuple[int, bytearray]]:
        buf = self._buf
        pos = 0
        end = len(buf)
        while end - pos >= HEADER.size:
            length, kind = HEADER.unpack_from(buf, pos)
            start = pos + HEADER.size
            if end - start >= length:
                yield kind, buf[start : start + length]
                pos = start + length
                continue
            if length > _CHUNK:
                big = bytearray(length)
                have = end - start
                big[:have] = buf[start:end]
                self._big, self._big_kind, self._big_pos = big, kind, have
                pos = end
            break
        if pos:
            del buf[:pos]
