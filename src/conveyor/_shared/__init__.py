"""Shared state: objects that live in shared memory and travel to running processes.

Owns shared structs and their field kinds, values and counters, arrays, dicts, lists and
the pickled-object store beneath dicts and lists. It may import ``_ipc`` and
``conveyor.errors``.
"""
