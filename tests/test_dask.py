"""Cluster mode (issue 12): the same Pool, pipeline and work queue on a Dask cluster.

One LocalCluster (2 worker processes of 1 thread each) serves the module; each test
runs real conveyor pools on it. Tests that start a cluster of their own are ``slow``.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from concurrent.futures import CancelledError
from pathlib import Path
from typing import Any

import pytest

import conveyor as cv
from helpers import (
    child_exitcode,
    exit_on,
    exit_once,
    expand,
    fail_on,
    make_state,
    parent_pid,
    read_state,
    sleep_for,
    sleep_on,
    square,
    touch_and_square,
)

distributed = pytest.importorskip("distributed")

pytestmark = [pytest.mark.dask, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    import conftest

    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=":0")
    client = distributed.Client(cluster)
    before = conftest.child_pids()
    conftest.KEEP_PIDS.update(before)
    try:
        yield client
    finally:
        conftest.KEEP_PIDS.difference_update(before)
        client.close()
        cluster.close()


def dask_worker_pids(client: Any) -> set[int]:
    return set(client.run(os.getpid).values())


def test_map_submit_imap_and_errors(client: Any) -> None:
    with cv.Pool(cluster=client) as pool:
        assert pool.workers == 2  # the cluster's threads
        assert pool.map(square, range(500)) == [x * x for x in range(500)]
        assert pool.submit(square, 12).result(timeout=30) == 144
        assert sorted(pool.imap_unordered(square, range(50))) == [x * x for x in range(50)]
        assert list(pool.imap(square, range(50), chunksize=3)) == [x * x for x in range(50)]
        got: list[Any] = []
        pool.apply_async(square, (9,), callback=got.append).get(timeout=30)
        assert got == [81]
        with pytest.raises(ValueError, match="bad item 3") as info:
            pool.map(fail_on, range(10))
        assert isinstance(info.value.__cause__, cv.RemoteTraceback)
        assert "fail_on" in str(info.value.__cause__)
        # The tasks ran in conveyor's processes, whose parents are the Dask workers.
        parents = set(pool.map(parent_pid, range(20), chunksize=1))
        assert parents <= dask_worker_pids(client)


def test_worker_state_and_processes_started_by_tasks(client: Any) -> None:
    with cv.Pool(cluster=client, initializer=make_state, initargs=("model",)) as pool:
        states = pool.map(read_state, range(8), chunksize=1)
        assert {s["value"] for s in states} == {"model"}
        # Dask's workers are daemonic; a task in conveyor's worker may still fork.
        assert pool.map(child_exitcode, range(2), chunksize=1) == [4, 4]


def test_crash_fails_only_that_item(client: Any) -> None:
    workers_before = dask_worker_pids(client)
    with cv.Pool(cluster=client) as pool:
        it = pool.imap(exit_on, range(10), chunksize=2)
        out: list[Any] = []
        for _ in range(10):
            try:
                out.append(next(it))
            except cv.WorkerLostError as exc:
                assert exc.task_index == 5
                assert exc.exitcode == 3
                out.append("lost")
        assert out == [0, 1, 2, 3, 4, "lost", 6, 7, 8, 9]
    assert dask_worker_pids(client) == workers_before  # no Dask worker died or restarted


def test_task_timeout_and_retries(client: Any, tmp_path: Path) -> None:
    with cv.Pool(cluster=client, task_timeout=1) as pool:
        it = pool.imap(sleep_on, range(6), chunksize=1)
        out: list[Any] = []
        for _ in range(6):
            try:
                out.append(next(it))
            except cv.TaskTimeoutError as exc:
                assert exc.task_index == 2
                out.append("timeout")
        assert out == [0, 1, "timeout", 3, 4, 5]
    with cv.Pool(cluster=client, retries=1) as pool:
        assert pool.submit(exit_once, str(tmp_path / "marker")).result(timeout=30) == "second try"


def test_forced_cancel_and_endless_imap(client: Any) -> None:
    with cv.Pool(cluster=client) as pool:
        fut = pool.submit(sleep_for, 60)
        time.sleep(1.0)  # let it start on a Dask worker
        assert fut.cancel(force=True)
        with pytest.raises(CancelledError):
            fut.result()
        assert pool.submit(square, 3).result(timeout=30) == 9
        # An endless input: consumed lazily, with a bounded number of tasks on the scheduler.
        limit = 2 * pool.workers + 2
        most = 0
        for k, value in enumerate(pool.imap(square, itertools.count())):
            assert value == k * k
            if k % 500 == 0:
                tasks = client.run_on_scheduler(
                    lambda dask_scheduler: sum(1 for key in dask_scheduler.tasks
                                               if str(key).startswith("conveyor-pool-")))
                most = max(most, tasks)
            if k == 4999:
                break
        assert most <= limit


def test_use_cluster_reaches_pools_created_inside(client: Any) -> None:
    with cv.use_cluster(client) as c:
        assert c is client
        parents = set(cv.map(parent_pid, range(10), chunksize=1))  # makes its own Pool
    assert parents <= dask_worker_pids(client)
    with cv.Pool(2) as pool:  # outside the block: local again
        assert set(pool.map(parent_pid, range(4))) == {os.getpid()}


def test_pipeline_and_work_queue_on_the_cluster(client: Any) -> None:
    results = (cv.Pipeline(range(200), cluster=client)
               .map(square)
               .batch(10)
               .map(sum, kind="thread")
               .run())
    assert results == [sum(x * x for x in range(i, i + 10)) for i in range(0, 200, 10)]
    done = cv.work_queue([0], expand, cluster=client)
    assert sorted(done) == list(range(31))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_local_cluster_started_and_stopped_by_the_pool(tmp_path: Path) -> None:
    """cluster="local": conveyor's own LocalCluster; the run leaves no process behind."""
    with cv.Pool(cluster="local") as pool:
        folder = str(tmp_path)
        assert pool.map(touch_and_square, [(folder, x) for x in range(100)]) == \
            [x * x for x in range(100)]
    assert len(os.listdir(folder)) == 100  # each item ran exactly once


def test_exceptions_keep_their_fields_once_distributed_is_imported(client: Any) -> None:
    """Importing distributed installs tblib's exception reducers process-wide, which drop
    SystemExit's code; conveyor pickles exceptions with a table of its own."""
    import sys

    with cv.Pool(1) as local, cv.Pool(cluster=client) as remote:
        for pool in (local, remote):
            with pytest.raises(SystemExit) as info:
                pool.submit(sys.exit, 3).result(timeout=30)
            assert info.value.code == 3
