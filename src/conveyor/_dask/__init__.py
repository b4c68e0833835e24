"""Cluster mode: a ``Pool`` whose work runs on a Dask ``distributed`` cluster.

What this subpackage owns:

* ``_context`` -- which cluster a ``Pool`` uses: ``cluster=`` resolved into a
  ``distributed.Client`` (conveyor closes only what it started), and ``use_cluster()``,
  the process-wide default for pools created by code you do not control;
* ``_backend`` -- ``DaskBackend``, the client-side driver that stands where a local
  ``Supervisor`` stands: it takes the pool's ``Record`` s, packs them into Dask tasks
  sized by measured run time, keeps a bounded number in flight, and reports each
  record back to its call object;
* ``_remote`` -- what runs inside a Dask worker: a worker plugin that owns one local
  conveyor ``Pool`` per client pool (sized to the worker's threads), and the chunk task
  that feeds it and never raises.

What it may import: the standard library, ``distributed`` (only in ``_backend`` and
``_remote``, which are imported only when a cluster is asked for), and of conveyor
``_pool`` (the seam's ``Runner``, ``Record`` and ``Command``, record modes, the
exit hook's registry, and in ``_remote`` the local pool on a Dask worker), ``_ipc``
(pickling) and ``errors``. ``_dask`` sits above the pool, yet the pool reaches it in
two places, both imports inside a function, made only when a cluster is asked for or
may be: ``Pool()`` reads ``_context.current()`` (no Dask import) for a
``use_cluster()`` default, and ``_pool.pool._cluster_backend`` makes the
``DaskBackend``; ``tests/test_layering.py`` lists them as the only upward imports.
"""
