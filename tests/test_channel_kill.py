"""A process killed at any moment must not leave the others hanging, nor segments behind.

Each scenario runs in a fresh interpreter under a timer and prints one JSON line; the
test reads it, then checks that the scenario's segments are gone from /dev/shm and
that it left no process behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

PRELUDE = """
import json, os, random, signal, sys, threading, time
import multiprocessing as mp
import numpy as np
from conveyor import Channel, ChannelBroken, ChannelClosed
from conveyor._channel.ring import HEADER, M32
ctx = mp.get_context(sys.argv[1])

TAGS = []  # every channel this scenario made, to look for its leftovers afterwards

def new_channel(**kwargs):
    ch = Channel(**kwargs)
    TAGS.append(ch._ring.tag)
    return ch

def report(**facts):
    print(json.dumps(dict(facts, tags=TAGS)), flush=True)

def hold_lock_then_die(ch, which, ready):
    ring = ch._ring
    byte = 0 if which == "send" else 1
    ring._lock(ring._send_tlock if which == "send" else ring._recv_tlock, byte)
    ready.set()
    time.sleep(60)

def half_write_then_die(ch):
    ring = ch._ring
    ring._lock(ring._send_tlock, 0)
    tail = ring._w[0] & M32
    ring._w[(HEADER + tail) >> 3] = 500          # a prefix for a 500-byte record...
    ring._data[tail + 8 : tail + 108] = b"\\xff" * 100  # ...of which only 100 got written
    os.kill(os.getpid(), signal.SIGKILL)

def stream(ch, n):
    for i in range(n):
        ch.put(i)
    ch.close()

def take_one_then_die(ch):
    ch.get()
    os.kill(os.getpid(), signal.SIGKILL)

def start(target, *args):
    p = ctx.Process(target=target, args=args)
    p.start()
    return p
"""

SCENARIOS = {
    # The holder of the senders' lock (or the receivers') dies: the kernel drops the lock.
    "lock holder killed": """
for which in ("send", "recv"):
    ch = new_channel(maxsize=100)
    ready = ctx.Event()
    p = start(hold_lock_then_die, ch, which, ready)
    ready.wait(30)
    threading.Timer(0.3, os.kill, (p.pid, signal.SIGKILL)).start()
    ch.put(1)
    ch.put(2)
    ch.close()
    got = list(ch)
    p.join()
    assert got == [1, 2], got
    ch.unlink()
report(ok=True)
""",
    # Killed in the middle of writing a record: it was never published, nobody sees it.
    "writer killed mid-record": """
ch = new_channel()
p = start(half_write_then_die, ch)
p.join()
for i in range(300):
    ch.put(i)
ch.close()
got = list(ch)
assert got == list(range(300)), got[:5]
ch.unlink()
report(ok=True, exitcode=p.exitcode)
""",
    # A consumer dies right after taking an item: the others go on to the end.
    "consumer killed after taking an item": """
ch = new_channel(maxsize=10)
p = start(take_one_then_die, ch)
time.sleep(0.2)
feeder = threading.Thread(target=stream, args=(ch.clone(), 500))
feeder.start()
got = list(ch)
feeder.join()
p.join()
assert len(got) in (499, 500) and got == sorted(got), len(got)
ch.unlink()
report(ok=True, got=len(got))
""",
    # A producer killed at a random moment, without closing: after what it published,
    # consumers get ChannelBroken naming it, within 2 s.
    "producer killed at a random moment": """
delays = []
for trial in range(3):
    ch = new_channel(maxsize=5, senders=2)
    p = start(stream, ch, 10**7)
    while not ch.qsize():  # a sender that dies before its first put is invisible
        time.sleep(0.01)
    time.sleep(random.uniform(0, 0.3))
    os.kill(p.pid, signal.SIGKILL)
    killed = time.monotonic()
    got = 0
    try:
        for _ in ch:
            got += 1
    except ChannelBroken as e:
        delays.append(time.monotonic() - killed)
        assert e.reason == "sender died" and e.pid == p.pid, (e.reason, e.pid)
        assert str(p.pid) in str(e)
    else:
        raise AssertionError("the stream ended normally")
    p.join()
    ch.unlink()
report(ok=True, delays=delays)
""",
    # The only consumer dies while the producer waits on a full channel.
    "every consumer killed while full": """
ch = new_channel(maxsize=2)
p = start(take_one_then_die, ch)
t0 = time.monotonic()
try:
    for i in range(10):
        ch.put(i)
except ChannelBroken as e:
    assert e.reason == "receiver died" and e.pid == p.pid, (e.reason, e.pid)
    delay = time.monotonic() - t0
else:
    raise AssertionError("put did not fail")
p.join()
ch.unlink()
report(ok=True, delays=[delay])
""",
}


def run_scenario(name: str, start_method: str = "fork", timeout: float = 60) -> dict[str, Any]:
    # A file rather than -c: under spawn and forkserver the children import __main__.
    code = PRELUDE + "\ndef main():\n" + textwrap.indent(SCENARIOS[name], "    ")
    code += "\nif __name__ == '__main__':\n    main()\n"
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "scenario.py"
        script.write_text(code)
        proc = subprocess.run(
            [sys.executable, str(script), start_method],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["tags"]
    _assert_no_leftovers(result["tags"])
    return result


def _segments(tags: list[str]) -> set[str]:
    # Only this scenario's channels: other test runs may share /dev/shm.
    return {p.name for p in Path("/dev/shm").iterdir() if any(t in p.name for t in tags)}


def _assert_no_leftovers(tags: list[str]) -> None:
    # The scenario's resource tracker may take a moment to finish after it exits.
    deadline = time.monotonic() + 5
    while (left := _segments(tags)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"segments left behind: {sorted(left)}"


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_kill_scenario(name: str) -> None:
    result = run_scenario(name)
    assert result["ok"]
    for delay in result.get("delays", []):
        assert delay < 3.0, f"took {delay:.2f} s to notice the death (the aim is 2 s)"


def test_producer_killed_under_spawn() -> None:
    result = run_scenario("producer killed at a random moment", "spawn")
    assert result["ok"] and all(d < 3.0 for d in result["delays"])


SIGNALLED = """
import os, sys, time, numpy as np
from conveyor import Channel
ch = Channel(maxsize=4)
ch.put(np.ones(2**20))   # an unread large item: a block of its own
ch.put("small")
print(ch._ring.tag, flush=True)
idle = Channel()
idle.get(timeout=60) if sys.argv[1] == "get" else time.sleep(60)
"""


@pytest.mark.parametrize(
    ("sig", "mode"),
    [(signal.SIGINT, "get"), (signal.SIGINT, "sleep"), (signal.SIGTERM, "sleep"), (signal.SIGKILL, "get")],
)
def test_creator_interrupted_or_killed_leaves_no_segments(sig: int, mode: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", SIGNALLED, mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        tag = proc.stdout.readline().strip()
        assert len(_segments([tag])) == 2  # the ring and the unread array's block
        time.sleep(0.3)  # into the blocking call
        os.kill(proc.pid, sig)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    _assert_no_leftovers([tag])
