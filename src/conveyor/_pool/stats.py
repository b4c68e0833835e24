"""``PoolStatistics``: a pool's counters, as a frozen record.

In a module of its own so that importing the pool does not pay for building a
dataclass; it is loaded when ``Pool.statistics()`` is first called.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PoolStatistics:
    """Counters of a pool, from :meth:`Pool.statistics`.

    Example::

        with conveyor.Pool(2) as pool:
            pool.map(abs, range(100))
            print(pool.statistics().tasks_done)
    """

    workers: int
    worker_pids: tuple[int, ...]
    tasks_done: int
    tasks_pending: int
    workers_replaced: int
