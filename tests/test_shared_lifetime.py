"""Segment lifetime: one owner unlinks, on close, exception, Ctrl-C and exit; SIGKILL leftovers
are swept by the next run; attaching processes never unlink nor upset the resource tracker.

Scenarios that end a process abnormally run in a fresh interpreter under a timeout.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import conveyor
from conveyor._ipc.segment import SHM_DIR, Segment, segment_exists
from conveyor._ipc.sweep import sweep_stale


def run(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


MAKE_ALL = textwrap.dedent("""
    import sys, os, conveyor
    c = conveyor.SharedCounter()
    v = conveyor.SharedValue("d")
    a = conveyor.SharedArray((10,), "int32")
    print(c.lock.segment_name, v.lock.segment_name, a.name, flush=True)
""")


def test_exit_by_exception_unlinks() -> None:
    r = run(MAKE_ALL + "raise ValueError('x')")
    assert "ValueError" in r.stderr
    names = r.stdout.split()
    assert len(names) == 3
    assert not any(segment_exists(n) for n in names)


def test_ctrl_c_unlinks() -> None:
    code = MAKE_ALL + "os.kill(os.getpid(), __import__('signal').SIGINT)\nimport time; time.sleep(30)"
    r = run(code)
    assert "KeyboardInterrupt" in r.stderr
    names = r.stdout.split()
    assert len(names) == 3
    assert not any(segment_exists(n) for n in names)


def test_sigkilled_owner_is_cleaned_up() -> None:
    # The resource tracker of the killed run, or failing that the next run's sweep, removes
    # what a SIGKILLed owner left; afterwards nothing of it remains.
    r = run(MAKE_ALL + "os.kill(os.getpid(), 9)")
    assert r.returncode == -signal.SIGKILL
    names = r.stdout.split()
    assert len(names) == 3
    r2 = run("import conveyor; conveyor.SharedCounter().close()")
    assert r2.returncode == 0, r2.stderr
    assert not any(segment_exists(n) for n in names)


def test_sweep_removes_segments_of_dead_owners_even_without_tracker() -> None:
    # A segment left where no resource tracker saw it (e.g. the tracker was killed too):
    # make one with a dead owner's name by hand; the next run removes it.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    pid = int(dead.stdout)
    name = f"conveyor_{pid}_1_struct_deadbeef"
    (SHM_DIR / name).write_bytes(b"\0" * 16)
    try:
        r = run("import conveyor; conveyor.SharedCounter().close()")
        assert r.returncode == 0, r.stderr
        assert not segment_exists(name)
        assert r.stderr == ""  # sweeping is silent (no resource-tracker complaints)
    finally:
        if segment_exists(name):
            os.unlink(SHM_DIR / name)


SPAWN_ATTACH = """
    import multiprocessing as mp, conveyor
    from typing import Annotated

    def touch(c, a):
        c.increment()
        a[0] = 5

    if __name__ == "__main__":
        ctx = mp.get_context("{method}")
        c = conveyor.SharedCounter()
        a = conveyor.SharedArray(4, "int64")
        for _ in range(3):
            p = ctx.Process(target=touch, args=(c, a))
            p.start(); p.join()
        assert c.value == 3 and a[0] == 5, (c.value, a[0])
        print("ok", flush=True)
"""


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_attaching_children_never_unlink_nor_warn(method: str) -> None:
    with open(f"/tmp/conveyor_attach_{method}.py", "w") as f:
        f.write(textwrap.dedent(SPAWN_ATTACH.format(method=method)))
    try:
        r = subprocess.run(
            [sys.executable, f.name], capture_output=True, text=True, timeout=60
        )
    finally:
        os.unlink(f.name)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"
    # Python 3.10-3.12's resource tracker warns about "leaked" segments it was told about
    # by attaching processes, and unlinks them early; neither may happen.
    assert "leaked" not in r.stderr and "resource_tracker" not in r.stderr, r.stderr


def _drop_inherited(c: conveyor.SharedCounter) -> None:
    c.increment()


@pytest.mark.timeout(60)
def test_forked_child_disowns_every_segment_and_lock_it_inherits() -> None:
    """One fork registry serves every owned segment (a bare one too, such as a channel's
    large-item block before it is handed over) and every segment lock."""
    seg = Segment.create(64, "seg")
    lock = conveyor.SegmentLock(seg.name, 8)
    ctx = multiprocessing.get_context("fork")

    def child() -> None:
        owner_left = seg.owner
        seg.close()  # an owner would unlink here
        with lock:  # a fresh descriptor: the parent's hold below does not count as ours
            pass
        os._exit(3 if owner_left else 0)

    with lock:
        p = ctx.Process(target=child)
        p.start()
        p.join(2)
        assert p.exitcode is None  # blocked on the lock the parent holds
    p.join(30)
    assert p.exitcode == 0
    assert segment_exists(seg.name)
    lock.close()
    seg.close()
    assert not segment_exists(seg.name)


def test_forked_child_never_unlinks_an_inherited_owner() -> None:
    ctx = multiprocessing.get_context("fork")
    c = conveyor.SharedCounter()
    name = c.lock.segment_name

    def child() -> None:
        nonlocal c
        c.increment()
        del c  # the inherited owner object is collected in the child
        gc.collect()

    p = ctx.Process(target=child)
    p.start()
    p.join(30)
    assert p.exitcode == 0
    assert segment_exists(name)
    assert c.value == 1
    c.close()
    assert not segment_exists(name)


def test_import_conveyor_does_not_import_numpy() -> None:
    r = run("import sys, conveyor; print('numpy' in sys.modules)")
    assert r.stdout.strip() == "False", r.stderr


def test_missing_numpy_names_the_extra() -> None:
    r = run("""
        import sys
        sys.modules["numpy"] = None
        import conveyor
        try:
            conveyor.SharedArray(3)
        except ImportError as e:
            print(e)
    """)
    assert "pip install conveyor[numpy]" in r.stdout, r.stderr


PRODUCER_EXITS = """
    import multiprocessing as mp, subprocess, sys
    import numpy as np
    import conveyor

    def produce(ch):
        with ch:
            ch.put(np.arange(100_000))   # a large item: a block of its own

    if __name__ == "__main__":
        ctx = mp.get_context(sys.argv[1])
        ch = conveyor.Channel(senders=1)
        p = ctx.Process(target=produce, args=(ch,))
        p.start(); p.join()
        # Creating a first shared object sweeps stale segments: here, and in an unrelated
        # program. The producer is gone, but the channel and its receiver are alive.
        subprocess.run([sys.executable, "-c", "import conveyor; conveyor.SharedDict().close()"],
                       check=True)
        conveyor.SharedDict().close()
        item = ch.get(timeout=10)
        assert item.sum() == sum(range(100_000)), item.sum()
        print("ok", ch._ring.tag, flush=True)
