"""``conveyor map`` / ``run`` / ``status`` / ``results``, run as real commands.

Every job runs ``python -m conveyor._cli`` in a subprocess, in a temporary directory that
holds the job's module; kills and signals go to that subprocess. After each test no
process whose command line names the test's directory may be left.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

JOBS = textwrap.dedent("""
    import os, time
    import conveyor

    def _side(x):
        with open(os.environ["SIDE"], "a") as f:
            f.write(f"{x}\\n")

    def slow(x):
        time.sleep(0.01)
        _side(x)
        return len(x)

    def fail_sevens(x):
        _side(x)
        if int(x) % 7 == 0:
            raise ValueError(f"{x} is a multiple of 7")
        return int(x) * 2

    def flaky(x):
        # fails with OSError the first time it sees an item, then succeeds
        mark = os.path.join(os.environ["MARKS"], x)
        if not os.path.exists(mark):
            open(mark, "w").close()
            raise OSError(f"first try of {x}")
        return x

    def nap(x):
        time.sleep(float(x))
        return x

    def add(a, b=0):
        return a + b

    def total(items):
        return [len(i) for i in items]

    def init():
        return {"prefix": "w"}

    def state(x):
        return conveyor.worker_state()["prefix"] + x

    def unjson(x):
        return object()
""")

# The JSON-lines schema documented in the README (section "Batch jobs from the shell").
COMMON = {"seq": int, "input": object, "ok": bool, "attempts": int, "seconds": (int, float),
          "worker": (int, type(None))}
SHELL = {"exit_code": (int, type(None)), "signal": (str, type(None)), "stdout": str,
         "stderr": str}


def check_schema(line: dict[str, Any], shell: bool) -> None:
    fields = {**COMMON, **(SHELL if shell else {})}
    for name, kind in fields.items():
        assert name in line and isinstance(line[name], kind), (name, line)
    if line["ok"]:
        assert "result" in line and "error" not in line
    else:
        assert "error" in line and "result" not in line
        assert isinstance(line["error"]["type"], str) and isinstance(line["error"]["message"], str)
    extra = set(line) - set(fields) - {"result", "error"}
    assert not extra, extra


@pytest.fixture
def job(tmp_path: Path) -> Path:
    (tmp_path / "jobs.py").write_text(JOBS)
    (tmp_path / "marks").mkdir()
    yield tmp_path
    deadline = time.monotonic() + 5
    while (left := _processes_naming(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"processes left behind: {left}"


def _processes_naming(path: Path) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if str(path) in cmd and state != "Z":
                found.append(f"{entry.name}: {cmd}")
    return found


def _env(d: Path) -> dict[str, str]:
    return {**os.environ, "SIDE": str(d / "side.txt"), "MARKS": str(d / "marks"),
            "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                           os.environ.get("PYTHONPATH", "")])}


def start(d: Path, *args: str, stdin: Any = subprocess.DEVNULL) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "conveyor._cli", *args], cwd=d, env=_env(d),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=stdin)


def cli(d: Path, *args: str, input: str | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conveyor._cli", *args], cwd=d, env=_env(d),
                          capture_output=True, text=True, input=input, timeout=timeout,
                          stdin=None if input is not None else subprocess.DEVNULL)


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in text.splitlines()]


def side(d: Path) -> Counter[str]:
    path = d / "side.txt"
    return Counter(path.read_text().split()) if path.exists() else Counter()


def statuses(journal: Path) -> Counter[str]:
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        return Counter(dict(db.execute("SELECT status, count(*) FROM items GROUP BY status")))
    finally:
        db.close()


def wait_for_ok(journal: Path, n: int, proc: subprocess.Popen[str], limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if journal.exists():
            try:
                if statuses(journal)["ok"] >= n:
                    return
            except sqlite3.OperationalError:  # the schema is being created
                pass
        time.sleep(0.02)
    raise AssertionError(f"fewer than {n} items ok after {limit} s")


# ------------------------------------------------------------------ output and schema


@pytest.mark.timeout(60)
def test_map_prints_one_line_per_item_in_order_with_k(job: Path) -> None:
    proc = cli(job, "map", "jobs:fail_sevens", "--args", *map(str, range(1, 31)), "-k", "-j", "2")
    assert proc.returncode == 1, proc.stderr  # some failed
    out = lines(proc.stdout)
    assert [x["seq"] for x in out] == list(range(1, 31))
    assert [x["input"] for x in out] == [str(i) for i in range(1, 31)]
    for x in out:
        check_schema(x, shell=False)
        if int(x["input"]) % 7:
            assert x["ok"] and x["result"] == 2 * int(x["input"])
        else:
            assert x["error"]["type"] == "ValueError" and "multiple of 7" in x["error"]["message"]
            assert "fail_sevens" in x["error"]["traceback"]
    assert "30 items run" in proc.stderr and "26 ok, 4 failed" in proc.stderr
    assert "ValueError x4" in proc.stderr


@pytest.mark.timeout(60)
def test_run_output_schema_and_quoting(job: Path) -> None:
    evil = f"$(touch {job}/pwned) 'quoted' \"double\" a;b"
    proc = cli(job, "run", "echo {} && echo {#}", "--args", evil, "x y", "-k")
    assert proc.returncode == 0, proc.stderr
    out = lines(proc.stdout)
    for x in out:
        check_schema(x, shell=True)
    assert out[0]["stdout"] == f"{evil}\n1\n" and out[1]["stdout"] == "x y\n2\n"
    assert not (job / "pwned").exists()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("template", ["echo {} {.} {/} {//} {/.} {#}",  # no shell needed
                                      "echo {} {.} {/} {//} {/.} {#} | cat"])  # a shell
def test_gnu_replacement_strings(job: Path, template: str) -> None:
    proc = cli(job, "run", template, "--args", "dir/sub/a b.tar.gz", "plain", "-k")
    assert proc.returncode == 0, proc.stderr
    out = [x["stdout"] for x in lines(proc.stdout)]
    assert out == ["dir/sub/a b.tar.gz dir/sub/a b.tar a b.tar.gz dir/sub a b.tar 1\n",
                   "plain plain plain . plain 2\n"]


@pytest.mark.timeout(60)
def test_failed_command_keeps_exit_code_signal_and_streams(job: Path) -> None:
    proc = cli(job, "run", "sh -c 'echo out; echo err >&2; exit {}'", "--args", "0", "3", "-k")
    assert proc.returncode == 1
    ok, bad = lines(proc.stdout)
    assert ok["ok"] and ok["exit_code"] == 0 and ok["stdout"] == "out\n"
    assert not bad["ok"] and bad["exit_code"] == 3 and bad["stderr"] == "err\n"
    assert bad["error"]["type"] == "ExitCode"
    proc = cli(job, "run", "kill -TERM $$; echo {}", "--args", "x")
    (x,) = lines(proc.stdout)
    assert x["signal"] == "SIGTERM" and x["exit_code"] is None and not x["ok"]


# ----------------------------------------------------------------------- inputs


@pytest.mark.timeout(60)
def test_inputs_files_stdin_nul_glob_jsonl_csv_batch(job: Path) -> None:
    (job / "a.txt").write_text("x\nyy\n")
    (job / "b.txt").write_bytes(b"one\0two words\0")
    (job / "k.jsonl").write_text('{"a": 1, "b": 2}\n\n{"a": 5}\n')
    (job / "rows.csv").write_text("name,size\nfoo,3\nbar,4\n")

    def results(*args: str, input: str | None = None) -> list[Any]:
        proc = cli(job, "map", *args, "-k", input=input)
        assert proc.returncode == 0, proc.stderr
        return [x["result"] for x in lines(proc.stdout)]

    assert results("jobs:slow", "a.txt", "-") == [1, 2]  # stdin is empty here
    assert results("jobs:slow", "-", input="abc\nde\n") == [3, 2]
    assert results("jobs:slow", "-0", "b.txt") == [3, 9]
    assert results("jobs:slow", "--glob", "[ab].txt") == [5, 5]  # "a.txt", "b.txt"
    assert results("jobs:add", "--jsonl", "--kwargs", "k.jsonl") == [3, 5]
    proc = cli(job, "map", "jobs:total", "--batch", "2", "--args", "a", "bb", "ccc", "-k")
    assert [x["result"] for x in lines(proc.stdout)] == [1, 2, 3]
    proc = cli(job, "run", "echo {name}-{size}", "--csv", "rows.csv", "-k")
    assert [x["stdout"] for x in lines(proc.stdout)] == ["foo-3\n", "bar-4\n"]


@pytest.mark.timeout(60)
def test_init_return_value_is_worker_state(job: Path) -> None:
    proc = cli(job, "map", "jobs:state", "--init", "jobs:init", "--args", "a", "b", "-k")
    assert proc.returncode == 0, proc.stderr
    assert [x["result"] for x in lines(proc.stdout)] == ["wa", "wb"]


@pytest.mark.timeout(60)
def test_duplicates_run_once_unless_allowed(job: Path) -> None:
    proc = cli(job, "map", "jobs:slow", "--args", "a", "b", "a", "a")
    assert proc.returncode == 0 and side(job) == Counter({"a": 1, "b": 1})
    assert "2 duplicate inputs" in proc.stderr
    (job / "side.txt").unlink()
    proc = cli(job, "map", "jobs:slow", "--args", "a", "b", "a", "--allow-duplicates")
    assert proc.returncode == 0 and side(job) == Counter({"a": 2, "b": 1})


@pytest.mark.timeout(120)
def test_duplicates_across_read_blocks_keep_one_journal_row_per_copy(job: Path) -> None:
    # 600 copies span three read blocks of 256; a copy read in one block may still wait
    # to start when the next block is read, and must not lend its key to another copy.
    (job / "same.txt").write_text("x\n" * 600)
    journal = job / "dups.db"
    proc = cli(job, "map", "jobs:slow", "same.txt", "--journal", str(journal), "-j", "2")
    assert proc.returncode == 0, proc.stderr
    assert side(job) == Counter({"x": 1})
    proc = cli(job, "map", "jobs:slow", "same.txt", "--journal", str(journal), "--fresh",
               "--allow-duplicates", "-j", "2")
    assert proc.returncode == 0, proc.stderr
    db = sqlite3.connect(journal)
    try:
        assert db.execute("SELECT count(*), sum(status = 'ok') FROM items").fetchone() == (
            600, 600)
    finally:
        db.close()  # a with block commits but does not close (3.13 warns at collection)


# ------------------------------------------------------------------ execution options


@pytest.mark.timeout(60)
def test_retries_with_retry_on_count_attempts(job: Path) -> None:
    proc = cli(job, "map", "jobs:flaky", "--args", "p", "q", "--retries", "1")
    assert proc.returncode == 1  # OSError is not retried without --retry-on
    assert all(not x["ok"] and x["attempts"] == 1 for x in lines(proc.stdout))
    for mark in (job / "marks").iterdir():
        mark.unlink()
    proc = cli(job, "map", "jobs:flaky", "--args", "p", "q", "--retries", "1",
               "--retry-on", "OSError")
    assert proc.returncode == 0, proc.stdout
    assert all(x["ok"] and x["attempts"] == 2 for x in lines(proc.stdout))


@pytest.mark.timeout(60)
def test_map_timeout_fails_only_that_item(job: Path) -> None:
    proc = cli(job, "map", "jobs:nap", "--args", "0", "30", "0.01", "--timeout", "1s", "-k")
    assert proc.returncode == 1
    a, b, c = lines(proc.stdout)
    assert a["ok"] and c["ok"] and b["error"]["type"] == "TaskTimeoutError"


@pytest.mark.timeout(60)
def test_run_timeout_kills_grandchildren(job: Path) -> None:
    marker = "1007.5"  # `sleep 1007.5` is ours alone
    proc = cli(job, "run", "sh -c 'sleep {} & sleep {} & wait'", "--args", marker,
               "--timeout", "0.5")
    (x,) = lines(proc.stdout)
    assert x["error"]["type"] == "TaskTimeoutError" and x["signal"] == "SIGKILL"
    time.sleep(0.2)
    left = [p for p in Path("/proc").iterdir() if p.name.isdigit()
            and marker in _cmdline(p)]
    assert not left


def _cmdline(p: Path) -> str:
    try:
        return (p / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.timeout(60)
def test_dry_run_runs_nothing_and_cluster_is_not_available(job: Path) -> None:
    proc = cli(job, "map", "jobs:slow", "--args", "a", "b", "--dry-run")
    assert proc.returncode == 0 and proc.stdout == "slow('a')\nslow('b')\n"
    assert not side(job)
    proc = cli(job, "run", "touch {}", "--args", "my file", "--dry-run")
    assert proc.stdout == "touch 'my file'\n" and not (job / "my file").exists()
    proc = cli(job, "map", "jobs:slow", "--args", "a", "--cluster", "local")
    assert proc.returncode == 2 and "not available yet" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args, says", [
    (["map", "nosuchmodule:f", "--args", "a"], "cannot import nosuchmodule"),
    (["map", "jobs:nosuch", "--args", "a"], "has no nosuch"),
    (["map", "jobs", "--args", "a"], "MODULE:FUNCTION"),
    (["map", "jobs:slow", "--args", "a", "--timeout", "soon"], "--timeout"),
    (["map", "jobs:slow", "--args", "a", "--halt", "later"], "--halt"),
    (["map", "jobs:slow", "--args", "a", "--resume"], "--resume needs --journal"),
    (["map", "jobs:slow", "nosuchfile.txt"], "cannot read input nosuchfile.txt"),
])
def test_usage_errors_exit_2_in_one_line(job: Path, args: list[str], says: str) -> None:
    proc = cli(job, *args)
    assert proc.returncode == 2, proc.stderr
    assert says in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# ---------------------------------------------------------------- journal and resume


@pytest.mark.timeout(120)
def test_sigkill_then_resume_loses_nothing_and_redoes_little(job: Path) -> None:
    """C1: SIGKILL halfway through 1,000 items of 10 ms, then --resume."""
    items = "".join(f"item{i}\n" for i in range(1000))
    (job / "in.txt").write_text(items)
    journal = job / "j.db"
    proc = start(job, "map", "jobs:slow", "in.txt", "--journal", str(journal), "-j", "2")
    wait_for_ok(journal, 400, proc)
    proc.kill()
    proc.communicate()
    before = statuses(journal)
    assert 400 <= before["ok"] < 1000
    again = cli(job, "map", "jobs:slow", "in.txt", "--journal", str(journal), "-j", "2",
                "--resume", timeout=90)
    assert again.returncode == 0, again.stderr
    assert statuses(journal) == Counter({"ok": 1000})
    out = lines(again.stdout)
    assert sorted(x["input"] for x in out) == sorted(items.split())  # all, each once
    counts = side(job)
    assert set(counts) == set(items.split())
    twice = [k for k, n in counts.items() if n > 1]
    # At most the items in flight (2 jobs) plus the last ~100 ms of completions
    # (2 workers x 10 items) ran twice; a margin for a loaded machine.
    assert len(twice) <= 2 + 20 + 10, len(twice)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_exits_fast_and_leaves_nothing_running(job: Path, sig: int, code: int) -> None:
    """C3: Ctrl-C exits with 130 within 2 s, no item left `running`; SIGTERM with 143."""
    (job / "in.txt").write_text("".join(f"item{i}\n" for i in range(1000)))
    journal = job / "j.db"
    proc = start(job, "map", "jobs:slow", "in.txt", "--journal", str(journal), "-j", "2")
    wait_for_ok(journal, 100, proc)
    proc.send_signal(sig)
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - t0 < 2.0
    assert proc.returncode == code, err
    assert "Traceback" not in err and "--resume" in err
    left = statuses(journal)
    assert left["running"] == 0 and left["ok"] >= 100
    again = cli(job, "map", "jobs:slow", "in.txt", "--journal", str(journal), "--resume",
                timeout=90)
    assert again.returncode == 0 and statuses(journal) == Counter({"ok": 1000})
    twice = [k for k, n in side(job).items() if n > 1]
    assert len(twice) <= 2, twice  # what ran when the signal came, at most


@pytest.mark.timeout(120)
def test_run_interrupt_kills_commands(job: Path) -> None:
    journal = job / "j.db"
    proc = start(job, "run", "sleep 1009.{}", "--args", "1", "2", "--journal", str(journal))
    deadline = time.monotonic() + 20
    while not [p for p in Path("/proc").iterdir() if "sleep 1009.2" in _cmdline(p)]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=10)
    assert proc.returncode == 130
    time.sleep(0.2)
    assert not [p for p in Path("/proc").iterdir() if "sleep 1009." in _cmdline(p)]
    assert statuses(journal) == Counter({"pending": 2})


@pytest.mark.timeout(120)
def test_reordered_input_resumes_by_content(job: Path) -> None:
    """C2: reverse the input, add new lines, --resume-failed: exactly the failed and the
    new items run (GNU parallel resumes by position and gets this wrong)."""
    journal = job / "j.db"
    first = [str(i) for i in range(1, 41)]
    (job / "in.txt").write_text("\n".join(first) + "\n")
    proc = cli(job, "map", "jobs:fail_sevens", "in.txt", "--journal", str(journal))
    assert proc.returncode == 1
    (job / "side.txt").unlink()
    new = [str(i) for i in range(41, 46)]
    (job / "in.txt").write_text("\n".join(list(reversed(first)) + new) + "\n")
    proc = cli(job, "map", "jobs:fail_sevens", "in.txt", "--journal", str(journal),
               "--resume-failed", "-k")
    assert proc.returncode == 1
    failed_before = [x for x in first if int(x) % 7 == 0]
    assert side(job) == Counter(failed_before + new)
    out = lines(proc.stdout)
    assert [x["input"] for x in out] == list(reversed(first)) + new  # complete, in order
    # --retry-failed: only the failures, inputs from the journal
    (job / "side.txt").unlink()
    proc = cli(job, "map", "jobs:fail_sevens", "--journal", str(journal), "--retry-failed")
    assert sorted(side(job)) == sorted(x for x in first + new if int(x) % 7 == 0)
    assert all(x["attempts"] == 3 for x in lines(proc.stdout) if x["input"] in failed_before)


@pytest.mark.timeout(120)
def test_exit_codes_halt_and_resume(job: Path) -> None:
    """C4: 0 all ok, 1 some failed, 2 a different job's journal, 3 halted; after
    --halt now the rest is pending and --resume finishes it."""
    journal = job / "j.db"
    assert cli(job, "map", "jobs:slow", "--args", "a", "b").returncode == 0
    args = [str(i) for i in range(1, 201)]
    proc = cli(job, "map", "jobs:fail_sevens", "--args", *args, "--journal", str(journal),
               "--halt", "now,fail=1", "-j", "2")
    assert proc.returncode == 3, proc.stderr
    left = statuses(journal)
    assert left["running"] == 0 and left["failed"] >= 1
    assert left["ok"] + left["failed"] < 200
    other = cli(job, "map", "jobs:slow", "--args", *args, "--journal", str(journal), "--resume")
    assert other.returncode == 2 and "function" in other.stderr and "jobs:slow" in other.stderr
    status = cli(job, "status", str(journal))
    assert status.returncode == 0 and "--resume would run" in status.stdout
    proc = cli(job, "map", "jobs:fail_sevens", "--args", *args, "--journal", str(journal),
               "--resume")
    assert proc.returncode == 1  # the multiples of 7 fail
    assert statuses(journal) == Counter({"ok": 172, "failed": 28})
    assert "--retry-failed" in proc.stderr  # the command that retries the failures
    fresh = cli(job, "map", "jobs:slow", "--args", "a", "--journal", str(journal), "--fresh")
    assert fresh.returncode == 0 and statuses(journal) == Counter({"ok": 1})


@pytest.mark.timeout(60)
def test_a_used_journal_needs_a_resume_flag(job: Path) -> None:
    journal = job / "j.db"
    assert cli(job, "map", "jobs:slow", "--args", "a", "--journal", str(journal)).returncode == 0
    proc = cli(job, "map", "jobs:slow", "--args", "a", "--journal", str(journal))
    assert proc.returncode == 2 and "--resume" in proc.stderr and "--fresh" in proc.stderr
    proc = cli(job, "map", "jobs:slow", "--args", "a", "b", "--journal", str(journal),
               "--resume")
    assert proc.returncode == 0 and side(job) == Counter({"a": 1, "b": 1})


@pytest.mark.timeout(60)
def test_results_and_status_read_the_journal(job: Path) -> None:
    journal = job / "j.db"
    cli(job, "map", "jobs:fail_sevens", "--args", "6", "7", "8", "--journal", str(journal))
    out = lines(cli(job, "results", str(journal)).stdout)
    assert [x["input"] for x in out] == ["6", "7", "8"]
    failed = lines(cli(job, "results", str(journal), "--failed").stdout)
    assert [x["input"] for x in failed] == ["7"]
    csv_text = cli(job, "results", str(journal), "--format", "csv").stdout
    assert csv_text.splitlines()[0].startswith("seq,input,ok,result,error_type")
    assert len(csv_text.splitlines()) == 4
    status = cli(job, "status", str(journal)).stdout
    assert "3 items: 2 ok, 1 failed" in status and "ValueError: 1" in status
    assert cli(job, "status", str(job / "none.db")).returncode == 2


@pytest.mark.timeout(60)
def test_a_result_that_is_not_json_fails_its_item_clearly(job: Path) -> None:
    proc = cli(job, "map", "jobs:unjson", "--args", "a")
    (x,) = lines(proc.stdout)
    assert x["error"]["type"] == "TypeError" and "not JSON data" in x["error"]["message"]


def test_map_trace_writes_a_report_of_every_call(job: Path) -> None:
    proc = cli(job, "map", "jobs:fail_sevens", "--args", *map(str, range(1, 15)), "-j", "2",
               "--trace", "run.html")
    assert proc.returncode == 1, proc.stderr  # 7 and 14 failed
    text = (job / "run.html").read_text()
    assert "run_call" in text and "http://" not in text and "https://" not in text
    data = json.loads(text.split('<script id="data" type="application/json">')[1]
                      .split("</script>")[0])
    assert sum(len(lane["s"]) for lane in data["lanes"]) == 14  # one span per call
    proc = cli(job, "map", "jobs:add", "--args", "1", "2", "--trace", "run.txt")
    assert proc.returncode == 2 and "--trace='run.txt'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_run_trace_has_a_span_per_command_on_a_lane_per_runner_thread(job: Path) -> None:
    proc = cli(job, "run", "sh -c 'test {} != 3'", "--args", "1", "2", "3", "4", "-j", "2",
               "--trace", "run.json")
    assert proc.returncode == 1, proc.stderr  # the command for 3 failed
    events = json.loads((job / "run.json").read_text())["traceEvents"]
    spans = [ev for ev in events if ev["ph"] == "X"]
    assert len(spans) == 4 and all(ev["name"] == "command" for ev in spans)
    failed = [ev for ev in spans if ev["args"].get("status") == "error"]
    assert len(failed) == 1 and "exited with code 1" in failed[0]["args"]["error"]
    assert len({ev["tid"] for ev in spans}) <= 2  # two runner threads
    assert any("shell commands (2 runner threads" in json.dumps(ev) for ev in events)
