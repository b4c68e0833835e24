"""Test-wide guards: every test must leave no child process, thread or /dev/shm segment."""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SHM_DIR = Path("/dev/shm")
# Processes that a module-scoped fixture owns on purpose (a Dask LocalCluster's workers):
# not leaks of the test that runs while they live; the fixture checks its own teardown.
KEEP_PIDS: set[int] = set()
START_METHODS = ["fork", "forkserver", "spawn"]


def child_pids() -> set[int]:
    """Live (non-zombie) processes whose parent is this process."""
    me = os.getpid()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, ppid = fields[0], int(fields[1])
        if ppid == me and state != "Z":
            found.add(int(entry.name))
    return found


def conveyor_segments() -> set[str]:
    """conveyor segments that belong to this test run: owned by this process, or by a
    process that is gone (a leak). Live segments of other processes (another test run on
    the same machine) are not ours to judge."""
    from conveyor._ipc.segment import owner_alive

    me = f"conveyor_{os.getpid()}_"
    try:
        names = [p.name for p in SHM_DIR.iterdir() if "conveyor" in p.name]
    except OSError:
        return set()
    return {n for n in names if n.startswith(me) or not owner_alive(n)}


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_gone(pids: list[int], within: float) -> list[int]:
    """Wait up to ``within`` seconds for ``pids`` to be gone; return those still alive."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.01)
    return [p for p in pids if alive(p)]


def _singleton_pids() -> set[int | None]:
    # The stdlib forkserver and resource tracker, and conveyor's segment reaper, are
    # process-wide singletons that outlive pools and segments on purpose.
    from multiprocessing import forkserver, resource_tracker

    from conveyor._ipc import sweep as _shm_sweep

    return {
        getattr(forkserver._forkserver, "_forkserver_pid", None),
        getattr(resource_tracker._resource_tracker, "_pid", None),
        _shm_sweep.reaper_pid or None,
    }


@pytest.fixture(autouse=True)
def leak_guard(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves processes, threads or shared-memory segments behind."""
    threads_before = set(threading.enumerate())
    dask_test = request.node.get_closest_marker("dask") is not None
    segments_before = conveyor_segments()
    yield
    deadline = time.monotonic() + 3.0
    while True:
        allowed = _singleton_pids() | KEEP_PIDS
        children = child_pids() - allowed
        threads = {
            t
            for t in threading.enumerate()
            if t not in threads_before and t.is_alive() and t.name != "tqdm_monitor"
            and not (dask_test and not t.name.startswith("conveyor"))
        }  # tqdm's own monitor thread is shared by every bar and ends by itself; Dask's
        # client keeps pools of threads of its own, while conveyor's threads are judged
        segments = conveyor_segments() - segments_before
        if not (children or threads or segments) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    problems = []
    if children:
        problems.append(f"child processes left: {sorted(children)}")
    if threads:
        problems.append(f"threads left: {sorted(t.name for t in threads)}")
    if segments:
        problems.append(f"/dev/shm segments left: {sorted(segments)}")
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


def pytest_configure(config: pytest.Config) -> None:
    # Dump every thread's stack shortly before pytest-timeout kills a hanging test.
    timeout = float(config.getini("timeout") or 0)
    if timeout > 5:
        faulthandler.enable(file=sys.stderr)


@pytest.fixture(params=START_METHODS)
def start_method(request: pytest.FixtureRequest) -> str:
    return str(request.param)
