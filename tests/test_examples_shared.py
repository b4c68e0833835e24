"""Every shared-state example runs as a script, finishes, and prints what it promises."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

CASES = {
    "shared_value_array.py": ["tasks done: 10", "squares: [0.0, 1.0, 4.0"],
    "shared_struct_producers.py": ["produced 1000, consumed 1000, total 499500"],
    "shared_dict_pool.py": ["560 words counted by the pool", "the=140"],
    "team_jacobi.py": ["1200x1200 grid, 150 steps", "speed-up:"],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_example_runs(name: str) -> None:
    r = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=100
    )
    assert r.returncode == 0, r.stderr
    for expected in CASES[name]:
        assert expected in r.stdout, r.stdout
    assert "Traceback" not in r.stderr and "leaked" not in r.stderr, r.stderr


def test_demo_runs() -> None:
    r = subprocess.run(
        [sys.executable, "-c", "from conveyor._demo.shared import run; run()"],
        capture_output=True, text=True, timeout=100,
    )
    assert r.returncode == 0, r.stderr
    assert "Progress(done=12000" in r.stdout
    assert "same result" in r.stdout and "speed-up" in r.stdout
    assert re.search(r"Jacobi, \d+ processes: 100%", r.stderr), r.stderr  # the live bar
