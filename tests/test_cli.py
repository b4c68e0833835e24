"""The ``conveyor`` command as a newcomer meets it: version, help, usage errors, progress
output in logs, and the demo's explanation of a poor speed-up."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import conveyor
from conveyor._cli.main import build_parser
from conveyor._demo.pool import speedup_note

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "conveyor._cli", *args], {**os.environ, **(env or {})},
               timeout)


def run(argv: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run and decode without newline translation, so a ``\r`` written stays a ``\r``."""
    proc = subprocess.run(argv, capture_output=True, timeout=timeout, env=env)
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(),
                                       proc.stderr.decode())


@pytest.mark.timeout(30)
def test_version() -> None:
    proc = run_cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"conveyor {conveyor.__version__}"


def _all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _all_parsers(sub)
    return found


def test_every_option_and_command_has_help() -> None:
    missing = []
    for parser in _all_parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helped = {a.dest for a in action._choices_actions if a.help}
                missing += [f"{parser.prog} {name}" for name in action.choices
                            if name not in helped]
            elif not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{parser.prog} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, f"options without help text: {missing}"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args, names", [
    (["demo", "-j", "0"], "-j/--workers"),
    (["demo", "--blocks", "0"], "--blocks"),
    (["demo", "--limit", "many"], "--limit"),
    (["demo", "--blocks", "10", "--limit", "5"], "--blocks (10)"),
    (["demo", "--only", "everything"], "--only"),
])
def test_bad_demo_options_are_one_line_errors(args: list[str], names: str) -> None:
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("conveyor demo: error:") and names in lines[0]


_PROGRESS_SCRIPT = textwrap.dedent("""
    import time
    import conveyor as cv

    def nap(x):
        time.sleep(0.03)
        return x

    if __name__ == "__main__":
        with cv.Pool(2, progress=True) as pool:
            assert pool.map(nap, range(40), chunksize=1) == list(range(40))
""")


@pytest.mark.timeout(60)
def test_progress_into_a_log_is_plain_lines(tmp_path: Path) -> None:
    script = tmp_path / "progress.py"
    script.write_text(_PROGRESS_SCRIPT)
    env = {**os.environ, "CONVEYOR_PROGRESS_EVERY": "0.1"}
    env.pop("CONVEYOR_PROGRESS", None)
    # stderr is a pipe here, as in CI or `2> log`: no \r, no escape codes, a line now and then.
    proc = run([sys.executable, str(script)], env, 50)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr and "\x1b" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) >= 2, proc.stderr  # some while running, one at the end
    assert lines[-1].startswith("nap: 100% 40/40 task,"), lines
    # The same script with a redrawn bar forced: the check above can tell them apart.
    forced = run([sys.executable, str(script)], {**env, "CONVEYOR_PROGRESS": "bar"}, 50)
    assert forced.returncode == 0 and "\r" in forced.stderr


@pytest.mark.timeout(60)
def test_progress_off_prints_nothing(tmp_path: Path) -> None:
    script = tmp_path / "progress.py"
    script.write_text(_PROGRESS_SCRIPT)
    proc = run([sys.executable, str(script)], {**os.environ, "CONVEYOR_PROGRESS": "off",
                                               "CONVEYOR_PROGRESS_EVERY": "0"}, 50)
    assert proc.returncode == 0
    assert proc.stderr == ""


def test_speedup_note_explains_a_busy_machine() -> None:
    note = speedup_note(0.79, workers=2, cpus=2, machine_cpus=2, load=3.6)
    assert note is not None
    assert "load average 3.6" in note and "other programs were using about 1.6 CPUs" in note


def test_speedup_note_explains_a_restricted_affinity() -> None:
    note = speedup_note(1.1, workers=4, cpus=2, machine_cpus=8, load=2.0)
    assert note is not None
    assert "may use only 2 of the machine's 8 CPUs" in note and "4 workers share 2 CPUs" in note


def test_speedup_note_is_silent_when_the_speedup_is_good_or_cannot_be() -> None:
    assert speedup_note(1.8, workers=2, cpus=2, machine_cpus=2, load=5.0) is None
    assert speedup_note(0.9, workers=4, cpus=1, machine_cpus=4, load=1.0) is None  # 1 CPU
    idle = speedup_note(0.9, workers=2, cpus=2, machine_cpus=2, load=0.4)
    assert idle is not None and "looks idle" in idle


@pytest.mark.timeout(90)
def test_demo_pool_in_a_log(tmp_path: Path) -> None:
    proc = run_cli("demo", "--limit", "100000", "--blocks", "8", "--only", "pool",
                   "--only", "pipeline", env={"CONVEYOR_PROGRESS_EVERY": "0"}, timeout=80)
    assert proc.returncode == 0, proc.stderr
    assert "serial agrees" in proc.stdout and "CPUs available" in proc.stdout
    assert "\r" not in proc.stderr and "\x1b" not in proc.stderr
    assert "count_primes: 100% 8/8 task" in proc.stderr
    assert "seed" not in (proc.stdout + proc.stderr).lower()


def test_no_word_of_where_the_project_came_from_in_the_command() -> None:
    import re

    src = ROOT / "src/conveyor"
    own = [src / "_pool/progress.py", *(src / "_cli").glob("*.py"), *(src / "_demo").glob("*.py")]
    assert len(own) > 10
    for path in own:
        text = path.read_text()
        assert not re.search(r"\bseed\b", text, re.I), path
    help_text = "\n".join(p.format_help() for p in _all_parsers(build_parser()))
    assert "seed" not in help_text.lower()


@pytest.mark.timeout(90)
def test_demo_trace_writes_a_report_and_prints_where_it_is(tmp_path: Path) -> None:
    proc = run_cli("demo", "--only", "trace", env={"TMPDIR": str(tmp_path)}, timeout=80)
    assert proc.returncode == 0, proc.stderr
    (report,) = tmp_path.glob("conveyor-trace-*/pool-trace.html")
    assert f"report: {report}" in proc.stdout
    assert "40 spans (40 tasks, 0 failed) on 2 worker lanes" in proc.stdout
    assert "where the time went" in proc.stdout
    text = report.read_text()
    assert "count_primes" in text and "https://" not in text
