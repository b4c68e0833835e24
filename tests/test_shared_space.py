"""A full /dev/shm is an error, not SIGBUS: run in a private 64 MiB tmpfs of our own.

Each scenario runs in a fresh interpreter inside an unprivileged user and mount namespace
(``unshare -Urm``) whose /dev/shm is a new 64 MiB tmpfs, the size Docker gives a
container by default. Without the reservation, the first write into a segment larger than
the free space killed the process with SIGBUS (exit status 135, no traceback).
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

SCENARIO = r"""
import os, sys
import numpy as np
import conveyor

def check(err, asked):
    assert isinstance(err, OSError) and err.errno == 28, err
    assert err.mount == "/dev/shm" and err.requested == asked, (err.requested, asked)
    assert 0 < err.free <= 64 << 20, err.free
    assert f"asked for {asked} bytes" in str(err) and "/dev/shm has" in str(err), err
    print("ok", sys.argv[1], flush=True)

what = sys.argv[1]
if what == "array":
    try:
        a = conveyor.SharedArray((16 << 20,), "float64")  # 128 MiB
        np.asarray(a)[:] = 1
    except conveyor.SharedMemoryFullError as err:
        check(err, 128 << 20)
    with conveyor.SharedArray((1 << 20,), "float64") as small:  # what fits still works
        np.asarray(small)[:] = 1
elif what == "dict":
    d = conveyor.SharedDict()
    d["small"] = 1
    try:
        d["big"] = b"x" * (100 << 20)
    except conveyor.SharedMemoryFullError as err:
        assert err.requested > 64 << 20
        check(err, err.requested)
    assert d.copy() == {"small": 1}, d.copy()  # nothing half-written, still usable
    d["more"] = b"y" * (1 << 20)
    assert len(d) == 2
    d.close()
elif what == "channel":
    ch = conveyor.Channel()
    try:
        ch.put(np.ones(10 << 20))  # 80 MiB out of band
    except conveyor.SharedMemoryFullError as err:
        check(err, 80 << 20)
    ch.put(np.ones(1 << 20))
    assert ch.get().sum() == 1 << 20
    try:
        conveyor.Channel(maxbytes=200 << 20)
    except conveyor.SharedMemoryFullError as err:
        check(err, (200 << 20) + 4096)
    ch.unlink()
print("left", sorted(os.listdir("/dev/shm")))
"""


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    r = subprocess.run(
        ["unshare", "-Urm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /dev/shm"],
        capture_output=True,
        timeout=30,
    )
    return r.returncode == 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("what", ["array", "dict", "channel"])
def test_a_full_dev_shm_raises_a_clear_error(what: str, tmp_path: object) -> None:
    if not _unshare_works():
        pytest.skip("needs unprivileged user namespaces (unshare -Urm) to mount a small tmpfs")
    script = f"{tmp_path}/full.py"
    with open(script, "w") as f:
        f.write(SCENARIO)
    r = subprocess.run(
        [
            "unshare", "-Urm", "sh", "-c",
            f'mount -t tmpfs -o size=64m tmpfs /dev/shm && exec "{sys.executable}" "{script}" {what}',
        ],
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert r.stdout.splitlines()[0] == f"ok {what}", r.stdout
    assert r.stdout.splitlines()[-1] == "left []", r.stdout  # nothing left behind
    assert "resource_tracker" not in r.stderr, r.stderr