"""


@pytest.mark.timeout(90)
@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_large_items_of_an_exited_producer_survive_the_sweep(method: str, tmp_path: Path) -> None:
    script = tmp_path / "producer_exits.py"
    script.write_text(textwrap.dedent(PRODUCER_EXITS))
    r = subprocess.run([sys.executable, str(script), method], capture_output=True, text=True, timeout=80)
    assert r.returncode == 0, r.stderr
    word, tag = r.stdout.split()
    assert word == "ok"
    assert r.stderr == "", r.stderr  # no resource-tracker warnings at exit either
    assert not [n for n in os.listdir(SHM_DIR) if tag in n]


SIGTERMED = """
    import multiprocessing as mp, os, sys, time
    import numpy as np
    import conveyor

    def hold(d, ch, a):
        parent = os.getppid()      # before telling the parent we are up: it dies after
        d["child"] = os.getpid()   # the child maps them too; it ends with its parent
        while os.getppid() == parent:
            time.sleep(0.02)

    if __name__ == "__main__":
        d = conveyor.SharedDict({"a": 1})
        a = conveyor.SharedArray((1000,))
        c = conveyor.SharedCounter()
        ch = conveyor.Channel()
        ch.put(np.zeros(100_000))   # a large item nobody takes
        p = mp.get_context(sys.argv[1]).Process(target=hold, args=(d, ch, a))
        p.start()
        while "child" not in d:
            time.sleep(0.01)
        print(d.name, a.name, c.lock.segment_name, ch._ring.name, flush=True)
        time.sleep(60)
"""


@pytest.mark.timeout(90)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_sigterm_frees_segments_without_resource_tracker_warnings(method: str, tmp_path: Path) -> None:
    script = tmp_path / "sigtermed.py"
    script.write_text(textwrap.dedent(SIGTERMED))
    proc = subprocess.Popen(
        [sys.executable, str(script), method], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    names = proc.stdout.readline().split()
    assert len(names) == 4, proc.communicate(timeout=30)
    tag = names[-1].rsplit("_", 1)[1]
    assert any(f"_oob{tag}_" in n for n in os.listdir(SHM_DIR))
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)  # nothing keeps its stderr open afterwards
    assert proc.returncode == -signal.SIGTERM
    assert "leaked" not in err and "resource_tracker" not in err, err
    deadline = time.monotonic() + 20
    left = names
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [n for n in os.listdir(SHM_DIR) if any(n == x or tag in n for x in names)]
    assert not left, left


def _map_and_wait(name: str, mapped: Any, stop: Any) -> None:
    seg = Segment.attach(name)
    mapped.set()
    stop.wait(30)
    seg.close()


def test_a_dead_owners_segment_is_kept_while_a_live_process_maps_it() -> None:
    ctx = multiprocessing.get_context("spawn")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    name = f"conveyor_{int(dead.stdout)}_1_struct_0dead0ff"  # an owner that is gone
    (SHM_DIR / name).write_bytes(b"\0" * 4096)
    mapped, stop = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_map_and_wait, args=(name, mapped, stop))
    p.start()
    try:
        assert mapped.wait(30)
        assert name not in sweep_stale() and segment_exists(name)  # in use: kept
        stop.set()
        p.join(30)
        assert name in sweep_stale() and not segment_exists(name)  # let go: removed
    finally:
        stop.set()
        p.join(30)
        if segment_exists(name):
            os.unlink(SHM_DIR / name)
