"""Fault scenarios for the pool, each run in a fresh interpreter by tests/test_pool_faults.py.

Usage: python pool_faults.py SCENARIO [ARGS...]; prints one JSON object per line
(facts for the test to check) and exits 0 unless the scenario itself broke.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import conveyor as cv

MARK = Path(os.environ.get("SCENARIO_DIR", "/tmp")) / "scenario-death-time"


def emit(**facts: Any) -> None:
    print(json.dumps(facts), flush=True)


def die(how: str) -> None:
    MARK.write_text(repr(time.monotonic()))
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "sigsegv":
        ctypes.string_at(0)
    elif how == "exit":
        os._exit(3)
    elif how == "external":  # another process kills it: here, the parent's child kill
        os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(10)


def task(x: int, how: str = "sigkill", bad: int = 5) -> int:
    if x == bad:
        die(how)
    time.sleep(0.02)
    return x


def worker_death(how: str, api: str) -> None:
    with cv.Pool(2) as pool:
        items = list(range(20))
        delivered: list[int] = []
        error: BaseException | None = None
        error_at = 0.0
        if api == "map":
            try:
                delivered = pool.map(task, items, [how] * 20, chunksize=3)
            except cv.WorkerLostError as exc:
                error, error_at = exc, time.monotonic()
            delivered_count = pool.statistics().tasks_done
        elif api in ("imap", "imap_unordered"):
            it = getattr(pool, api)(_star_task, [(x, how) for x in items], chunksize=2)
            order: list[Any] = []
            while True:
                try:
                    order.append(next(it))
                except StopIteration:
                    break
                except cv.WorkerLostError as exc:
                    error, error_at = exc, time.monotonic()
                    order.append("error")
            delivered = [x for x in order if x != "error"]
            delivered_count = len(delivered)
            emit(order=order)
        else:  # submit
            futs = [pool.submit(task, x, how) for x in items]
            for f in futs:
                exc = f.exception(timeout=30)
                if exc is not None:
                    error, error_at = exc, time.monotonic()
                else:
                    delivered.append(f.result())
            delivered_count = len(delivered)
        pids = pool.statistics().worker_pids
        after = pool.map(task, [1, 2, 3])  # the pool goes on
    assert isinstance(error, cv.WorkerLostError), repr(error)
    emit(
        error=type(error).__name__,
        message=str(error),
        task_index=error.task_index,
        signal=error.signal_name,
        exitcode=error.exitcode,
        latency=error_at - float(MARK.read_text()),
        delivered=delivered_count,
        after=after,
        pids=list(pids),
    )


def _star_task(arg: tuple[int, str]) -> int:
    return task(*arg)


def timeout() -> None:
    with cv.Pool(2, task_timeout=0.5) as pool:
        start = time.monotonic()
        futs = [pool.submit(_sleepy, x) for x in range(8)]
        outcomes = []
        for f in futs:
            exc = f.exception(timeout=30)
            outcomes.append(type(exc).__name__ if exc else f.result())
        elapsed = time.monotonic() - start
        replaced = pool.statistics().workers_replaced
        pids = pool.statistics().worker_pids
    emit(outcomes=outcomes, elapsed=elapsed, replaced=replaced, pids=list(pids))


def _sleepy(x: int) -> int:
    time.sleep(30 if x == 2 else 0.05)
    return x


def cancel_running() -> None:
    with cv.Pool(1) as pool:
        fut = pool.submit(time.sleep, 30)
        time.sleep(0.3)
        plain = fut.cancel()
        start = time.monotonic()
        forced = fut.cancel(force=True)
        after = pool.submit(pow, 2, 5).result(timeout=10)
        elapsed = time.monotonic() - start
        replaced = pool.statistics().workers_replaced
        pids = pool.statistics().worker_pids
    emit(plain=plain, forced=forced, cancelled=fut.cancelled(), after=after, elapsed=elapsed,
         replaced=replaced, pids=list(pids))


def _die_once(marker: str) -> str:
    path = Path(marker)
    if not path.exists():
        path.write_text("died once")
        os.kill(os.getpid(), signal.SIGKILL)
    return "ok"


class Flaky(Exception):
    pass


def _flaky_once(marker: str) -> str:
    path = Path(marker)
    if not path.exists():
        path.write_text("raised once")
        raise Flaky("first attempt fails")
    return "ok"


def retries(tmp: str) -> None:
    with cv.Pool(1, retries=1) as pool:
        first = pool.submit(_die_once, f"{tmp}/a").result(timeout=30)
        second = pool.map(_flaky_once, [f"{tmp}/b"], retry_on=(Flaky,))
        try:
            pool.apply(_die_once, (f"{tmp}/c",), )  # pool-wide retries=1 applies
            third = "ok"
        except cv.WorkerLostError:
            third = "lost"
    with cv.Pool(1) as pool:
        try:
            pool.apply(_die_once, (f"{tmp}/d",))
            fourth = "ok"
        except cv.WorkerLostError:
            fourth = "lost"
    emit(first=first, second=second, third=third, fourth=fourth)


_hoard: list[bytearray] = []


def _hoarding_task(x: int) -> int:
    block = bytearray(30 << 20)
    block[:: 4096] = b"\1" * len(block[:: 4096])  # touch every page
    _hoard.append(block)  # a leak: the worker's memory only grows
    return os.getpid()


def memory() -> None:
    with cv.Pool(1, max_worker_memory=100 << 20) as pool:
        pids = pool.map(_hoarding_task, range(12), chunksize=1)
        replaced = pool.statistics().workers_replaced
        worker_pids = pool.statistics().worker_pids
    emit(distinct=len(set(pids)), replaced=replaced, pids=list(worker_pids))


def idle_killed() -> None:
    with cv.Pool(2) as pool:
        first = pool.map(abs, [-1, -2])
        for pid in pool.statistics().worker_pids:
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        second = pool.map(abs, [-3, -4, -5])
        third = pool.submit(abs, -6).result(timeout=10)
        pids = pool.statistics().worker_pids
    emit(first=first, second=second, third=third, pids=list(pids))


def ctrl_c() -> None:
    with cv.Pool(2) as pool:
        emit(pids=list(pool.statistics().worker_pids))
        started = time.monotonic()
        try:
            emit(ready=True)
            pool.map(time.sleep, [0.5] * 200, chunksize=1)
        except KeyboardInterrupt:
            emit(interrupted=True, waited=time.monotonic() - started, at=time.time())
            raise


def parent_dies() -> None:
    pool = cv.Pool(2)
    pool.submit(abs, 1).result(timeout=10)
    for _ in range(50):
        pool.submit(time.sleep, 0.2)
    emit(pids=list(pool.statistics().worker_pids))
    time.sleep(60)


if __name__ == "__main__":
    name, *args = sys.argv[1:]
    globals()[name](*args)
