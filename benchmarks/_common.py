"""Shared by the benchmark scripts: machine description, subprocess runs, markdown tables.

Every measurement runs in a fresh interpreter (``run_json``), so one library's threads,
caches or leaked workers never slow the next, and peak RSS belongs to one contender.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
# The smoke test points this elsewhere, so a quick run never overwrites real results.
RESULTS_DIR = Path(os.environ.get("CONVEYOR_BENCH_RESULTS") or BENCH_DIR / "results")
ROOT = BENCH_DIR.parent


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def machine() -> str:
    """One line naming the machine, the interpreter and the date (UTC)."""
    now = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{cpu_model()}, {usable_cores()} usable cores (of {os.cpu_count()}), "
            f"Linux {platform.release()}, Python {platform.python_version()}, {now}, "
            f"load average {load} (1, 5, 15 min) when it was written")


def versions(names: Sequence[str]) -> str:
    from importlib import metadata

    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found)


def run_json(argv: Sequence[str], timeout: float) -> tuple[dict[str, Any] | None, str]:
    """Run ``python argv...`` in its own session; parse the last stdout line as JSON.

    Returns (result, problem). Output goes to files, not pipes, so a worker that outlives
    its parent cannot keep us waiting; the whole process group is killed afterwards, so
    nothing a contender started outlives the measurement.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, *argv], stdout=out, stderr=err, text=True,
                                start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None, f"timed out after {timeout:.0f} s"
        finally:
            kill_group(proc.pid)
            proc.wait()
        out.seek(0)
        err.seek(0)
        lines = [ln for ln in out.read().splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            tail = (err.read().strip().splitlines() or ["no output"])[-1]
            return None, f"exit {proc.returncode}: {tail[:160]}"
        return json.loads(lines[-1]), ""


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(out)


def write_result(name: str, text: str) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.md"
    path.write_text(text if text.endswith("\n") else text + "\n")
    return path
