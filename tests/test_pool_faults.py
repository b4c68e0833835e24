"""A pool that survives: each fault runs in a fresh interpreter, and afterwards no process
and no /dev/shm segment of the run may be left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import alive, conveyor_segments, wait_gone

SCENARIO = Path(__file__).parent / "scenarios" / "pool_faults.py"
pytestmark = pytest.mark.timeout(90)


def segments_of(pids: set[int]) -> set[str]:
    """Segments in /dev/shm owned by any of ``pids`` (names carry the owner's pid)."""
    return {n for n in conveyor_segments() if int(n.split("_")[1]) in pids}


def run(tmp_path: Path, *args: str, timeout: float = 60) -> list[dict[str, Any]]:
    proc = subprocess.Popen(
        [sys.executable, str(SCENARIO), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "SCENARIO_DIR": str(tmp_path)},
    )
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    facts = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    pids = {proc.pid}
    for f in facts:
        assert not wait_gone(f.get("pids", []), 2.0), f"workers left behind: {f}"
        pids.update(f.get("pids", []))
    assert segments_of(pids) == set()
    return facts


@pytest.mark.parametrize("how", ["sigkill", "sigsegv", "exit"])
@pytest.mark.parametrize("api", ["map", "imap", "imap_unordered", "submit"])
def test_a_dead_worker_fails_only_its_task(tmp_path: Path, how: str, api: str) -> None:
    facts = run(tmp_path, "worker_death", how, api)[-1]
    assert facts["error"] == "WorkerLostError"
    assert facts["task_index"] == 5
    assert "task 5 " in facts["message"] and "task(5" in facts["message"].replace("_star_task((", "task(")
    if how == "exit":
        assert facts["exitcode"] == 3 and "exited with code 3" in facts["message"]
    else:
        assert facts["signal"] == {"sigkill": "SIGKILL", "sigsegv": "SIGSEGV"}[how]
    assert facts["delivered"] == 19  # every other task completed and came back
    assert facts["after"] == [1, 2, 3]
    assert facts["latency"] < 2.0  # generous bound; the benchmark measures the real figure


def test_imap_raises_at_the_dead_tasks_position(tmp_path: Path) -> None:
    facts = run(tmp_path, "worker_death", "sigkill", "imap")
    order = facts[0]["order"]
    assert order[5] == "error" and order[:5] == [0, 1, 2, 3, 4] and order[6:] == list(range(6, 20))


def test_imap_unordered_delivers_the_others(tmp_path: Path) -> None:
    facts = run(tmp_path, "worker_death", "sigkill", "imap_unordered")
    order = facts[0]["order"]
    assert order.count("error") == 1 and sorted(x for x in order if x != "error") == [
        x for x in range(20) if x != 5
    ]


def test_task_timeout_kills_and_replaces_only_that_worker(tmp_path: Path) -> None:
    facts = run(tmp_path, "timeout")[-1]
    assert facts["outcomes"] == [0, 1, "TaskTimeoutError", 3, 4, 5, 6, 7]
    assert facts["replaced"] == 1
    assert facts["elapsed"] < 10  # not the 30 s the task wanted


def test_cancel_force_stops_a_running_task(tmp_path: Path) -> None:
    facts = run(tmp_path, "cancel_running")[-1]
    assert facts["plain"] is False  # standard meaning: a running task is not cancelled
    assert facts["forced"] is True and facts["cancelled"] is True
    assert facts["after"] == 32 and facts["replaced"] == 1
    assert facts["elapsed"] < 10


def test_retries_rerun_tasks_whose_worker_died(tmp_path: Path) -> None:
    facts = run(tmp_path, "retries", str(tmp_path))[-1]
    assert facts == {"first": "ok", "second": ["ok"], "third": "ok", "fourth": "lost"}


def test_max_worker_memory_replaces_workers_between_tasks(tmp_path: Path) -> None:
    facts = run(tmp_path, "memory")[-1]
    assert facts["replaced"] >= 2 and facts["distinct"] >= 3


def test_idle_workers_killed_from_outside_are_replaced(tmp_path: Path) -> None:
    facts = run(tmp_path, "idle_killed")[-1]
    assert facts["first"] == [1, 2] and facts["second"] == [3, 4, 5] and facts["third"] == 6


def test_ctrl_c_interrupts_the_parent_and_stops_every_worker(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(SCENARIO), "ctrl_c"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    pids = json.loads(proc.stdout.readline())["pids"]
    json.loads(proc.stdout.readline())  # ready
    time.sleep(0.5)
    sent = time.time()
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    facts = json.loads(out.splitlines()[0])
    assert facts["interrupted"]
    assert facts["at"] - sent < 1.0  # within 0.2 s here; the bound is generous for CI noise
    assert proc.returncode != 0
    assert err.count("Traceback (most recent call last)") == 1  # the parent's, only
    assert "KeyboardInterrupt" in err
    assert not wait_gone(pids, 1.0)
    assert segments_of({proc.pid, *pids}) == set()


def test_workers_exit_when_the_parent_is_killed(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(SCENARIO), "parent_dies"], stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    pids = json.loads(proc.stdout.readline())["pids"]
    assert all(alive(p) for p in pids)
    proc.kill()
    proc.wait()
    proc.stdout.close()  # not read to EOF: a surviving worker would hold it open
    left = wait_gone(pids, 0.5)
    for pid in left:  # clean up before failing, so one bug does not leak into other tests
        os.kill(pid, signal.SIGKILL)
    assert not left, f"workers {left} outlived their parent"
