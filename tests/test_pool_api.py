"""The Pool's documented behaviour, as multiprocessing.Pool and Executor define it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import multiprocessing
import threading
import time

import pytest

import conveyor as cv
from helpers import add, fail_on, make_state, pid_of, read_state, sleep_for, square

pytestmark = pytest.mark.timeout(60)


def test_every_method_under_each_start_method(start_method: str) -> None:
    with cv.Pool(2, start_method=start_method) as pool:
        assert pool.map(square, range(20)) == [x * x for x in range(20)]
        assert pool.map(lambda x: x + 1, [1, 2, 3]) == [2, 3, 4]
        assert pool.starmap(add, [(1, 2), (3, 4)]) == [3, 7]
        assert pool.apply(add, (1,), {"b": 5}) == 6
        assert pool.apply_async(square, (7,)).get(timeout=10) == 49
        assert pool.map_async(square, range(5)).get(timeout=10) == [0, 1, 4, 9, 16]
        assert pool.starmap_async(add, [(1, 1)]).get(timeout=10) == [2]
        assert list(pool.imap(square, iter(range(10)))) == [x * x for x in range(10)]
        assert sorted(pool.imap_unordered(square, range(10))) == [x * x for x in range(10)]
        assert pool.submit(add, 2, b=3).result(timeout=10) == 5
        offset = 10
        assert pool.submit(lambda: offset * 2).result(timeout=10) == 20  # a closure


def nested_function_map(pool: cv.Pool) -> list[int]:
    def inner(x: int) -> int:  # defined inside a function: needs cloudpickle
        return x * 3

    return pool.map(inner, range(4))


def test_functions_defined_inside_functions(start_method: str) -> None:
    with cv.Pool(1, start_method=start_method) as pool:
        assert nested_function_map(pool) == [0, 3, 6, 9]


def test_map_with_several_iterables_zips_them() -> None:
    with cv.Pool(2) as pool:
        assert pool.map(add, [1, 2, 3], [10, 20, 30]) == [11, 22, 33]


def test_positional_chunksize_as_in_the_standard_library() -> None:
    with cv.Pool(2) as pool:
        assert pool.map(square, range(10), 3) == [x * x for x in range(10)]


@pytest.mark.parametrize("chunksize", [1, 2, 7, 100])
def test_map_preserves_order_for_any_chunksize(chunksize: int) -> None:
    with cv.Pool(2) as pool:
        assert pool.map(square, list(range(50)), chunksize=chunksize) == [x * x for x in range(50)]
        got = list(pool.imap(square, range(50), chunksize=chunksize))
        assert got == [x * x for x in range(50)]


def test_map_of_empty_input() -> None:
    with cv.Pool(2) as pool:
        assert pool.map(square, []) == []
        assert list(pool.imap(square, [])) == []
        assert pool.map_async(square, []).get(timeout=5) == []


def test_imap_reads_an_endless_generator_lazily() -> None:
    taken = itertools.count()
    source = (next(taken) for _ in itertools.count())
    with cv.Pool(2) as pool:
        it = pool.imap(square, source)
        got = [next(it) for _ in range(1000)]
        assert got == [x * x for x in range(1000)]
        # The window ahead is bounded: far fewer than "everything" has been read.
        assert next(taken) < 1000 + 4096
        it.close()  # type: ignore[attr-defined]


def test_imap_raises_a_task_error_at_its_position_and_goes_on() -> None:
    with cv.Pool(2) as pool:
        it = pool.imap(fail_on, range(6))
        assert [next(it), next(it), next(it)] == [0, 1, 2]
        with pytest.raises(ValueError, match="bad item 3"):
            next(it)
        assert list(it) == [4, 5]


def test_imap_source_error_is_raised_after_earlier_results() -> None:
    def source():
        yield 1
        yield 2
        raise KeyError("source broke")

    with cv.Pool(2) as pool:
        it = pool.imap(square, source())
        assert next(it) == 1
        assert next(it) == 4
        with pytest.raises(KeyError, match="source broke"):
            next(it)


def test_async_result_api() -> None:
    with cv.Pool(1) as pool:
        res = pool.apply_async(sleep_for, (0.3,))
        assert not res.ready()
        with pytest.raises(ValueError):
            res.successful()
        with pytest.raises(multiprocessing.TimeoutError):
            res.get(timeout=0.01)
        res.wait(10)
        assert res.ready() and res.successful()
        assert res.get() == 0.3
        bad = pool.apply_async(fail_on, (3,))
        bad.wait(10)
        assert not bad.successful()
        with pytest.raises(ValueError, match="bad item 3"):
            bad.get()


def test_callbacks_run_in_the_parent_before_get_returns() -> None:
    seen: list[object] = []
    errors: list[BaseException] = []
    with cv.Pool(2) as pool:
        r1 = pool.apply_async(square, (4,), callback=seen.append)
        r2 = pool.apply_async(fail_on, (3,), error_callback=errors.append)
        r3 = pool.map_async(square, range(3), callback=seen.append)
        assert r1.get(10) == 16
        with pytest.raises(ValueError):
            r2.get(10)
        assert r3.get(10) == [0, 1, 4]
    assert 16 in seen and [0, 1, 4] in seen
    assert isinstance(errors[0], ValueError)


def test_an_exception_in_a_callback_is_reported_not_swallowed() -> None:
    def bad_callback(_: object) -> None:
        raise RuntimeError("callback broke")

    with cv.Pool(1) as pool:
        res = pool.apply_async(square, (2,), callback=bad_callback)
        with pytest.raises(cv.CallbackError) as info:
            res.get(timeout=10)
        assert isinstance(info.value.__cause__, RuntimeError)
        res2 = pool.map_async(square, [1], callback=bad_callback)
        with pytest.raises(cv.CallbackError):
            res2.get(timeout=10)
        assert pool.apply(square, (3,)) == 9  # the pool is still fine


def test_submit_returns_a_concurrent_future_that_works_with_asyncio() -> None:
    async def main(pool: cv.Pool) -> list[int]:
        loop = asyncio.get_running_loop()
        return list(await asyncio.gather(*(loop.run_in_executor(pool, square, i) for i in range(5))))

    with cv.Pool(2) as pool:
        assert isinstance(pool, concurrent.futures.Executor)
        fut = pool.submit(square, 3)
        assert isinstance(fut, concurrent.futures.Future)
        assert fut.result(10) == 9
        assert asyncio.run(main(pool)) == [0, 1, 4, 9, 16]
        done = list(concurrent.futures.as_completed([pool.submit(square, i) for i in range(5)]))
        assert sorted(f.result() for f in done) == [0, 1, 4, 9, 16]


def test_cancel_keeps_its_standard_meaning() -> None:
    with cv.Pool(1) as pool:
        running = pool.submit(sleep_for, 0.5)
        queued = [pool.submit(square, i) for i in range(3)]
        time.sleep(0.2)
        assert not running.cancel()  # already running: a plain cancel() refuses
        assert queued[-1].cancel()
        assert running.result(10) == 0.5
        assert queued[-1].cancelled()
        assert [f.result(10) for f in queued[:-1]] == [0, 1]


def test_worker_state_from_the_initializer(start_method: str) -> None:
    with cv.Pool(2, initializer=make_state, initargs=("model",), start_method=start_method) as pool:
        states = pool.map(read_state, range(6), chunksize=1)
        pids = set(pool.map(pid_of, range(6), chunksize=1))
    assert {s["value"] for s in states} == {"model"}
    assert {s["pid"] for s in states} <= pids | {s["pid"] for s in states}
    with pytest.raises(RuntimeError, match="only available inside"):
        cv.worker_state()


def test_processes_and_max_workers_are_aliases() -> None:
    with cv.Pool(processes=3) as pool:
        assert pool.workers == 3
    with cv.Pool(max_workers=1) as pool:
        assert pool.workers == 1
    with pytest.raises(TypeError):
        cv.Pool(workers=2, processes=3)


def test_maxtasksperchild_replaces_workers_without_failing_tasks() -> None:
    with cv.Pool(2, maxtasksperchild=2) as pool:
        pids = pool.map(pid_of, range(12), chunksize=1)
    assert len(set(pids)) >= 4


def test_close_then_join_waits_for_work() -> None:
    pool = cv.Pool(2)
    res = pool.map_async(sleep_for, [0.2, 0.2, 0.2])
    pool.close()
    pool.join()
    assert res.get(0) == [0.2, 0.2, 0.2]


def test_calls_after_close_raise_value_error() -> None:
    pool = cv.Pool(1)
    pool.close()
    for call in (
        lambda: pool.map(square, [1]),
        lambda: pool.submit(square, 1),
        lambda: pool.apply_async(square, (1,)),
        lambda: pool.imap(square, [1]),
    ):
        with pytest.raises(ValueError, match="closed"):
            call()
    with pytest.raises(RuntimeError):  # the Executor habit works too
        pool.submit(square, 1)
    pool.join()


def test_join_before_close_is_an_error() -> None:
    pool = cv.Pool(1)
    with pytest.raises(ValueError, match="close"):
        pool.join()
    pool.terminate()


def test_terminate_fails_pending_work_and_stops_workers() -> None:
    pool = cv.Pool(1)
    futs = [pool.submit(sleep_for, 0.3) for _ in range(5)]
    time.sleep(0.1)
    pool.terminate()
    assert all(f.done() for f in futs)
    assert any(f.cancelled() for f in futs)


def test_shutdown_cancel_futures_drops_pending() -> None:
    pool = cv.Pool(1)
    futs = [pool.submit(sleep_for, 0.2) for _ in range(6)]
    time.sleep(0.05)
    pool.shutdown(wait=True, cancel_futures=True)
    assert futs[0].result() == 0.2
    assert sum(f.cancelled() for f in futs) >= 4


def test_with_block_waits_for_submitted_work() -> None:
    with cv.Pool(2) as pool:
        futs = [pool.submit(sleep_for, 0.1) for _ in range(4)]
    assert [f.result(0) for f in futs] == [0.1] * 4


def test_exception_in_with_block_terminates_without_waiting() -> None:
    start = time.monotonic()
    with pytest.raises(KeyError), cv.Pool(1) as pool:
        for _ in range(20):
            pool.submit(sleep_for, 0.5)
        raise KeyError("user error")
    assert time.monotonic() - start < 3


def test_one_line_map_with_progress_callable() -> None:
    seen: list[tuple[int, int | None]] = []
    result = cv.map(square, range(100), workers=2, progress=lambda d, t: seen.append((d, t)))
    assert result == [x * x for x in range(100)]
    assert seen[-1] == (100, 100)
    assert all(t == 100 for _, t in seen)


def test_progress_bar_is_drawn(capsys: pytest.CaptureFixture[str]) -> None:
    with cv.Pool(2, progress=True) as pool:
        pool.map(square, range(50))
    err = capsys.readouterr().err
    assert "50/50" in err


def test_statistics_counts_tasks() -> None:
    with cv.Pool(2) as pool:
        pool.map(square, range(10), chunksize=1)
        stats = pool.statistics()
    assert stats.workers == 2 and stats.tasks_done == 10 and len(stats.worker_pids) == 2


def test_pool_is_usable_from_several_threads() -> None:
    with cv.Pool(2) as pool:
        results: list[list[int]] = []

        def run(k: int) -> None:
            results.append(pool.map(add, range(50), [k] * 50))

        threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(r[0] for r in results) == [0, 1, 2, 3]
