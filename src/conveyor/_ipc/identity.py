"""Process identity: a pid and the kernel's start time of that process.

A pid alone can be recycled; a pid with its start time (clock ticks since boot, field 22
of ``/proc/<pid>/stat``) names one process for good. Workers watch their pool's process
this way, segment names carry their owner this way, and the channel's peer table checks
its peers this way. Only the standard library's ``os`` is imported, so the pool can ask
for an identity at start-up without loading anything else.
"""

from __future__ import annotations


def start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), or None if gone.

    Example::

        start_time(os.getpid())   # '123456'
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().decode().rsplit(")", 1)[1].split()
    except OSError:
        return None
    if fields[0] == "Z":  # a zombie owns nothing any more
        return None
    return fields[19]
