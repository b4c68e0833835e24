"""The Dask example runs as a real program (skipped without the dask extra)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("distributed")

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.dask, pytest.mark.slow, pytest.mark.timeout(120)]


def test_dask_example() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "dask_scale_out.py")],
                          capture_output=True, text=True, timeout=100, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for text in ["task 3: lost -> SIGKILL", "task 5: stopped after 2 s", "task 7: 70",
                 "in order: [60, 70, 80]", "a library's own pool ran there too: 25"]:
        assert text in proc.stdout, proc.stdout
