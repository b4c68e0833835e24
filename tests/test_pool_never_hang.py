"""The pool never hangs, never loses work and never misleads: each scenario that could
hang runs in a fresh interpreter under a timeout, and afterwards none of its workers
may be alive."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import conveyor as cv
from conftest import wait_gone
from helpers import fail_on, log_run, nap_then_pid, pid_of, square

TESTS = Path(__file__).parent
pytestmark = pytest.mark.timeout(120)


def run_script(body: str, timeout: float = 60, start_method: str = "fork",
               expect_rc: int = 0) -> tuple[dict[str, Any], str]:
    """Run ``body`` in a fresh interpreter (``cv``, ``helpers``, ``report`` and ``pids``
    are in scope); return what it reported and its stderr. Fails on a hang or a worker
    left alive."""
    prelude = textwrap.dedent(f"""
        import json, os, sys, time
        sys.path.insert(0, {str(TESTS)!r})
        import multiprocessing
        multiprocessing.set_start_method({start_method!r}, force=True)
        import conveyor as cv
        import helpers
        facts = {{}}
        def report(**kw):
            facts.update(kw)
            print(json.dumps(facts), flush=True)
        def pids(pool):
            return pool.statistics().worker_pids
    """)
    proc = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(body)],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == expect_rc, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    facts = json.loads(lines[-1]) if lines else {}
    left = wait_gone(facts.get("pids", []), 3.0)
    assert not left, f"workers {left} outlived their pool: {facts}"
    return facts, proc.stderr


# ------------------------------------------------------------------------------ hangs


def test_worker_exiting_zero_while_closing_fails_its_task() -> None:
    facts, _ = run_script("""
        with cv.Pool(2) as pool:
            fut = pool.submit(helpers.exit_zero, 1)
            report(pids=pids(pool))
        exc = fut.exception(timeout=10)
        report(error=type(exc).__name__, message=str(exc))
    """, timeout=30)
    assert facts["error"] == "WorkerLostError"
    assert "exited with code 0" in facts["message"]


@pytest.mark.parametrize("how", ["exit0", "exit3", "raises"])
def test_initializer_that_exits_or_raises_breaks_the_pool(how: str) -> None:
    init = {"exit0": "helpers.exit_in_init, initargs=(0,)",
            "exit3": "helpers.exit_in_init, initargs=(3,)",
            "raises": "helpers.raise_in_init"}[how]
    facts, _ = run_script(f"""
        pool = cv.Pool(2, initializer={init})
        try:  # the pool may already know it is broken when the task is submitted
            exc = pool.submit(helpers.square, 3).exception(timeout=20)
        except cv.WorkerStartError as err:
            exc = err
        try:
            pool.submit(helpers.square, 4)
            later = "accepted"
        except cv.WorkerStartError as err:
            later = "refused"
        pool.terminate()
        report(error=type(exc).__name__, message=str(exc), later=later)
    """, timeout=40)
    assert facts["error"] == "WorkerStartError"
    assert facts["later"] == "refused"
    if how == "raises":
        assert "initializer raised RuntimeError" in facts["message"]
    else:
        assert "initializer" in facts["message"]
        assert f"exited with code {how[-1]}" in facts["message"]


def test_closing_with_a_half_read_imap_does_not_hang() -> None:
    facts, _ = run_script("""
        with cv.Pool(2) as pool:
            it = pool.imap(abs, range(100_000))
            first = next(it)
            report(pids=pids(pool))
        rest = 0
        try:
            for _ in it:
                rest += 1
            outcome = "StopIteration"
        except cv.PoolClosedError as exc:
            outcome = "PoolClosedError"
        report(first=first, rest=rest, outcome=outcome)
    """, timeout=30)
    assert facts["first"] == 0
    assert facts["outcome"] == "PoolClosedError"
    assert facts["rest"] < 100_000 - 1  # the rest of the input was not read


def test_close_and_join_with_a_referenced_imap_unordered() -> None:
    facts, _ = run_script("""
        pool = cv.Pool(2)
        it = pool.imap_unordered(abs, iter(range(10**9)), chunksize=7)
        next(it)
        pool.close(); pool.join()
        report(pids=pids(pool), joined=True)
    """, timeout=30)
    assert facts["joined"]


def test_submit_racing_with_close_never_leaves_a_future_pending() -> None:
    facts, _ = run_script("""
        import threading
        from concurrent.futures import wait
        pending = 0
        for trial in range(30):
            pool = cv.Pool(2)
            futures, start = [], threading.Event()
            def submitter():
                start.wait()
                for i in range(200):
                    try:
                        futures.append(pool.submit(abs, -i))
                    except cv.PoolClosedError:
                        return
            threads = [threading.Thread(target=submitter) for _ in range(3)]
            for t in threads: t.start()
            start.set()
            time.sleep(0.001 * (trial % 5))
            pool.close(); pool.join()
            for t in threads: t.join()
            done, not_done = wait(futures, timeout=10)
            pending += len(not_done)
        report(pending=pending)
    """, timeout=90)
    assert facts["pending"] == 0


def test_pool_used_in_a_forked_child_raises_naming_the_owner() -> None:
    facts, _ = run_script("""
        with cv.Pool(2) as pool:
            pool.map(abs, range(4))
            r, w = os.pipe()
            child = os.fork()
            if child == 0:
                os.close(r)
                try:
                    pool.map(abs, range(4))
                    msg = "no error"
                except cv.WrongProcessError as exc:
                    msg = str(exc)
                os.write(w, msg.encode())
                os._exit(0)
            os.close(w)
            msg = os.read(r, 4096).decode()
            os.waitpid(child, 0)
            report(msg=msg, owner=os.getpid(), pids=pids(pool), after=pool.map(abs, [-1]))
    """, timeout=30)
    assert f"belongs to process {facts['owner']}" in facts["msg"]
    assert "create a new pool in the child" in facts["msg"]
    assert facts["after"] == [1]


def test_task_that_forks_and_returns_in_the_child() -> None:
    facts, err = run_script("""
        with cv.Pool(2) as pool:
            out = pool.map(helpers.fork_and_return, range(6), chunksize=2)
            report(out=out, pids=pids(pool))
    """, timeout=30)
    assert facts["out"] == list(range(6))
    assert "returned into the pool's worker loop" in err


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_worker_dying_while_pickling_its_result(start_method: str) -> None:
    facts, _ = run_script("""
        with cv.Pool(2) as pool:
            lost = pool.submit(helpers.return_object, "dies").exception(timeout=20)
            exits = pool.submit(helpers.return_object, "exits").exception(timeout=20)
            try:
                pool.map(helpers.return_object, ["a", "dies", "b"], chunksize=3)
                in_map = "no error"
            except cv.WorkerLostError as exc:
                in_map = str(exc)
            ok = pool.map(abs, [-1, -2])
            report(pids=pids(pool), lost=str(lost), lost_type=type(lost).__name__,
                   exits=type(exits).__name__, in_map=in_map, ok=ok,
                   replaced=pool.statistics().workers_replaced)
    """, timeout=60, start_method=start_method)
    assert facts["lost_type"] == "WorkerLostError"
    assert "sending its result" in facts["lost"]
    assert facts["exits"] == "SerializationError"
    assert "task 1 " in facts["in_map"] and "sending its result" in facts["in_map"]
    assert facts["ok"] == [1, 2]
    assert facts["replaced"] <= 4  # no endless re-runs


def test_result_that_cannot_be_unpickled_fails_only_its_task() -> None:
    with cv.Pool(2) as pool:
        from helpers import return_object

        bad = pool.submit(return_object, "error")
        exits = pool.submit(return_object, "exit")
        good = [pool.submit(square, i) for i in range(20)]
        err = bad.exception(timeout=20)
        assert isinstance(err, cv.SerializationError)
        assert "FailsWhenLoaded" in str(err) or "_refuse_to_load" in str(err)
        assert "could not be unpickled in the parent" in str(err)
        assert isinstance(exits.exception(timeout=20), cv.SerializationError)
        assert [f.result(timeout=20) for f in good] == [i * i for i in range(20)]
        with pytest.raises(cv.SerializationError):
            pool.map(return_object, ["x", "error", "y"], chunksize=3)
        assert pool.submit(square, 7).result(timeout=20) == 49


def test_submit_after_interpreter_shutdown_began_is_refused() -> None:
    facts, _ = run_script("""
        import atexit
        pool = cv.Pool(1)
        def late():
            try:
                fut = pool.submit(abs, -1)
                print(json.dumps({"late": "accepted", "value": fut.result(timeout=5)}), flush=True)
            except RuntimeError as exc:
                print(json.dumps({"late": type(exc).__name__, "msg": str(exc)}), flush=True)
        atexit.register(late)
        report(pids=pids(pool))
    """, timeout=30)
    assert facts["late"] == "PoolClosedError"
    assert "shutting down" in facts["msg"]


# -------------------------------------------------------------------------- data loss


def test_submitted_work_completes_before_the_interpreter_exits(tmp_path: Path) -> None:
    run_script(f"""
        pool = cv.Pool(2)
        pool.submit(helpers.log_run, 0, 0.5, {str(tmp_path / 'a')!r})
    """, timeout=30)
    assert (tmp_path / "a").read_text() == "0\n"
    run_script(f"""
        pool = cv.Pool(2)
        for i in range(6):
            pool.submit(helpers.log_run, i, 0.2, {str(tmp_path / 'b')!r})
        pool.shutdown(wait=False)
    """, timeout=30)
    assert sorted((tmp_path / "b").read_text().split()) == [str(i) for i in range(6)]


def test_terminate_and_cancel_futures_still_drop_work(tmp_path: Path) -> None:
    run_script(f"""
        pool = cv.Pool(1)
        for i in range(6):
            pool.submit(helpers.log_run, i, 0.3, {str(tmp_path / 'c')!r})
        time.sleep(0.1)
        pool.shutdown(wait=False, cancel_futures=True)
    """, timeout=30)
    assert len((tmp_path / "c").read_text().split()) < 6


# --------------------------------------------------------- options that meant the wrong thing


def test_task_timeout_is_per_task_not_per_chunk() -> None:
    with cv.Pool(2, task_timeout=1) as pool:
        from helpers import sleep_for

        assert pool.map(sleep_for, [0.3] * 8, chunksize=8) == [0.3] * 8
        with pytest.raises(cv.TaskTimeoutError) as info:
            pool.map(sleep_for, [0.1, 0.1, 30, 0.1], chunksize=4)
        assert info.value.task_index == 2


def test_retries_are_counted_per_task(tmp_path: Path) -> None:
    from helpers import die_once

    with cv.Pool(2, retries=1) as pool:
        out = pool.map(die_once, range(40), [str(tmp_path)] * 40)
    assert out == list(range(40))


# ------------------------------------------------------------------ errors that got lost


def test_progress_callable_error_in_imap_is_always_raised() -> None:
    def explode(done: int, total: int | None) -> None:
        if done >= 50:
            raise RuntimeError("progress failed")

    with cv.Pool(2) as pool:
        for _ in range(20):
            with pytest.raises(cv.CallbackError):
                list(pool.imap(square, range(50), progress=explode))
            with pytest.raises(cv.CallbackError):
                list(pool.imap_unordered(square, range(50), chunksize=5, progress=explode))


# ------------------------------------------------------------------------- scheduling


def test_short_tasks_do_not_wait_behind_a_long_one() -> None:
    with cv.Pool(2) as pool:
        long = pool.submit(nap_then_pid, 3.0)
        time.sleep(0.5)
        quick = [pool.submit(nap_then_pid, 0.1) for _ in range(3)]
        quick_pids = {f.result(timeout=20) for f in quick}
        assert not long.done()  # all three finished while the long one still ran
        assert long.result(timeout=20) not in quick_pids


def test_fresh_pool_slow_and_quick_task_run_side_by_side() -> None:
    # Both may go to the first worker that is ready; once the second is ready (well
    # within the slow task's 4 s, even on a loaded machine) it takes the quick one back.
    with cv.Pool(2) as pool:
        slow = pool.submit(nap_then_pid, 4.0)
        quick = pool.submit(pid_of)
        assert quick.result(timeout=20) != slow.result(timeout=20)


def test_take_back_runs_every_task_exactly_once(tmp_path: Path) -> None:
    log = tmp_path / "runs"
    durations = [0.0, 0.0005, 0.002, 0.03, 0.0, 0.15]
    n = 300
    with cv.Pool(2) as pool:
        futs = [pool.submit(log_run, i, durations[(i * 7) % len(durations)], str(log))
                for i in range(n)]
        results = [f.result(timeout=60) for f in futs]
        mapped = pool.map(log_run, range(n, n + 200), [0.001] * 200, [str(log)] * 200)
    assert results == list(range(n))
    assert mapped == list(range(n, n + 200))
    runs = [int(x) for x in log.read_text().split()]
    assert sorted(runs) == list(range(n + 200))  # each ran once: none twice, none lost


def test_map_results_and_errors_survive_the_new_result_frames() -> None:
    with cv.Pool(2) as pool:
        big = pool.map(square, range(100_000))
        assert big == [i * i for i in range(100_000)]
        with pytest.raises(ValueError, match="bad item 3"):
            pool.map(fail_on, range(10))
        assert pool.apply(bytes, (3 << 20,)) == bytes(3 << 20)


def test_threads_race_close_with_imap_consumers() -> None:
    pool = cv.Pool(2)
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            for _ in pool.imap(square, iter(range(10**9)), chunksize=3):
                pass
        except cv.PoolClosedError:
            pass
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=consume) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    pool.close()
    pool.join()
    for t in threads:
        t.join(timeout=20)
        assert not t.is_alive()
    assert errors == []


def test_chunked_map_with_timeout_keeps_the_per_task_meaning_under_retries() -> None:
    with cv.Pool(2, task_timeout=5, retries=2) as pool:
        assert pool.map(square, range(1000)) == [i * i for i in range(1000)]



def test_ctrl_c_while_exit_waits_for_work_drops_it() -> None:
    import signal

    script = textwrap.dedent(f"""
        import sys, json
        sys.path.insert(0, {str(TESTS)!r})
        import conveyor as cv, helpers
        pool = cv.Pool(2)
        futs = [pool.submit(helpers.sleep_for, 1.0) for _ in range(40)]
        print(json.dumps({{"pids": pool.statistics().worker_pids}}), flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    pids = json.loads(proc.stdout.readline())["pids"]
    time.sleep(0.5)  # the script has ended: exit now waits for the 40 s of work
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=15)  # far less than the 20 s the work would take
    assert not wait_gone(pids, 3.0)



def test_status_slots_start_clean_on_reused_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    # multiprocessing's heap hands out the memory of an earlier pool's status slots as it
    # was; a stale take-back range there once made a worker run a record that the
    # supervisor had taken back and sent elsewhere (it ran twice).
    from conveyor._pool import worker

    real = worker.status_block

    def dirty_block(workers: int) -> Any:
        block = real(workers)
        view = worker.status_view(block)
        for i in range(len(view)):
            view[i] = 3
        return block

    monkeypatch.setattr(worker, "status_block", dirty_block)
    with cv.Pool(2) as pool:
        slots = pool._sup._slots.tolist()
        for base in range(0, len(slots), worker.SLOT_SIZE):
            assert slots[base + worker.SLOT_REVOKE_LO] == 0
            assert slots[base + worker.SLOT_REVOKE_HI] == 0
        assert pool.map(square, range(50)) == [i * i for i in range(50)]
