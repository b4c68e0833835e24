"""work_queue: tasks that add tasks, ending by itself, race-free."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import conveyor as cv

pytestmark = pytest.mark.timeout(120)


def tree_walk(node: tuple[int, int, float, float], add) -> int:  # type: ignore[no-untyped-def]
    """node = (id, fan-out, delay before adding, delay after adding)."""
    ident, fan, before, after = node
    time.sleep(before)
    if ident < 200:
        for k in range(fan):
            add((ident * 3 + k + 1, fan, before, after))
    time.sleep(after)  # adding just before finishing must not be missed
    return ident


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fan=st.integers(0, 3), before=st.sampled_from([0.0, 0.001]),
       after=st.sampled_from([0.0, 0.002]), workers=st.integers(1, 3))
def test_terminates_after_exactly_all_tasks(fan: int, before: float, after: float,
                                            workers: int) -> None:
    results = cv.work_queue([(0, fan, before, after)], tree_walk, workers=workers)
    expected = {0}
    frontier = [0]
    while frontier:
        ident = frontier.pop()
        if ident < 200:
            for k in range(fan):
                expected.add(ident * 3 + k + 1)
                frontier.append(ident * 3 + k + 1)
    assert sorted(results) == sorted(expected)  # each task exactly once


def graph_walk(page: int, add) -> int:  # type: ignore[no-untyped-def]
    for link in ((page * 7) % 50, (page * 11 + 3) % 50):
        add(link)
    return page


def reachable(start: int) -> set[int]:
    seen, frontier = {start}, [start]
    while frontier:
        page = frontier.pop()
        for link in ((page * 7) % 50, (page * 11 + 3) % 50):
            if link not in seen:
                seen.add(link)
                frontier.append(link)
    return seen


def test_a_link_graph_visits_each_page_once_with_unique() -> None:
    order = list(cv.iter_work_queue([0], graph_walk, workers=2, unique=True))
    assert sorted(order) == sorted(reachable(0))


def failing(task: int, add) -> int:  # type: ignore[no-untyped-def]
    if task == 3:
        raise KeyError("no such page")
    if task < 6:
        add(task + 1)
    return task


def test_errors_raise_or_are_skipped() -> None:
    with pytest.raises(cv.PipelineError, match="no such page") as info:
        cv.work_queue([0], failing, workers=2)
    assert isinstance(info.value.__cause__, KeyError)
    errors: list[tuple[int, BaseException]] = []
    got = list(cv.iter_work_queue([0, 4], failing, workers=2, on_error="skip", errors=errors))
    assert sorted(got) == [0, 1, 2, 4, 5, 6] and errors[0][0] == 3


def test_max_tasks_guards_runaway_growth() -> None:
    with pytest.raises(cv.PipelineError, match="max_tasks"):
        cv.work_queue([0], graph_walk, workers=2, max_tasks=30)


def test_empty_and_progress(capsys: pytest.CaptureFixture[str]) -> None:
    assert cv.work_queue([], graph_walk, workers=1) == []
    cv.work_queue([(0, 2, 0.0, 0.0)], tree_walk, workers=2, progress=True)
    assert "tree_walk" in capsys.readouterr().err


def fan_out(task: int, add) -> int:  # type: ignore[no-untyped-def]
    """Task -n adds tasks 0..n-1 in one go (a handler that discovers much work at once)."""
    if task < 0:
        for i in range(-task):
            add(i)
    return task


def test_a_million_added_tasks_wait_compactly_in_the_parent() -> None:
    """One handler adds 300k tasks: they must queue in the parent as tasks, not as
    300k futures (2.1 GB for a million before), with a bounded number out at a time."""
    code = (
        "import resource, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import conveyor as cv\n"
        "from test_work_queue import fan_out\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "got = cv.work_queue([-300_000], fan_out, workers=2)\n"
        "assert sorted(got) == [-300_000, *range(300_000)], len(got)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=100)
    assert out.returncode == 0, out.stderr[-2000:]
    grown_mb = int(out.stdout.split()[-1])
    # The list of added tasks costs ~20 MB in the parent; a future per task cost ~600 MB.
    assert grown_mb < 150, f"the parent grew by {grown_mb} MB"


def die_on_five(task: int, add) -> int:  # type: ignore[no-untyped-def]
    if task == -1:
        for i in range(40):
            add(i)
    if task == 5:
        os.kill(os.getpid(), signal.SIGKILL)
    return task


def test_a_dead_worker_fails_only_its_task() -> None:
    """Tasks travel in chunks: the others of the dead worker's chunk still run, once."""
    errors: list[tuple[int, BaseException]] = []
    got = list(cv.iter_work_queue([-1], die_on_five, workers=2, on_error="skip",
                                  errors=errors))
    assert sorted(got) == [-1, *(i for i in range(40) if i != 5)]
    assert [task for task, _ in errors] == [5]
    assert isinstance(errors[0][1], cv.WorkerLostError)


def many_then_slow(task: int, add) -> int:  # type: ignore[no-untyped-def]
    """Task -1 adds 3000 instant tasks, then 4 tasks (-2..-5) of 0.3 s each."""
    if task == -1:
        for i in range(3000):
            add(i)
        for i in range(2, 6):
            add(-i)
    elif task < -1:
        time.sleep(0.3)
    return task


def test_a_task_timeout_is_per_task_not_per_chunk() -> None:
    """Instant tasks would grow the chunks to hundreds of tasks, and the 0.3 s tasks
    queued after them would share one: a 0.5 s timeout must still hold for each task."""
    got = cv.work_queue([-1], many_then_slow, workers=2, task_timeout=0.5)
    assert sorted(got) == [-5, -4, -3, -2, -1, *range(3000)]


def test_bad_max_tasks() -> None:
    with pytest.raises(ValueError, match="max_tasks must be a non-negative integer"):
        cv.work_queue([0], graph_walk, max_tasks=-1)
    with pytest.raises(TypeError, match="handler must be callable"):
        cv.iter_work_queue([0], 5)  # type: ignore[arg-type]
