"""team(): collectives, results in rank order, and failing promptly when a member fails."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import conveyor
from conveyor import TeamBrokenError, TeamContext


def collectives(ctx: TeamContext, scale: int) -> tuple[object, ...]:
    ctx.barrier()
    b = ctx.broadcast({"from": ctx.rank} if ctx.rank == 1 else None, root=1)
    g = ctx.gather(ctx.rank * scale)
    s = ctx.allreduce(ctx.rank + 1)
    p = ctx.allreduce(ctx.rank + 1, op="prod")
    mn = ctx.allreduce(np.array([ctx.rank, -ctx.rank]), op="min")
    arr = ctx.allreduce(np.full(3, float(ctx.rank)))
    cat = ctx.allreduce([ctx.rank], op=_concat)
    return ctx.rank, ctx.size, b, g, s, p, mn.tolist(), arr.tolist(), cat


def _concat(a: list[int], b: list[int]) -> list[int]:
    return a + b


def test_collectives(start_method: str) -> None:
    out = conveyor.team(3, collectives, 10, start_method=start_method)
    for rank, row in enumerate(out):
        assert row == (rank, 3, {"from": 1}, [0, 10, 20], 6, 6, [0, -2], [3.0] * 3, [0, 1, 2])


def test_closures_and_shared_arrays_reach_members() -> None:
    offset = 5
    with conveyor.SharedArray(4, "int64") as a:

        def write(ctx: TeamContext) -> int:
            a[ctx.rank] = ctx.rank + offset
            ctx.barrier()
            return int(a.array.sum())

        assert conveyor.team(4, write, start_method="spawn") == [26] * 4
        assert a.array.tolist() == [5, 6, 7, 8]


def test_block_partitions_the_range() -> None:
    parts = [TeamContext(r, 3, None).block(10) for r in range(3)]  # type: ignore[arg-type]
    assert [list(p) for p in parts] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]


def raise_in_one(ctx: TeamContext, seen: conveyor.SharedArray) -> None:
    if ctx.rank == 1:
        time.sleep(0.2)
        raise ValueError("boom in rank 1")
    try:
        ctx.barrier()
    except TeamBrokenError as exc:
        seen[ctx.rank] = 1 + (exc.failed_rank or 0)
        raise


def test_member_error_breaks_the_barrier_and_reaches_the_parent(start_method: str) -> None:
    with conveyor.SharedArray(3, "int64") as seen:
        with pytest.raises(ValueError, match="boom in rank 1") as info:
            conveyor.team(3, raise_in_one, seen, start_method=start_method)
        cause = info.value.__cause__
        assert isinstance(cause, conveyor.RemoteTraceback)
        assert "raise_in_one" in str(cause)
        # The waiting members failed with TeamBrokenError naming rank 1 (stored as 1 + 1).
        assert seen.array.tolist() == [2, 0, 2]


KILL_ONE = """
import os, sys
import conveyor

def kill_one(ctx):
    if ctx.rank == 0:
        os.kill(os.getpid(), 9)
    ctx.barrier()

if __name__ == "__main__":
    try:
        conveyor.team(2, kill_one, start_method=sys.argv[1])
    except conveyor.TeamMemberLostError as exc:
        print(exc.rank, exc.signal_name)
"""


def test_member_death_breaks_the_barrier(start_method: str, tmp_path: Path) -> None:
    script = tmp_path / "kill_one.py"
    script.write_text(KILL_ONE)
    r = subprocess.run(
        [sys.executable, str(script), start_method], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0", "SIGKILL"]


def slow_member(ctx: TeamContext) -> None:
    if ctx.rank == 1:
        time.sleep(0.5)
        ctx.barrier()
    else:
        ctx.barrier(timeout=0.1)


def test_barrier_timeout_breaks_the_team() -> None:
    with pytest.raises(TeamBrokenError, match=r"timed out after 0\.1 s in barrier"):
        conveyor.team(2, slow_member)


def mismatched(ctx: TeamContext) -> None:
    if ctx.rank == 0:
        ctx.barrier()
    else:
        ctx.gather(1)


def test_mismatched_collectives_are_reported() -> None:
    with pytest.raises(TeamBrokenError, match=r"rank 0 called barrier\(\), rank 1 called gather"):
        conveyor.team(2, mismatched)


def returns_early(ctx: TeamContext) -> int:
    if ctx.rank == 0:
        ctx.barrier()
    return ctx.rank


def test_member_returning_while_others_wait() -> None:
    with pytest.raises(TeamBrokenError, match="rank 1"):
        conveyor.team(2, returns_early)


def test_bad_size() -> None:
    with pytest.raises(ValueError, match="at least one"):
        conveyor.team(0, returns_early)
    for bad in ("2", 2.0, True, None):
        with pytest.raises(TypeError, match=rf"n is the number of members .* got {type(bad).__name__} {bad!r}"):
            conveyor.team(bad, returns_early)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"fn must be a function of .* got int 3"):
        conveyor.team(2, 3)  # type: ignore[arg-type]


EXIT_IN_MEMBER = """
import sys, time
import conveyor

def member(ctx):
    if ctx.rank == 1:
        sys.exit(int(sys.argv[2]))
    ctx.barrier()  # rank 0 learns of the exit here
    return ctx.rank

if __name__ == "__main__":
    if sys.argv[3] == "catch":
        try:
            conveyor.team(2, member, start_method=sys.argv[1])
        except SystemExit as exc:
            print("caught", exc.code, type(exc.__cause__).__name__, flush=True)
    else:
        conveyor.team(2, member, start_method=sys.argv[1])
        print("not reached")
