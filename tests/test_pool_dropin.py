"""Drop-in details for programs written against multiprocessing.Pool and
ProcessPoolExecutor, resources that must not leak, and clear errors for bad options."""

from __future__ import annotations

import gc
import multiprocessing
import resource
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path
from typing import Any

import pytest

import conveyor as cv
from helpers import sleep_for, square

pytestmark = pytest.mark.timeout(120)
TESTS = Path(__file__).parent


# ------------------------------------------------------------- attributes other libraries read


def _dask_style_workers(pool: Any) -> int:
    # dask.multiprocessing / dask.local read the size of the executor they are given so.
    return int(pool._max_workers)


def _dynesty_style_workers(pool: Any) -> int:
    # dynesty's samplers, given pool= without queue_size, read one of these.
    try:
        return int(pool.size)
    except AttributeError:
        return int(pool._processes)


def test_size_aliases_read_by_dask_and_dynesty() -> None:
    with cv.Pool(2) as pool:
        assert _dask_style_workers(pool) == 2
        assert _dynesty_style_workers(pool) == 2
        assert pool._processes == pool._max_workers == pool.size == pool.workers == 2
        with pytest.raises(AttributeError):
            pool.size = 3  # type: ignore[misc]


def test_dask_process_scheduler_runs_on_a_conveyor_pool() -> None:
    dask = pytest.importorskip("dask")
    import dask.bag as db

    from helpers import double

    with cv.Pool(2) as pool:
        bag = db.from_sequence(range(20), npartitions=4).map(double)
        (total,) = dask.compute(bag.sum(), scheduler="processes", pool=pool)
    assert total == 2 * sum(range(20))


def test_imap_iterator_next_with_timeout() -> None:
    with cv.Pool(2) as pool:
        it = pool.imap(sleep_for, [2.0, 0.0])
        with pytest.raises(multiprocessing.TimeoutError):
            it.next(timeout=0.2)  # type: ignore[attr-defined]
        assert it.next(timeout=20) == 2.0  # type: ignore[attr-defined]
        assert it.next() == 0.0  # type: ignore[attr-defined]
        with pytest.raises(StopIteration):
            it.next(timeout=1)  # type: ignore[attr-defined]
        un = pool.imap_unordered(square, range(3))
        assert sorted(un.next(timeout=20) for _ in range(3)) == [0, 1, 4]  # type: ignore[attr-defined]


def test_with_on_a_closed_pool_raises_value_error() -> None:
    pool = cv.Pool(1)
    pool.shutdown()
    with pytest.raises(ValueError), pool:
        pass


def test_garbage_collected_running_pool_warns_and_cleans_up() -> None:
    pool = cv.Pool(1)
    pids = pool.statistics().worker_pids
    assert pool.submit(square, 3).result(timeout=20) == 9
    with pytest.warns(ResourceWarning, match="unclosed running pool"):
        del pool
        gc.collect()
    # the leak guard (conftest) checks that the workers and threads are gone
    assert pids


@pytest.mark.parametrize("start_method", ["fork", "forkserver", "spawn"])
def test_initargs_with_multiprocessing_sync_objects(start_method: str) -> None:
    script = textwrap.dedent(f"""
        import multiprocessing as mp, sys, os
        sys.path.insert(0, {str(TESTS)!r})
        import conveyor as cv

        from helpers import init_sync as init, work_sync as work

        if __name__ == "__main__":
            ctx = mp.get_context({start_method!r})
            # SimpleQueue: put() writes at once, so a worker that dies loses nothing
            lock, queue, value, event = ctx.Lock(), ctx.SimpleQueue(), ctx.Value("i", 0), ctx.Event()
            event.set()
            with cv.Pool(2, initializer=init, initargs=(lock, queue, value, event),
                         context=ctx) as pool:
                out = [pool.submit(work, i) for i in range(6)]
                results = [f.exception(timeout=30) or f.result() for f in out]
            got = []
            while not queue.empty():
                got.append(queue.get())
            got = sorted(set(got))
            # (a task that finished on the dying worker but was not reported yet is run
            # again, so the counter may exceed 5)
            print(results[3].__class__.__name__, results[:3] + results[4:], value.value >= 5, got)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=90)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == "WorkerLostError"
    assert "[True, True, True, True, True] True [0, 1, 2, 4, 5]" in proc.stdout


def test_multiprocessing_queue_put_in_tasks_is_flushed_when_workers_exit() -> None:
    script = textwrap.dedent(f"""
        import multiprocessing as mp, sys
        sys.path.insert(0, {str(TESTS)!r})
        import conveyor as cv

        def init(q):
            global Q
            Q = q

        def work(x):
            Q.put(x)  # a feeder thread sends it later: the worker must let it finish
            return x

        if __name__ == "__main__":
            q = mp.Queue()
            with cv.Pool(2, initializer=init, initargs=(q,)) as pool:
                pool.map(work, range(50), chunksize=1)
            print(sorted(q.get(timeout=10) for _ in range(50)) == list(range(50)))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=90)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"


