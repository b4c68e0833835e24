"""work_queue: tasks that add tasks, ending by itself, race-free."""

from __future__ import annotations

import time

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
