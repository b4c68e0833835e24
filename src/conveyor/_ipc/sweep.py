"""Removing segments nobody can use any more: the sweep, and the reaper that runs it.

When is a segment stale? Its owner (the pid and start time in its name, see ``_shm``) is
gone, *and* no live process can still reach it:

* a process that has it mapped can still use it, and may hand it on: seen in
  ``/proc/<pid>/maps`` (a segment's descriptors always sit beside its mapping);
* a large channel item's block (``..._oob<tag>_...``) is reached through its channel:
  it is kept while the channel's ring (``..._chan_<tag>``) is alive (owner running, or
  mapped by someone), whoever made the block. A producer that sent a large item and
  exited has not lost it: the receiver takes it later. When a ring goes, so do the
  blocks nobody took.

The owner unlinks its segments itself (``close()``, garbage collection, interpreter
exit), so the sweep is for owners that could not: killed by SIGKILL, or by SIGTERM's
default action, which runs no Python code. Two things run it:

* :func:`sweep_stale`, once per process, before the first shared object is made: it
  catches whatever a whole killed process family left;
* the **reaper**, a small process of our own, started with the first segment a process
  family makes. Family members (the starter, and children forked after it) hold the
  write end of a pipe whose read end is the reaper's stdin, and tell it their pid. When
  the pipe reports end of file, every member is gone or going; the reaper waits for them
  to be gone, sweeps what they owned, waits for whatever is still mapped by others to be
  let go, and exits.

Why not multiprocessing's resource tracker, as ``SharedMemory`` uses? It unlinks by
name when the family exits, with no idea of who still maps a segment or which channel a
block belongs to, and it prints "There appear to be N leaked shared_memory objects"
about segments conveyor cleans up itself, which reads like a bug in the user's program.
The reaper ignores SIGINT, SIGTERM and SIGHUP like the tracker (a Ctrl-C or a ``kill``
of the process group must not stop the clean-up of the processes it hit), and is silent.

Example::

    sweep_stale()      # what a killed run left, unless still in use
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time

from conveyor._ipc.identity import start_time as _start_time
from conveyor._ipc.segment import PREFIX, SHM_DIR, owner_alive

_MAPPED = re.compile(rb"/dev/shm/(" + PREFIX.encode() + rb"[^\s/]+)")
LINGER_POLL = 0.5  # seconds between looks at segments a live process still maps


def _parts(name: str) -> tuple[str, str, str, str] | None:
    """(pid, start, kind, token) of a conveyor segment name, or None if not one."""
    parts = name.split("_", 4)
    if len(parts) != 5 or parts[0] + "_" != PREFIX:
        return None
    return parts[1], parts[2], parts[3], parts[4]


def mapped_segments() -> set[str]:
    """Names of conveyor segments some live process has mapped (that we may look at)."""
    found: set[str] = set()
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return found
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps", "rb") as f:
                data = f.read()
        except OSError:  # gone meanwhile, or another user's (which cannot open ours)
            continue
        if b"/dev/shm/" + PREFIX.encode() in data:
            found.update(m.decode() for m in _MAPPED.findall(data))
    return found


def sweep(owners: set[tuple[str, str]] | None = None) -> tuple[list[str], list[str]]:
    """Unlink stale segments (see the module docstring); returns (removed, still mapped).

    ``owners``: only segments of these (pid, start time) pairs, else of anyone.
    "Still mapped": segments of dead owners that a live process maps; a later sweep
    may remove them.
    """
    try:
        names = [n for n in os.listdir(SHM_DIR) if n.startswith(PREFIX)]
    except OSError:
        return [], []
    parsed = {n: p for n in names if (p := _parts(n)) is not None}
    dead = [
        n for n, (pid, start, _, _) in parsed.items()
        if (owners is None or (pid, start) in owners) and not owner_alive(n)
    ]
    if not dead:
        return [], []
    mapped = mapped_segments()
    live_rings = {
        token for n, (_, _, kind, token) in parsed.items()
        if kind == "chan" and (owner_alive(n) or n in mapped)
    }
    removed: list[str] = []
    kept: list[str] = []
    for name in dead:
        kind, token = parsed[name][2], parsed[name][3]
        if kind.startswith("oob"):
            if kind[3:] in live_rings:
                continue  # its channel may still deliver it
        elif name in mapped:
            kept.append(name)
            continue
        if _unlink(name):
            removed.append(name)
        if kind == "chan":  # its unread large items can never be received now
            marker = f"_oob{token}_"
            removed += [b for b in parsed if marker in b and b not in removed and _unlink(b)]
    return removed, kept


def _unlink(name: str) -> bool:
    try:
        os.unlink(SHM_DIR / name)
        return True
    except OSError:
        return False


def sweep_stale() -> list[str]:
    """Unlink segments whose owner is gone and that nobody can reach; returns their names."""
    return sweep()[0]


_swept = False
_sweep_lock = threading.Lock()


def sweep_stale_once() -> None:
    """:func:`sweep_stale`, the first time a process asks (see ``Segment.create``)."""
    global _swept
    with _sweep_lock:
        if not _swept:
            _swept = True
            sweep_stale()


# -- the reaper ------------------------------------------------------------------------------

_lock = threading.Lock()
_pipe = -1  # write end, shared with forked children
_member = 0  # the pid that told the reaper about itself through _pipe
reaper_pid = 0  # the reaper this process started, if it started one


def join_reaper() -> None:
    """Make sure this process's segments are swept if it is killed (see module docstring).

    Cheap after the first call in a process: one comparison.
    """
    if _member == os.getpid():
        return
    with _lock:
        _join()


def _join() -> None:
    global _pipe, _member, reaper_pid
    me = os.getpid()
    if _member == me:
        return
    line = f"{me} {_start_time(me)}\n".encode()
    if _pipe >= 0:  # inherited through fork: the same family, the same reaper
        try:
            os.write(_pipe, line)
            _member = me
            return
        except OSError:  # the reaper is gone (killed): start our own
            os.close(_pipe)
            _pipe = -1
    if not sys.executable:
        return  # embedded without an interpreter to start: sweep_stale still runs
    read_end, write_end = os.pipe()  # both close-on-exec: exec'd programs do not hold it
    try:
        reaper_pid = os.posix_spawn(
            sys.executable,
            [sys.executable, "-I", "-S", "-c", _REAPER_MAIN, _SRC_DIR],
            os.environ,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, read_end, 0),
                # Not the caller's stdout or stderr: a reaper that waits for others to
                # let go of a segment must not keep a pipe open that someone reads to EOF
                # (subprocess.run(capture_output=True) of a conveyor program would wait).
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ],
        )
    except OSError:
        os.close(write_end)
        return
    finally:
        os.close(read_end)
    os.write(write_end, line)
    _pipe, _member = write_end, me


# Runs in the reaper: -I -S keep it from importing anything of the user's.
# The directory that holds the conveyor package (src/ or site-packages), for the reaper's
# isolated interpreter (-I -S: no site-packages, no user paths, no PYTHONPATH).
_SRC_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_REAPER_MAIN = "import sys; sys.path.insert(0, sys.argv[1]); from conveyor._ipc.sweep import reap; reap()"


def reap() -> None:
    """The reaper's body: learn the family's members, then sweep after the last one."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    members: set[tuple[str, str]] = set()
    pending = b""
    while True:
        try:
            chunk = os.read(0, 4096)
        except InterruptedError:
            continue
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            pid, _, start = line.decode().partition(" ")
            members.add((pid, start))
    # End of file comes when the last member's descriptors are closed, which the kernel
    # does while that process is still exiting (not yet a zombie): it still reads as
    # alive for a moment. A member that exec'd another program also closed its end and
    # lives on. So sweep until every member is gone and nothing of theirs is mapped.
    pause = 0.005
    while True:
        _, kept = sweep(members)
        if not kept and not any(_start_time(int(pid)) == start for pid, start in members):
            return
        time.sleep(pause)
        pause = min(pause * 2, LINGER_POLL)
