"""Teams: a fixed set of processes that run one function in lock-step.

Owns ``team()``, its context (barriers, reductions, broadcasts) and the shared state the
members coordinate through. It may import ``_ipc`` and ``conveyor.errors``.
"""