"""


@pytest.mark.timeout(60)
def test_sys_exit_in_a_member_exits_the_caller(start_method: str, tmp_path: Path) -> None:
    # Documented: a member's sys.exit(code) stops the team and raises SystemExit(code)
    # in the caller, as ProcessPoolExecutor does for a task's sys.exit.
    script = tmp_path / "exit_in_member.py"
    script.write_text(EXIT_IN_MEMBER)
    run = [sys.executable, str(script), start_method]
    r = subprocess.run([*run, "5", "uncaught"], capture_output=True, text=True, timeout=50)
    assert (r.returncode, r.stdout) == (5, ""), r.stderr
    r = subprocess.run([*run, "7", "catch"], capture_output=True, text=True, timeout=50)
    assert (r.returncode, r.stdout.split()) == (0, ["caught", "7", "RemoteTraceback"]), r.stderr


def test_ctrl_c_stops_every_member() -> None:
    code = textwrap.dedent("""
        import os, signal, threading, conveyor

        def spin(ctx, a):
            while True:
                ctx.barrier()
                a[ctx.rank] += 1

        if __name__ == "__main__":
            a = conveyor.SharedArray(2, "int64")
            print(a.name, flush=True)
            threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
            conveyor.team(2, spin, a)
    """)
    path = "/tmp/conveyor_team_ctrl_c.py"
    with open(path, "w") as f:
        f.write(code)
    try:
        r = subprocess.run([sys.executable, path], capture_output=True, text=True, timeout=60)
    finally:
        os.unlink(path)
    assert "KeyboardInterrupt" in r.stderr
    assert r.returncode != 0
    name = r.stdout.strip()
    assert name and not os.path.exists(f"/dev/shm/{name}")


def lockstep(ctx: TeamContext, steps: conveyor.SharedArray, rounds: int) -> int:
    behind = 0
    for step in range(1, rounds + 1):
        steps[ctx.rank] = step
        ctx.barrier()
        # Nobody may leave a barrier before everyone reached it.
        behind += int((steps.array < step).sum())
        ctx.barrier()
    return behind


@pytest.mark.parametrize("members", [2, 5])  # 5 > cores: waiters sleep instead of spinning
def test_barrier_keeps_members_in_lockstep(members: int) -> None:
    with conveyor.SharedArray(members, "int64") as steps:
        assert conveyor.team(members, lockstep, steps, 300) == [0] * members
        assert steps.array.tolist() == [300] * members


def die_while_others_sleep(ctx: TeamContext) -> None:
    if ctx.rank == 2:
        time.sleep(0.3)  # the others are asleep in the barrier by now
        os._exit(3)
    ctx.barrier()


def test_exit_while_others_sleep_in_the_barrier() -> None:
    with pytest.raises(conveyor.TeamMemberLostError, match=r"rank 2 .* exited with code 3"):
        conveyor.team(3, die_while_others_sleep)


PARENT_DIES = """
import os, sys, threading, time
import conveyor

def member(ctx):
    os.write(1, f"{os.getpid()}\\n".encode())  # one write: the members share the pipe
    if ctx.rank == 1:
        time.sleep(1)  # never reaches the barrier while the parent lives
        return
    ctx.barrier()

if __name__ == "__main__":
    threading.Timer(0.5, os.kill, (os.getpid(), 9)).start()
    conveyor.team(2, member, start_method=sys.argv[1])
"""


def test_members_waiting_in_a_barrier_exit_when_the_parent_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "parent_dies.py"
    script.write_text(PARENT_DIES)
    r = subprocess.run(
        [sys.executable, str(script), "fork"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == -9
    pids = [int(p) for p in r.stdout.split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/proc/{p}") for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in pids if os.path.exists(f"/proc/{p}")], "a member outlived its parent"


def bad_root(ctx: TeamContext) -> None:
    ctx.broadcast(1, root=ctx.size)


def test_broadcast_root_is_checked() -> None:
    with pytest.raises(ValueError, match=r"root must be a rank in 0\.\.1; got 2"):
        conveyor.team(2, bad_root)


CTRL_C_GROUP = """
import os, sys, conveyor

def note(path, text):
    with open(path, "a") as f:
        f.write(text + "\\n")

def spin(ctx, a, path):
    note(path, str(os.getpid()))
    while True:
        ctx.barrier()
        a[ctx.rank] += 1

if __name__ == "__main__":
    a = conveyor.SharedArray(2, "int64")
    note(sys.argv[2], a.name)
    conveyor.team(2, spin, a, sys.argv[2], start_method=sys.argv[1])
"""


def test_ctrl_c_at_the_terminal_reaches_every_process(start_method: str, tmp_path: Path) -> None:
    # A terminal's Ctrl-C signals the whole process group: parent and members at once.
    script = tmp_path / "ctrl_c_group.py"
    script.write_text(CTRL_C_GROUP)
    notes = tmp_path / "notes.txt"
    proc = subprocess.Popen(
        [sys.executable, str(script), start_method, str(notes)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (
            not notes.exists() or len(notes.read_text().split()) < 3
        ):
            time.sleep(0.02)
        lines = notes.read_text().split()
        assert len(lines) == 3, lines
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    name, pids = lines[0], [int(p) for p in lines[1:]]
    assert not os.path.exists(f"/dev/shm/{name}")
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/proc/{p}") for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in pids if os.path.exists(f"/proc/{p}")]
