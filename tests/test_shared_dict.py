"""SharedDict and SharedList: dict/list semantics, growth, and use from running workers."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import pickle
import random
from typing import Any

import cloudpickle
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import conveyor
from conveyor._ipc.segment import SHM_DIR, segment_exists


def count_words(d: conveyor.SharedDict, words: list[str]) -> int:
    for w in words:
        d.add(w, 1)
    return len(words)


def fill(d: conveyor.SharedDict, lst: conveyor.SharedList, start: int) -> None:
    for i in range(start, start + 200):
        d[i] = "v" * (i % 50)  # many keys: the segment grows while others use it
        lst.append(i)


def test_dict_semantics() -> None:
    with conveyor.SharedDict({"a": 1}, initial_bytes=100) as d:
        d["b"] = [1, 2]
        d[(1, "x", None, b"z")] = {"nested": True}
        d[2.0] = "two"
        assert d[2] == "two" and d[True + 1] == "two"
        assert d[(1, "x", None, b"z")] == {"nested": True}
        assert set(d.keys()) == {"a", "b", (1, "x", None, b"z"), 2}
        assert len(d) == 4 and "a" in d and "zz" not in d
        assert d.pop("a") == 1 and d.pop("a", None) is None
        with pytest.raises(KeyError):
            d["a"]
        with pytest.raises(KeyError):
            del d["a"]
        assert d.setdefault("c", 5) == 5 and d.setdefault("c", 6) == 5
        d.update({"e": 1}, f=2)
        assert d.add("e", 2) == 3 and d.add("new", 1.5) == 1.5
        assert d == {"b": [1, 2], (1, "x", None, b"z"): {"nested": True}, 2: "two",
                     "c": 5, "e": 3, "f": 2, "new": 1.5}
        with pytest.raises(TypeError, match="keys must be str"):
            d[[1]] = 1
        with pytest.raises(TypeError, match="nan"):
            d[float("nan")] = 1
        d.clear()
        assert len(d) == 0 and d.copy() == {}
        assert repr(d) == "SharedDict({})"


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["set", "del", "get"]), st.integers(0, 40),
                          st.binary(max_size=300))))
def test_dict_matches_a_dict(ops: list[tuple[str, int, bytes]]) -> None:
    ref: dict[int, bytes] = {}
    with conveyor.SharedDict(initial_bytes=1) as d:
        for op, k, v in ops:
            if op == "set":
                d[k] = ref[k] = v
            elif op == "del":
                assert d.pop(k, None) == ref.pop(k, None)
            else:
                assert d.get(k) == ref.get(k)
        assert d.copy() == ref


def test_dict_survives_churn_with_rebuilds() -> None:
    rng = random.Random(1)
    ref: dict[int, str] = {}
    with conveyor.SharedDict(initial_bytes=1) as d:
        for _ in range(5000):
            k = rng.randrange(300)
            if rng.random() < 0.7:
                d[k] = ref[k] = "x" * rng.randrange(200)
            else:
                assert d.pop(k, None) == ref.pop(k, None)
        assert d.copy() == ref


def test_list_semantics() -> None:
    with conveyor.SharedList(range(3)) as lst:
        lst.append("a")
        lst.insert(0, -1)
        lst.insert(-1, "before a")
        assert lst.tolist() == [-1, 0, 1, 2, "before a", "a"]
        lst[1] = "x" * 1000
        assert lst[1] == "x" * 1000 and lst[-1] == "a"
        del lst[1]
        assert lst.pop() == "a" and lst.pop(0) == -1
        assert lst == [1, 2, "before a"]
        lst[0:2] = [7]
        assert lst[:] == [7, "before a"]
        del lst[:1]
        assert list(lst) == ["before a"]
        with pytest.raises(IndexError):
            lst[5]
        lst.extend(range(2000))
        assert len(lst) == 2001 and lst[2000] == 1999 and sum(lst[1:]) == sum(range(2000))
        assert 1999 in lst
        lst.clear()
        assert lst == [] and repr(lst) == "SharedList([])"


@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps])
def test_pickle_sends_a_handle(dumps: object) -> None:
    with conveyor.SharedDict({"k": "v" * 100_000}) as d:
        data = dumps(d)  # type: ignore[operator]
        assert len(data) < 300
        other = pickle.loads(data)
        other["x"] = 1
        assert d["x"] == 1
        other.close()
        assert segment_exists(d.name)


def test_pool_fills_a_dict(start_method: str) -> None:
    ctx = multiprocessing.get_context(start_method)
    words = [f"w{i % 7}" for i in range(700)]
    chunks = [words[i : i + 100] for i in range(0, 700, 100)]
    with conveyor.SharedDict() as d, conveyor.SharedList() as lst, \
            concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        assert sum(ex.map(count_words, [d] * len(chunks), chunks)) == 700
        assert d.copy() == {f"w{i}": 100 for i in range(7)}
        list(ex.map(fill, [d] * 3, [lst] * 3, [1000, 2000, 3000]))
        assert len(d) == 7 + 600
        assert d[3199] == "v" * (3199 % 50)
        assert sorted(lst) == sorted(range(1000, 1200)) + sorted(range(2000, 2200)) + sorted(
            range(3000, 3200))


def _allocated(name: str) -> int:
    """Bytes /dev/shm holds for a segment (pages in use, not the file's length)."""
    return os.stat(SHM_DIR / name).st_blocks * 512


def _store_blobs(store: Any, keys: range, size: int) -> int:
    for k in keys:
        if isinstance(store, conveyor.SharedDict):
            store[k] = bytes([k % 256]) * size
        else:
            store.append(bytes([k % 256]) * size)
    return len(store)


def _drop(store: Any, keys: range) -> int:
    for k in keys:
        if isinstance(store, conveyor.SharedDict):
            del store[k]
        else:
            store.pop()
    return len(store)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["dict", "list"])
def test_memory_is_reused_and_given_back(kind: str, start_method: str) -> None:
    ctx = multiprocessing.get_context(start_method)
    blob = 100_000
    with (conveyor.SharedDict() if kind == "dict" else conveyor.SharedList()) as store, \
            concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as ex:
        assert ex.submit(_store_blobs, store, range(400), blob).result() == 400  # 40 MB, by a worker
        peak = _allocated(store.name)
        assert peak >= 400 * blob
        # Shrinking to a small fraction of the peak gives memory back, and the worker,
        # which maps the longer file, goes on using it (no SIGBUS: it maps again).
        assert ex.submit(_drop, store, range(390, 10, -1) if kind == "dict" else range(380)).result() == 20
        assert _allocated(store.name) <= peak // 8
        if kind == "dict":
            assert store[5] == bytes([5]) * blob and store[399] == bytes([399 % 256]) * blob
        else:
            assert store[19] == bytes([19]) * blob
        # Freed space is reused: storing and dropping the same amount again and again
        # does not grow past the first peak.
        for _ in range(3):
            ex.submit(_store_blobs, store, range(1000, 1300), blob).result()
            ex.submit(_drop, store, range(1000, 1300) if kind == "dict" else range(300)).result()
            assert _allocated(store.name) <= peak
        store.clear()
        assert _allocated(store.name) <= 1 << 17 and len(store) == 0
        assert ex.submit(_store_blobs, store, range(3), 10).result() == 3  # still usable there
        assert len(store) == 3