class _Model:
    def predict(self, x: int) -> int:
        return x + 1


def test_pool_keeps_no_reference_to_a_finished_tasks_function() -> None:
    with cv.Pool(1) as pool:
        model = _Model()
        ref = weakref.ref(model)
        assert pool.submit(model.predict, 1).result(timeout=20) == 2
        assert pool.map(model.predict, [1, 2]) == [2, 3]
        del model
        gc.collect()
        assert ref() is None


def test_task_may_start_processes_of_its_own() -> None:
    from helpers import nested_map

    with cv.Pool(2) as pool:
        assert pool.submit(nested_map, 4).result(timeout=60) == [0, 1, 4, 9]
        assert pool.submit(nested_process).result(timeout=60) == 0


def nested_process() -> int | None:
    p = multiprocessing.get_context("fork").Process(target=square, args=(2,))
    p.start()
    p.join()
    return p.exitcode


def test_constructor_failing_part_way_leaves_no_worker() -> None:
    script = textwrap.dedent("""
        import resource, os, sys
        import conveyor as cv
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (48, hard))
        try:
            cv.Pool(40)
            print("created")
        except OSError as exc:
            print("refused", exc.errno)
        import multiprocessing
        print("children", len(multiprocessing.active_children()))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "refused" in proc.stdout
    assert "children 0" in proc.stdout
    assert resource.getrlimit(resource.RLIMIT_NOFILE)  # the test process is untouched


def test_sys_exit_in_a_task_is_raised_by_result_as_in_process_pool_executor() -> None:
    with cv.Pool(1) as pool:
        fut = pool.submit(sys.exit, 3)
        with pytest.raises(SystemExit) as info:
            fut.result(timeout=20)
        assert info.value.code == 3
        assert pool.submit(square, 2).result(timeout=20) == 4  # the worker lives on


# ------------------------------------------------------------------------- bad options


@pytest.mark.parametrize(("kwargs", "error", "words"), [
    ({"task_timeout": float("nan")}, ValueError, "task_timeout"),
    ({"task_timeout": float("inf")}, ValueError, "task_timeout"),
    ({"task_timeout": "3"}, ValueError, "task_timeout"),
    ({"retries": "x"}, TypeError, "retries must be an int, got 'x'"),
    ({"retries": -1}, ValueError, "retries"),
    ({"retry_on": [int]}, TypeError, "exception types, got <class 'int'>"),
    ({"retry_on": ValueError}, TypeError, "retry_on=(ValueError,)"),
    ({"workers": 0}, ValueError, "workers"),
    ({"max_worker_memory": "1"}, ValueError, "max_worker_memory must be a positive int"),
])
def test_bad_pool_options_are_named(kwargs: dict[str, Any], error: type, words: str) -> None:
    with pytest.raises(error) as info:
        cv.Pool(**{"workers": 1, **kwargs})
    assert words in str(info.value)


def test_bad_call_options_are_named() -> None:
    with cv.Pool(1) as pool:
        with pytest.raises(TypeError, match="chunksize must be an int, got '3'"):
            pool.map(square, range(4), chunksize="3")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="chunksize"):
            pool.imap(square, range(4), chunksize="3")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="task_timeout"):
            pool.map(square, range(4), task_timeout=float("nan"))
        with pytest.raises(TypeError, match="retry_on"):
            pool.map(square, range(4), retry_on=ValueError)  # type: ignore[arg-type]
        assert pool.map(square, range(4)) == [0, 1, 4, 9]


def test_map_pickles_its_input_as_it_dispatches() -> None:
    import threading as th

    items: list[Any] = ["x" * 1024] * 20_000  # chunks are cut near 4 MB as they are sent
    with cv.Pool(2) as pool:
        assert pool.map(len, items) == [1024] * 20_000
        items[15_000] = th.Lock()  # not picklable: found when its chunk is dispatched
        with pytest.raises(cv.SerializationError, match="task 15000"):
            pool.map(len, items)
        assert pool.map(len, ["ab"] * 3) == [2, 2, 2]
