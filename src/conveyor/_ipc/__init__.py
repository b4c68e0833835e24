"""Inter-process plumbing that every subsystem stands on.

Owns shared-memory segments (names, ownership, reservation, the reaper and the stale
sweep), the segment lock (OFD byte-range locks), what a process must redo after
``fork``, process identity (pid and start time), serialisation (pickle, then
cloudpickle) and framing on pipes. It imports only the standard library, cloudpickle and
``conveyor.errors``; none of its siblings.
"""
