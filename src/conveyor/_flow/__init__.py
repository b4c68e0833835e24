"""Work that flows through pools: pipelines of stages, and work queues whose tasks add
tasks.

Owns ``Pipeline`` (its driver, stages, chunking and statistics), ``work_queue``, and
``interrupts`` (Ctrl-C held back while their drivers run in the caller's thread). It
builds on the pool through its call seam, and may import ``_pool``, ``_dask`` (the
pipeline's ``cluster=`` opens one client for all its stages), ``_ipc`` and
``conveyor.errors``.
"""
