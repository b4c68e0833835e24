"""Shared structs, values and counters, in real processes under every start method."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import cloudpickle
import numpy as np
import pytest

import conveyor
from conveyor._ipc.segment import segment_exists


@conveyor.shared_struct
class Point:
    x: int
    y: float = 1.5


@conveyor.shared_struct
class Stats:
    processed: int
    seconds: float
    ok: bool = True
    last: Annotated[str, 8] = "none"
    raw: Annotated[bytes, 4] = b""
    hist: Annotated[list[int], 4]
    where: Point


def bump(stats: Stats, counter: conveyor.SharedCounter, n: int) -> int:
    for _ in range(n):
        stats.add("processed", 1)
        counter.increment()
        with stats.lock:  # reentrant: add() inside takes the same lock again
            stats.seconds = stats.seconds + 0.5
            stats.add("processed", 0)
    return os.getpid()


def write_fields(stats: Stats) -> str:
    stats.last = "worker"
    stats.hist[1] = 9
    stats.where.x = 42
    return stats.segment_name


def test_defaults_repr_and_equality() -> None:
    with Stats(processed=3) as s:
        assert s.processed == 3 and s.seconds == 0.0 and s.ok is True
        assert s.where.y == 1.5
        assert repr(s) == (
            "Stats(processed=3, seconds=0.0, ok=True, last='none', raw=b'', "
            "hist=[0, 0, 0, 0], where=Point(x=0, y=1.5))"
        )
        assert s.asdict()["where"] == {"x": 0, "y": 1.5}
        with Stats(3) as t:
            assert s == t
            t.hist[0] = 1
            assert s != t


def test_wrong_types_and_sizes_name_the_field() -> None:
    with Stats() as s:
        with pytest.raises(TypeError, match=r"Stats\.processed"):
            s.processed = "7"
        with pytest.raises(TypeError, match=r"Stats\.processed"):
            s.processed = 1.5
        with pytest.raises(TypeError, match=r"Stats\.seconds"):
            s.seconds = "x"
        with pytest.raises(TypeError, match=r"Stats\.ok"):
            s.ok = 1
        with pytest.raises(ValueError, match=r"Stats\.last holds at most 8 bytes"):
            s.last = "much too long"
        with pytest.raises(TypeError, match=r"Stats\.raw"):
            s.raw = "text"
        with pytest.raises(ValueError, match=r"Stats\.hist has 4 items"):
            s.hist = [1, 2]
        with pytest.raises(ValueError, match=r"Stats\.processed"):
            s.processed = 2**64
        with pytest.raises(AttributeError, match="no shared field 'typo'"):
            s.typo = 1
        s.last = "é" * 4  # 8 bytes of UTF-8 fit exactly
        assert s.last == "éééé"


def test_bad_declarations_fail_at_class_definition() -> None:
    with pytest.raises(TypeError, match=r"Bad\.items: cannot store"):

        @conveyor.shared_struct
        class Bad:
            items: list[int]

    with pytest.raises(TypeError, match=r"Clash\.lock: the name is taken"):

        @conveyor.shared_struct
        class Clash:
            lock: int

    with pytest.raises(ValueError, match=r"Long\.s holds at most 2"):

        @conveyor.shared_struct
        class Long:
            s: Annotated[str, 2] = "abc"


def test_array_fields_index_and_slice() -> None:
    with Stats() as s:
        s.hist[1:3] = [5, 6]
        assert s.hist[:] == [0, 5, 6, 0] and s.hist[-1] == 0 and len(s.hist) == 4
        s.hist[::2] = [7, 8]
        assert s.hist == [7, 5, 8, 0]
        with pytest.raises(ValueError, match=r"Stats\.hist: cannot assign 1 items"):
            s.hist[0:2] = [1]
        with pytest.raises(TypeError, match=r"Stats\.hist"):
            s.hist[0] = "x"
        with pytest.raises(IndexError):
            s.hist[4] = 1


def test_atomic_helpers() -> None:
    with Stats() as s:
        assert s.add("processed", 5) == 5
        assert s.compare_and_set("processed", 5, 6)
        assert not s.compare_and_set("processed", 5, 7)
        s.update(processed=10, last="x")
        assert (s.processed, s.last) == (10, "x")
        with pytest.raises(TypeError, match="add"):
            s.add("last", 1)
        with pytest.raises(TypeError, match=r"Stats\.last"):
            s.update(processed=1, last=3)


def test_processes_share_one_struct(start_method: str) -> None:
    ctx = multiprocessing.get_context(start_method)
    with Stats() as s, conveyor.SharedCounter() as c:
        procs = [ctx.Process(target=bump, args=(s, c, 300)) for _ in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0, 0, 0]
        assert s.processed == 900
        assert c.value == 900
        assert s.seconds == 450.0


def test_running_pool_worker_gets_the_same_object(start_method: str) -> None:
    ctx = multiprocessing.get_context(start_method)
    with Stats() as s, concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as ex:
        ex.submit(os.getpid).result()  # the worker is running before the struct exists
        assert ex.submit(write_fields, s).result() == s.segment_name
        assert (s.last, s.hist[1], s.where.x) == ("worker", 9, 42)
        assert segment_exists(s.segment_name)  # the worker attached but did not unlink


@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps])
def test_pickles_to_a_small_handle(dumps: object) -> None:
    with Stats() as s:
        data = dumps(s)  # type: ignore[operator]
        assert len(data) < 400
        other = pickle.loads(data)
        other.processed = 5
        assert s.processed == 5
        nested = pickle.loads(dumps(s.where))  # type: ignore[operator]
        nested.x = 3
        assert s.where.x == 3
        other.close()
        nested.close()
        assert segment_exists(s.segment_name)


def test_close_and_with_unlink() -> None:
    s = Stats()
    name = s.segment_name
    s.close()
    s.close()
    assert not segment_exists(name)
    with pytest.raises(RuntimeError), Stats() as t:
        name = t.segment_name
        raise RuntimeError("boom")
    assert not segment_exists(name)


def test_shared_value_and_counter(start_method: str) -> None:
    with conveyor.SharedValue("d", 1.0) as v:
        assert v.add(2) == 3.0
        assert v.compare_and_set(3.0, 4.5)
        assert not v.compare_and_set(3.0, 5.0)
        with pytest.raises(TypeError, match="float"):
            v.value = "x"  # type: ignore[assignment]
        with v.get_lock():
            v.value = v.value * 2
        assert v.value == 9.0
        assert repr(v) == "SharedValue(9.0)"
    with pytest.raises(TypeError, match="typecode"):
        conveyor.SharedValue("z")
    ctx = multiprocessing.get_context(start_method)
    with conveyor.SharedCounter(10) as c, concurrent.futures.ProcessPoolExecutor(
        2, mp_context=ctx
    ) as ex:
        assert list(ex.map(_count, [c] * 4)) == [None] * 4
        assert c.value == 10 + 4 * 200
        assert c.decrement(10) == 800
        with pytest.raises(TypeError):
            c.value = 1.5  # type: ignore[assignment]


def _count(c: conveyor.SharedCounter) -> None:
    for _ in range(200):
        c.increment()


HOLD_AND_KILL = """
import multiprocessing, os, sys
import conveyor

