"""Work that flows through pools: pipelines of stages, and work queues whose tasks add
tasks.

Owns ``Pipeline`` (its driver, stages and statistics) and ``work_queue``. It builds on
the pool through its call seam, and may import ``_pool``, ``_ipc`` and
``conveyor.errors``.
"""
