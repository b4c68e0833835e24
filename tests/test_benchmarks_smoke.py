"""The benchmark scripts still run: ``--quick`` modes, in a subprocess, under a timeout.

Slow (about two minutes) and skipped unless the peer libraries of the ``bench`` extra
are installed. Results go to a temporary directory, never over ``benchmarks/results``.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
PEERS = ["mpire", "joblib", "loky", "pebble"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(400),
    pytest.mark.skipif(
        any(importlib.util.find_spec(name) is None for name in PEERS),
        reason="the peer libraries are not installed (pip install -e '.[bench]')",
    ),
]


def run_quick(script: str, results: Path, timeout: float) -> str:
    env = {**os.environ, "CONVEYOR_BENCH_RESULTS": str(results)}
    proc = subprocess.run([sys.executable, str(BENCH / script), "--quick"], env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def table_rows(text: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.startswith("|")]


def test_bench_pool_quick(tmp_path: Path) -> None:
    stdout = run_quick("bench_pool.py", tmp_path, timeout=300)
    written = (tmp_path / "pool.md").read_text()
    assert written.strip() == stdout.strip()
    for n in range(1, 8):
        assert f"### {n}." in written
    conveyor_rows = [row for row in table_rows(written) if row[0] == "conveyor.Pool"]
    assert len(conveyor_rows) == 9  # scenarios 1-4, 4b, 5 for fork and spawn, 6, 7
    for row in conveyor_rows:
        assert not any(cell.startswith("failed") for cell in row), row
        assert any(cell.startswith(("≥", "≤", "flat", "no slower", "no request"))
                   for cell in row), row


def test_reliability_quick(tmp_path: Path) -> None:
    stdout = run_quick("reliability.py", tmp_path, timeout=300)
    written = (tmp_path / "reliability.md").read_text()
    assert written.strip() == stdout.strip()
    rows = table_rows(written)
    header = rows[0]
    assert header[0] == "fault" and "conveyor.Pool" in header
    col = header.index("conveyor.Pool")
    faults = rows[2:]
    assert len(faults) == 3
    for row in faults:
        assert row[col] and not row[col].startswith("scenario failed"), row