class Box(conveyor.SharedStruct):
    n: int

def hold(box, ready):
    with box.lock:
        ready.increment()
        while True:
            os.sched_yield()

if __name__ == "__main__":
    ctx = multiprocessing.get_context(sys.argv[1])
    with Box() as box, conveyor.SharedCounter() as ready:
        p = ctx.Process(target=hold, args=(box, ready))
        p.start()
        while ready.value == 0:
            assert p.is_alive()
        assert not box.lock.acquire(timeout=0.05), "a held lock was acquired"
        assert not box.lock.acquire(blocking=False), "a held lock was acquired"
        p.kill()  # the kernel releases the dead holder's lock
        p.join()
        assert box.lock.acquire(timeout=10), "the dead holder's lock stayed held"
        box.lock.release()
        print("ok", box.segment_name)
"""


def test_lock_excludes_other_processes_and_dies_with_its_holder(
    start_method: str, tmp_path: Path
) -> None:
    script = tmp_path / "hold_and_kill.py"
    script.write_text(HOLD_AND_KILL)
    r = subprocess.run(
        [sys.executable, str(script), start_method], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    word, name = r.stdout.split()
    assert word == "ok" and not segment_exists(name)


def test_lock_release_by_non_owner_fails() -> None:
    with Stats() as s:
        with pytest.raises(RuntimeError, match="does not hold"):
            s.lock.release()
        with s.lock, s.lock:
            assert s.lock.locked_by_me()
        assert not s.lock.locked_by_me()


class Job(conveyor.SharedStruct):
    done: int
    name: Annotated[str, 12] = "job"
    at: Point


def _finish(job: Job) -> str:
    job.add("done", 2)
    job.at.x = 7
    return job.name


def test_base_class_form_works_across_processes(start_method: str) -> None:
    ctx = multiprocessing.get_context(start_method)
    with Job(name="render") as job, concurrent.futures.ProcessPoolExecutor(
        1, mp_context=ctx
    ) as ex:
        assert ex.submit(_finish, job).result() == "render"
        assert (job.done, job.at.x, job.at.y) == (2, 7, 1.5)
        assert repr(job) == "Job(done=2, name='render', at=Point(x=7, y=1.5))"


def _bad_update(s: Stats) -> str:
    try:
        s.update(processed=99, seconds=2.5, last="x", hist=iter([1, 2, 3, 4]), ok="bad")
    except TypeError as exc:
        return str(exc)
    return "no error"


def test_update_is_all_or_nothing_across_processes(start_method: str) -> None:
    ctx = multiprocessing.get_context(start_method)
    with Stats(processed=1) as s, concurrent.futures.ProcessPoolExecutor(
        1, mp_context=ctx
    ) as ex:
        message = ex.submit(_bad_update, s).result()
        assert "Stats.ok is a bool" in message
        # The good values before the bad one were not written either.
        assert (s.processed, s.seconds, s.last, s.hist.tolist()) == (1, 0.0, "none", [0, 0, 0, 0])
        with pytest.raises(ValueError, match=r"Stats\.where\.|holds at most"):
            s.update(processed=5, where={"x": 3, "y": 0.5}, last="far too long")
        with pytest.raises(TypeError, match="no field 'nope'"):
            s.update(processed=5, nope=1)
        with pytest.raises(TypeError, match=r"Point\.x is an int"):
            s.where = {"y": 9.0, "x": "bad"}  # a nested struct assigned whole: all or nothing too
        assert (s.processed, s.where.x, s.where.y) == (1, 0, 1.5)
        # An iterator is consumed once, by the validation, and still written.
        s.update(processed=2, hist=iter([1, 2, 3, 4]))
        assert (s.processed, s.hist.tolist()) == (2, [1, 2, 3, 4])


class Counts(conveyor.SharedStruct):
    n: int
    x: float
    bins: Annotated[list[int], 2]
    label: Annotated[str, 8]
    at: Point


def _try(fn: object) -> str:
    try:
        fn()  # type: ignore[operator]
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def _misuse(c: Counts) -> list[str]:
    """Bad input in a worker: every refusal leaves the struct unchanged."""
    return [
        _try(lambda: setattr(c, "n", True)),
        _try(lambda: c.bins.__setitem__(0, False)),
        _try(lambda: c.add("n", 1.5)),
        _try(lambda: c.add("n", True)),
        _try(lambda: c.add("x", "1")),
    ]


def test_bad_values_for_int_fields_are_refused_with_the_sum_named(start_method: str) -> None:
    ctx = multiprocessing.get_context(start_method)
    with Counts(n=1) as c, concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as ex:
        bool_n, bool_bin, float_add, bool_add, str_add = ex.submit(_misuse, c).result()
        assert bool_n.startswith("TypeError: field Counts.n is an int; cannot store bool True")
        assert bool_bin.startswith("TypeError: field Counts.bins is an int; cannot store bool")
        # The message is about the sum the field would have to hold, not the argument alone.
        assert float_add == (
            "TypeError: add('n', 1.5): field Counts.n is an int, and 1 + 1.5 = 2.5 is a float, "
            "which it cannot hold; pass an int delta (or declare the field as float)"
        )
        assert bool_add == "TypeError: add('n', True): the delta must be a number for field Counts.n, not bool"
        assert str_add.startswith("TypeError: add('x', '1'): the delta must be a number")
        assert (c.n, c.bins.tolist()) == (1, [0, 0])
        assert c.add("x", 2) == 2.0 and c.add("n", 2) == 3


def test_any_use_of_a_closed_struct_says_it_was_closed() -> None:
    c = Counts()
    bins, at = c.bins, c.at
    c.close()
    uses = [
        lambda: c.n, lambda: setattr(c, "n", 1), lambda: c.label, lambda: setattr(c, "label", "a"),
        lambda: c.bins, lambda: bins[0], lambda: bins.__setitem__(0, 1), lambda: bins.tolist(),
        lambda: c.at, lambda: at.x, lambda: setattr(at, "x", 1), lambda: c.add("n", 1),
        lambda: c.add("x", 0.5), lambda: c.update(n=1), lambda: c.asdict(),
        lambda: c.compare_and_set("n", 0, 1), lambda: c.lock.acquire(),
    ]
    for use in uses:
        with pytest.raises(conveyor.SharedObjectClosedError, match=r"the shared struct Counts \(conveyor_.*\) was closed"):
            use()
    assert issubclass(conveyor.SharedObjectClosedError, ValueError)
    assert repr(c) == "<Counts (closed)>"
    c.close()  # still a no-op


def _value_kinds() -> list[tuple[str, object]]:
    out = []
    for kind in ("int64", "int32", "float32", "float64", "<i8", "i", "d", int, float, np.int16, np.dtype("f8")):
        with conveyor.SharedValue(kind) as v:
            out.append((v._code, v.value))
    return out


def test_shared_value_takes_the_dtype_spellings_shared_array_takes(start_method: str) -> None:
    ctx = multiprocessing.get_context(start_method)
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as ex:
        kinds = ex.submit(_value_kinds).result()
    assert [k for k, _ in kinds] == ["q", "q", "d", "d", "q", "q", "d", "q", "d", "q", "d"]
    assert [type(v) for _, v in kinds] == [int, int, float, float, int, int, float, int, float, int, float]
    with pytest.raises(TypeError, match="got 'complex128'"):
        conveyor.SharedValue("complex128")
    with conveyor.SharedValue("int64", 1) as v:
        with pytest.raises(TypeError, match=r"1 \+ 1\.5 = 2\.5 is a float"):
            v.add(1.5)
        assert v.value == 1
    v.close()
    with pytest.raises(conveyor.SharedObjectClosedError, match=r"SharedValue .* was closed"):
        _ = v.value
    with pytest.raises(conveyor.SharedObjectClosedError, match=r"SharedValue .* was closed"):
        v.add(1)
