"""SharedArray: numpy in shared memory, sent as a handle, written in place by workers."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import pickle

import cloudpickle
import numpy as np
import pytest

import conveyor
from conveyor._ipc.segment import segment_exists


def fill_row(a: conveyor.SharedArray, row: int) -> float:
    a[row] = row + 1
    return float(a.array.sum())


def add_under_lock(a: conveyor.SharedArray, times: int) -> None:
    for _ in range(times):
        with a.lock:
            a[0] += 1


def test_basics() -> None:
    with conveyor.SharedArray((3, 4), "float32") as a:
        assert a.shape == (3, 4) and a.dtype == np.float32
        assert not a.array.any()
        a[1, :] = 2
        assert float(np.asarray(a).sum()) == 8.0
        assert a.sum() == 8.0
        assert len(a) == 3
        assert "SharedArray shape=(3, 4)" in repr(a)
    with conveyor.SharedArray(0, "int8") as empty:
        assert empty.shape == (0,)
    with pytest.raises(TypeError, match="cannot hold dtype object"):
        conveyor.SharedArray(3, object)
    with pytest.raises(ValueError, match="negative"):
        conveyor.SharedArray((-1, 2))


def test_from_array_keeps_values_and_order() -> None:
    src = np.asfortranarray(np.arange(12, dtype=np.int64).reshape(3, 4))
    with conveyor.SharedArray.from_array(src) as a:
        assert a.array.flags.f_contiguous
        np.testing.assert_array_equal(a.array, src)
        back = pickle.loads(pickle.dumps(a))
        np.testing.assert_array_equal(back.array, src)
        back.close()


@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps])
def test_pickle_sends_only_a_handle(dumps: object) -> None:
    with conveyor.SharedArray((1000, 1000), "float64") as a:
        data = dumps(a)  # type: ignore[operator]
        assert len(data) < 500  # not 8 MB
        b = pickle.loads(data)
        b[5, 5] = 3.0
        assert a[5, 5] == 3.0
        b.close()
        assert segment_exists(a.name)


def test_workers_write_in_place(start_method: str) -> None:
    ctx = multiprocessing.get_context(start_method)
    with conveyor.SharedArray((4, 8), "int64") as a, concurrent.futures.ProcessPoolExecutor(
        2, mp_context=ctx
    ) as ex:
        list(ex.map(fill_row, [a] * 4, range(4)))
        np.testing.assert_array_equal(a.array[:, 0], [1, 2, 3, 4])
        assert a.array.sum() == 8 * (1 + 2 + 3 + 4)


def test_lock_makes_increments_exact(start_method: str) -> None:
    ctx = multiprocessing.get_context(start_method)
    with conveyor.SharedArray(1, "int64") as a:
        procs = [ctx.Process(target=add_under_lock, args=(a, 300)) for _ in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0, 0, 0]
        assert a[0] == 900


def test_view_outlives_close_safely() -> None:
    a = conveyor.SharedArray(5, "int64")
    view = a.array
    view[:] = 7
    a.close()
    assert not segment_exists(a.name)
    assert view.sum() == 35  # still mapped: no crash after close
    del view


def test_bad_shapes_name_the_size_asked_and_the_limit() -> None:
    with pytest.raises(ValueError, match=r"shape \(4611686018427387904,\) and dtype float64 would need 36893488147419103232 bytes .* the limit is 9223372036854775807 bytes"):
        conveyor.SharedArray((2**62,))
    for bad in ((2.0,), 2.5, "3", (True, 2)):
        with pytest.raises(TypeError, match="shape must be an int or a tuple of ints"):
            conveyor.SharedArray(bad)  # type: ignore[arg-type]
    with conveyor.SharedArray((np.int64(2), 3)) as a:
        assert a.shape == (2, 3)
