"""The pool examples and the README's snippets run as real programs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(120)

EXPECTED = {
    "pool_apply_async.py": ["9^2 =  81", "lambdas: [100, 101, 102]", "task error re-raised"],
    "pool_callback_progress.py": ["callback collected 24 results", "progress=True: same 24"],
    "pool_survives_a_crash.py": ["task 3: lost -> SIGKILL", "task 5: 50", "goes on: [70, 80]"],
    "joinable_queue_pipeline.py": ["then quit early", "pipeline: 30 of 30 items, in order"],
    "text_pipeline.py": ["bytes served per path", "map(count_batch)", "wall time"],
    "work_queue_tree.py": ["341 directories, 340 files, 85,000 bytes"],
}


def run_python(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(path)], capture_output=True, text=True,
                          timeout=100, cwd=ROOT)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_pool_example(name: str) -> None:
    proc = run_python(ROOT / "examples" / name)
    assert proc.returncode == 0, proc.stderr
    for text in EXPECTED[name]:
        assert text in proc.stdout, proc.stdout


def test_readme_snippets_run(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert blocks, "the README has python snippets"
    for i, code in enumerate(blocks):
        script = tmp_path / f"snippet_{i}.py"
        script.write_text(code)
        proc = run_python(script)
        assert proc.returncode == 0, f"README snippet {i} failed:\n{code}\n{proc.stderr}"


def test_demo_command_runs(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "conveyor._cli", "demo", "--limit", "200000", "--blocks", "8"],
        capture_output=True, text=True, timeout=100, cwd=ROOT,
        env={**os.environ, "TMPDIR": str(tmp_path)},  # where the trace part writes its report
    )
    assert proc.returncode == 0, proc.stderr
    assert "serial agrees" in proc.stdout and "speed-up" in proc.stdout
    assert "All demos finished." in proc.stdout
    assert "no sentinel" in proc.stdout and "255 tasks ran" in proc.stdout


def test_trace_example_shows_the_imbalance_and_writes_the_files(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "trace_uneven_tasks.py"),
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stderr
    assert "chunksize=10: 2 spans, 20 tasks" in proc.stdout
    assert "chunksize=1: 20 spans, 20 tasks" in proc.stdout
    for name in ("wrong-chunks.html", "right-chunks.html"):
        text = (tmp_path / "out" / name).read_text()
        assert "work(" in text and "https://" not in text and "http://" not in text
    doc = json.loads((tmp_path / "out" / "right-chunks.json").read_text())
    assert sum(1 for ev in doc["traceEvents"] if ev["ph"] == "X") == 20
