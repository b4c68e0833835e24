"""Which cluster a pool runs on: ``cluster=`` values, and the ``use_cluster()`` default.

This module imports no Dask module at import time: ``Pool`` reads :func:`current` on
every construction, and a local pool must stay free of Dask (a test pins it).

``cluster=`` takes one of:

* a ``distributed.Client``: used as it is, never closed by conveyor;
* a ``distributed.LocalCluster`` (or any object with a ``scheduler_address``): conveyor
  opens a client to it and closes that client, not the cluster;
* a scheduler address such as ``"tcp://10.0.0.5:8786"``: conveyor opens a client and
  closes it;
* ``"local"``: conveyor starts a ``LocalCluster`` of worker processes with one thread
  each (one per CPU this process may use) and stops it with the pool.

``use_cluster()`` is process-wide, not per thread, on purpose: the code it is for
(a library that creates its own ``Pool``) may well create it in a thread of its own.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_INSTALL = "pip install 'conveyor[dask]'"

_lock = threading.Lock()
_stack: list[Any] = []  # the clients of the use_cluster() blocks now open, innermost last


def dask_missing(what: str) -> ImportError:
    """The error for ``cluster=`` without the optional Dask extra."""
    return ImportError(f"{what} needs Dask distributed, which is not installed; "
                       f"install it with: {_INSTALL}")


def current() -> Any:
    """The client of the innermost open ``use_cluster()`` block, or None."""
    return _stack[-1] if _stack else None


class ClusterHandle:
    """A resolved ``cluster=``: a client, and what conveyor started (and so stops)."""

    def __init__(self, client: Any, owned_client: bool, owned_cluster: Any) -> None:
        self.client = client
        self._owned_client = owned_client
        self._owned_cluster = owned_cluster

    def close(self) -> None:
        if self._owned_client:
            self.client.close()
        if self._owned_cluster is not None:
            self._owned_cluster.close()


def local_workers() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def open_cluster(spec: Any) -> ClusterHandle:
    """Resolve a ``cluster=`` value (see the module docstring) into a client."""
    try:
        import distributed
    except ImportError as exc:
        raise dask_missing(f"cluster={spec!r}") from exc
    if isinstance(spec, distributed.Client):
        return ClusterHandle(spec, False, None)
    if spec == "local":
        cluster = distributed.LocalCluster(n_workers=local_workers(), threads_per_worker=1,
                                           processes=True, dashboard_address=":0")
        try:
            client = distributed.Client(cluster)
        except BaseException:
            cluster.close()
            raise
        return ClusterHandle(client, True, cluster)
    if isinstance(spec, str):
        if "://" not in spec and ":" not in spec:
            raise ValueError(f'cluster must be a distributed.Client, a scheduler address such '
                             f'as "tcp://host:8786", or "local"; got {spec!r}')
        return ClusterHandle(distributed.Client(spec), True, None)
    if hasattr(spec, "scheduler_address"):
        return ClusterHandle(distributed.Client(spec), True, None)
    raise TypeError(f'cluster must be a distributed.Client, a LocalCluster, a scheduler '
                    f'address such as "tcp://host:8786", or "local"; got {spec!r}')


@contextmanager
def use_cluster(cluster: Any) -> Iterator[Any]:
    """Run every ``Pool`` created inside the block on ``cluster`` (unless it names its own).

    For code you do not control that creates its own pool (``conveyor.map``, a library
    taking ``multiprocessing``-style pools). ``cluster`` is what ``cluster=`` takes; a
    ``"local"`` cluster or an address is opened once for the whole block and closed at
    its end. The block is process-wide: pools created in other threads use it too.
    Yields the ``distributed.Client``.

    Example::

        with conveyor.use_cluster("tcp://10.0.0.5:8786"):
            results = third_party_function_that_makes_a_pool(data)
    """
    handle = open_cluster(cluster)
    with _lock:
        _stack.append(handle.client)
    try:
        yield handle.client
    finally:
        with _lock:
            # Remove this block's entry even if blocks were left out of order (threads).
            for i in range(len(_stack) - 1, -1, -1):
                if _stack[i] is handle.client:
                    del _stack[i]
                    break
        handle.close()
