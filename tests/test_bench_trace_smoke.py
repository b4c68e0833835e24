"""benchmarks/bench_trace.py still runs (``--quick``, in a subprocess, results to a
temporary directory). It needs no peer library, unlike the other benchmark smoke tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


def test_bench_trace_quick(tmp_path: Path) -> None:
    env = {**os.environ, "CONVEYOR_BENCH_RESULTS": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(BENCH / "bench_trace.py"), "--quick"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = (tmp_path / "trace.md").read_text()
    assert written.strip() == proc.stdout.strip()
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in written.splitlines() if line.startswith("|")]
    assert [r[0] for r in rows if r[0].startswith(("1.", "2."))] == [
        "1. `map`, automatic chunks", "2. `submit`: one task per chunk"]
    assert any(r[0] == "Chrome trace (.json)" for r in rows)
    assert "recorded run times add up to" in written
