"""Shared objects through conveyor's own Pool: pickled (protocol 5, cloudpickle fallback) to
running workers, they arrive as the same shared memory."""

from __future__ import annotations

import numpy as np

import conveyor


class Tally(conveyor.SharedStruct):
    tasks: int
    total: float


def record(tally: Tally, counts: conveyor.SharedDict, grid: conveyor.SharedArray, i: int) -> int:
    tally.add("tasks", 1)
    tally.add("total", float(i))
    counts.add(i % 3, 1)
    grid[i] = i * i
    return i


def test_pool_tasks_share_structs_dicts_and_arrays(start_method: str) -> None:
    with Tally() as tally, conveyor.SharedDict() as counts, \
            conveyor.SharedArray(30, "int64") as grid, \
            conveyor.Pool(workers=2, start_method=start_method) as pool:
        n = 30
        assert pool.map(record, [tally] * n, [counts] * n, [grid] * n, range(n)) == list(range(n))
        assert (tally.tasks, tally.total) == (n, float(sum(range(n))))
        assert counts.copy() == {0: 10, 1: 10, 2: 10}
        np.testing.assert_array_equal(grid.array, np.arange(n) ** 2)


def test_closures_over_shared_objects_go_by_cloudpickle(start_method: str) -> None:
    with conveyor.SharedCounter() as done, conveyor.SharedList() as seen, \
            conveyor.Pool(workers=2, start_method=start_method) as pool:
        # A lambda cannot be pickled; the pool falls back to cloudpickle, which sends the
        # shared objects it captures as handles too.
        pool.map(lambda x: (done.increment(), seen.append(x)), range(20))
        assert done.value == 20
        assert sorted(seen) == list(range(20))


def tally_item(item: tuple[Tally, conveyor.SharedDict, int]) -> int:
    tally, seen, i = item
    tally.add("tasks", 1)
    seen[i] = i * 2
    return i


def test_pipeline_stages_share_the_same_objects(start_method: str) -> None:
    with Tally() as tally, conveyor.SharedDict() as seen:
        # Shared objects travel as items and inside a stage's closure alike.
        out = (
            conveyor.Pipeline(((tally, seen, i) for i in range(20)), start_method=start_method)
            .map(tally_item, workers=2)
            .map(lambda i: (seen.add("sum", i), i)[1], workers=1)
            .run()
        )
        assert out == list(range(20))
        assert tally.tasks == 20
        assert seen["sum"] == sum(range(20))
        assert {k: v for k, v in seen.items() if k != "sum"} == {i: 2 * i for i in range(20)}
