"""The batch example script and the demo's batch part run, in real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}


@pytest.mark.timeout(120)
def test_batch_hash_files_example() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "examples/batch_hash_files.py")],
                          capture_output=True, text=True, timeout=110, env=_env())
    assert proc.returncode == 0, proc.stderr
    assert "first run: exit code 130" in proc.stdout
    assert "resumed: 200 files, each once, every hash checked" in proc.stdout


@pytest.mark.timeout(120)
def test_demo_batch_part() -> None:
    proc = subprocess.run([sys.executable, "-m", "conveyor._cli", "demo", "--only", "batch"],
                          capture_output=True, text=True, timeout=110, env=_env())
    assert proc.returncode == 0, proc.stderr
    assert "interrupted with SIGINT: exit code 130" in proc.stdout
    assert "exit code 0: 300 items ok in the output, 300 in the journal" in proc.stdout
