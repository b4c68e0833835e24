"""Bad input gets a clear error that names the problem; errors carry facts and pickle."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import pickle
import threading
from concurrent.futures.process import BrokenProcessPool

import pytest

import conveyor as cv
from helpers import Unpicklable, fail_on, identity, raise_in_init, return_unpicklable, square

pytestmark = pytest.mark.timeout(60)


class Unreturnable(Exception):
    """An exception whose constructor signature breaks unpickling."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}+{b}")


def raise_unreturnable(_: object) -> None:
    raise Unreturnable(1, 2)


def test_task_exception_keeps_type_and_worker_traceback() -> None:
    with cv.Pool(1) as pool:
        with pytest.raises(ValueError, match="bad item 3") as info:
            pool.map(fail_on, range(5))
        cause = info.value.__cause__
        assert isinstance(cause, cv.RemoteTraceback)
        text = str(cause)
        assert "helpers.py" in text and "fail_on" in text and "raise ValueError" in text
        assert "_worker.py" not in text  # conveyor's own frames are trimmed
        assert pool.map(square, [2]) == [4]  # the pool stays usable


def test_exception_that_cannot_travel_becomes_remote_error() -> None:
    with cv.Pool(1) as pool, pytest.raises(cv.RemoteError, match="Unreturnable: 1\\+2"):
        pool.apply(raise_unreturnable, (0,))


def test_unpicklable_function_names_the_function() -> None:
    lock = threading.Lock()
    with cv.Pool(1) as pool:
        with pytest.raises(cv.SerializationError, match="cannot pickle the function") as info:
            pool.submit(lambda: lock)
        assert info.value.what == "function"
        assert "module level" in str(info.value)


def test_unpicklable_argument_names_the_task() -> None:
    items = [1, 2, Unpicklable(), 4]
    with cv.Pool(1) as pool:
        with pytest.raises(cv.SerializationError, match="task 2") as info:
            pool.map(identity, items, chunksize=1)
        assert info.value.task_index == 2
        with pytest.raises(cv.SerializationError, match="argument 1"):
            pool.submit(print, "ok", Unpicklable())
        with pytest.raises(cv.SerializationError, match="task 2"):
            list(pool.imap(identity, items))


def test_unpicklable_result_names_the_result() -> None:
    with cv.Pool(1) as pool:
        with pytest.raises(cv.SerializationError, match="cannot pickle the result"):
            pool.apply(return_unpicklable)
        assert pool.apply(square, (3,)) == 9


@pytest.mark.parametrize("workers", [0, -1, 1.5, True])
def test_bad_worker_counts(workers: object) -> None:
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        cv.Pool(workers)  # type: ignore[arg-type]


def test_bad_options_raise_value_error() -> None:
    with pytest.raises(ValueError, match="maxtasksperchild"):
        cv.Pool(1, maxtasksperchild=0)
    with pytest.raises(ValueError, match="task_timeout"):
        cv.Pool(1, task_timeout=-1)
    with pytest.raises(ValueError, match="max_worker_memory"):
        cv.Pool(1, max_worker_memory=0)
    with pytest.raises(TypeError, match="initializer must be callable"):
        cv.Pool(1, initializer=42)  # type: ignore[arg-type]
    with cv.Pool(1) as pool:
        with pytest.raises(ValueError, match="chunksize must be >= 1"):
            pool.map(square, range(3), chunksize=-2)
        with pytest.raises(ValueError, match="chunksize must be >= 1"):
            pool.imap(square, range(3), chunksize=0)
        with pytest.raises(ValueError, match="task_timeout"):
            pool.map(square, range(3), task_timeout=0)
        with pytest.raises(ValueError, match="retries"):
            pool.map(square, range(3), retries=-1)
        with pytest.raises(TypeError, match="callable"):
            pool.submit(42)  # type: ignore[arg-type]


def test_failing_initializer_fails_the_work_instead_of_hanging() -> None:
    pool = cv.Pool(2, initializer=raise_in_init)
    with pytest.raises(cv.WorkerStartError, match="initializer raised RuntimeError") as info:
        pool.apply(square, (2,))
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(cv.WorkerStartError):
        pool.submit(square, 1)
    pool.terminate()


def test_error_classes_subclass_the_standard_ones() -> None:
    lost = cv.WorkerLostError(3, "f(3)", 123, -9, 2**20, "a guess")
    assert isinstance(lost, BrokenProcessPool) and isinstance(lost, cv.ConveyorError)
    assert lost.signal_name == "SIGKILL" and "task 3 f(3)" in str(lost)
    assert isinstance(cv.TaskTimeoutError(1, "f(1)", 2.0, 5), TimeoutError)
    timeout = cv.ResultTimeoutError("x")
    assert isinstance(timeout, multiprocessing.TimeoutError)
    assert isinstance(timeout, concurrent.futures.TimeoutError)
    closed = cv.PoolClosedError("closed")
    assert isinstance(closed, ValueError) and isinstance(closed, RuntimeError)
    assert isinstance(cv.SerializationError("x"), pickle.PicklingError)
    assert isinstance(cv.WorkerStartError("x"), BrokenProcessPool)


@pytest.mark.parametrize("error", [
    cv.WorkerLostError(3, "f(3)", 123, -9, None, None),
    cv.TaskTimeoutError(1, "f(1)", 2.0, 5),
    cv.SerializationError("cannot", what="argument", task_index=4),
    cv.RemoteError("Thing", "broke"),
    cv.PipelineError("parse", "'line'"),
    cv.RemoteTraceback("tb text"),
])
def test_errors_pickle_with_their_facts(error: Exception) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error) and str(copy) == str(error)
    assert copy.__dict__ == error.__dict__
    assert type(copy).__module__ == "conveyor"


def test_public_names_match_all() -> None:
    assert set(cv.__all__) == set(cv._EXPORTS)  # every export is listed, and only those
    for name in cv.__all__:
        assert getattr(cv, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'Poool'"):
        cv.Poool  # type: ignore[attr-defined]  # noqa: B018


def test_import_is_cheap_and_lazy() -> None:
    import subprocess
    import sys

    code = "import sys, conveyor; print(sorted(m for m in sys.modules if m.startswith('conveyor')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "['conveyor']"  # nothing heavy (numpy, tqdm, Dask) either
    code = "import sys, conveyor; print('numpy' in sys.modules, 'tqdm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False False"
