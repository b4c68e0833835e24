"""Pipelines: stages of workers that end by themselves, in real processes."""

from __future__ import annotations

import itertools
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import conveyor as cv
from helpers import (
    add_state,
    constant,
    crash_on,
    double,
    fail_on,
    is_even,
    jitter,
    square,
    twice,
)

pytestmark = pytest.mark.timeout(90)
SCENARIO = Path(__file__).parent / "scenarios" / "pipeline_faults.py"


@pytest.mark.parametrize("workers", [1, 2, 4, 8])
def test_three_stages_end_by_themselves(workers: int) -> None:
    got = (cv.Pipeline(range(300))
           .map(double, workers=workers)
           .filter(is_even, workers=workers)
           .map(square, workers=workers)
           .run())
    assert got == [(2 * x) ** 2 for x in range(300)]


def test_every_stage_kind_together() -> None:
    pipe = (cv.Pipeline(iter(range(50)))
            .flat_map(twice, workers=2)
            .map(jitter, workers=2)
            .filter(lambda x: x % 3 != 0, kind="thread", workers=3)
            .batch(4)
            .unbatch()
            .map(lambda x: -x, kind="thread", workers=2))
    expected = [-x for x in range(50) for _ in range(2) if x % 3 != 0]
    assert pipe.run() == expected
    stats = {s.name: s for s in pipe.stats.stages}
    assert stats["flat_map(twice)"].items_in == 50 and stats["flat_map(twice)"].items_out == 100
    assert "flat_map(twice)" in str(pipe.stats) and "wall time" in str(pipe.stats)


def test_unordered_yields_everything() -> None:
    got = list(cv.Pipeline(range(200), ordered=False).map(jitter, workers=3))
    assert sorted(got) == list(range(200))


def test_empty_source_and_empty_pipeline() -> None:
    assert cv.Pipeline([]).map(square, workers=2).batch(3).run() == []
    assert cv.Pipeline(range(5)).run() == [0, 1, 2, 3, 4]
    assert cv.Pipeline(range(5)).batch(2).run() == [[0, 1], [2, 3], [4]]


def test_each_is_a_sink(tmp_path: Path) -> None:
    out = tmp_path / "sink"
    out.mkdir()
    result = cv.Pipeline(range(10)).each(lambda x: (out / str(x)).write_text("ok"),
                                         workers=2).run()
    assert result == [] and sorted(int(p.name) for p in out.iterdir()) == list(range(10))
    with pytest.raises(ValueError, match="each"):
        cv.Pipeline(range(3)).each(print).map(square)


def test_source_that_raises() -> None:
    def source():
        yield 1
        yield 2
        raise OSError("disk gone")

    with pytest.raises(cv.PipelineError, match="source raised OSError") as info:
        cv.Pipeline(source()).map(square, workers=2).run()
    assert info.value.stage == "source" and isinstance(info.value.__cause__, OSError)


@pytest.mark.parametrize("op", ["map", "filter", "flat_map", "each"])
def test_an_error_in_a_stage_names_stage_and_item(op: str) -> None:
    pipe = cv.Pipeline(range(20)).map(double, workers=2)
    getattr(pipe, op)(fail_on_six, workers=2, name="checker")
    start = time.monotonic()
    with pytest.raises(cv.PipelineError) as info:
        pipe.run()
    assert time.monotonic() - start < 10
    err = info.value
    assert err.stage == "checker" and err.item_repr == "6"
    assert isinstance(err.__cause__, ValueError)
    assert isinstance(err.__cause__.__cause__, cv.RemoteTraceback)


def fail_on_six(x: int) -> list[int]:
    return [fail_on(x, bad=6)]  # a list, so it also serves flat_map


def test_on_error_skip_records_failed_items() -> None:
    pipe = cv.Pipeline(range(10)).map(fail_on, workers=2)
    assert pipe.run(on_error="skip") == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert [(e.stage, e.item) for e in pipe.errors] == [("map(fail_on)", 3)]
    assert isinstance(pipe.errors[0].error, ValueError)


def test_a_dead_stage_worker_fails_its_item_and_is_replaced() -> None:
    pipe = cv.Pipeline(range(20)).map(crash_on, workers=2).map(double)
    assert pipe.run(on_error="skip") == [2 * x for x in range(20) if x != 7]
    assert isinstance(pipe.errors[0].error, cv.WorkerLostError)
    with pytest.raises(cv.PipelineError) as info:
        cv.Pipeline(range(20)).map(crash_on, workers=2).run()
    assert isinstance(info.value.__cause__, cv.WorkerLostError)


def test_stage_initializers_give_worker_state() -> None:
    got = (cv.Pipeline(range(6))
           .map(add_state, workers=2, initializer=constant, initargs=("proc",))
           .map(lambda pair: (*pair, cv.worker_state()), kind="thread", workers=2,
                initializer=constant, initargs=("thread",))
           .run())
    assert got == [(x, "proc", "thread") for x in range(6)]


def test_back_pressure_bounds_what_is_read_from_the_source() -> None:
    read = itertools.count()
    source = (next(read) for _ in range(10_000_000))
    pipe = (cv.Pipeline(source, maxsize=64)
            .map(double, workers=2, maxsize=64)
            .map(square, workers=2, maxsize=64)
            .map(jitter, workers=1, maxsize=16))  # the slow last stage
    for taken, _ in enumerate(pipe, 1):
        if taken == 500:
            break
    # Bounded by the buffers and in-flight windows (at most 2 chunks of at most 8192
    # items per worker), nowhere near 10 million.
    assert next(read) < 500 + 64 * 4 + 2 * (2 + 2 + 1) * 8192


def test_large_items_travel_in_small_chunks() -> None:
    """Cheap work on large items: chunks are sized by bytes too, so what is read ahead
    stays a few megabytes instead of thousands of 100 KB items."""
    read = itertools.count()

    def source():  # type: ignore[no-untyped-def]
        for _ in range(100_000):
            if next(read) > 400:
                raise RuntimeError("the pipeline read too far ahead")
            yield bytes(100_000)  # a new object each time, as a file's blocks would be

    pipe = (cv.Pipeline(source(), maxsize=8)
            .map(len, workers=2, maxsize=8)
            .map(lambda n: time.sleep(0.002) or n, kind="thread", maxsize=8))  # slow
    for taken, size in enumerate(pipe, 1):
        assert size == 100_000
        if taken == 100:
            break


def test_breaking_out_stops_every_worker() -> None:
    pipe = cv.Pipeline(itertools.count()).map(double, workers=2).map(square, workers=2)
    for i, _ in enumerate(pipe):
        if i == 100:
            break
    # the leak guard (conftest) checks that no process or thread is left


def test_progress_shows_one_line_per_stage(capsys: pytest.CaptureFixture[str]) -> None:
    cv.Pipeline(range(100)).map(double, workers=2).filter(is_even).run(progress=True)
    err = capsys.readouterr().err
    assert "map(double)" in err and "filter(is_even)" in err and "buffer" in err


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="iterable"):
        cv.Pipeline(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="workers"):
        cv.Pipeline([1]).map(square, workers=0)
    with pytest.raises(ValueError, match="kind"):
        cv.Pipeline([1]).map(square, kind="fiber")
    with pytest.raises(ValueError, match="batch size"):
        cv.Pipeline([1]).batch(0)
    with pytest.raises(TypeError, match="callable"):
        cv.Pipeline([1]).map(5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="on_error"):
        cv.Pipeline([1]).run(on_error="ignore")


def test_ctrl_c_stops_the_pipeline() -> None:
    proc = subprocess.Popen([sys.executable, str(SCENARIO), "ctrl_c"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout is not None
    json.loads(proc.stdout.readline())
    time.sleep(0.3)  # let it get into the loop that handles the interrupt
    sent = time.time()
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    facts = json.loads(out.splitlines()[0])
    assert facts["interrupted"] and facts["at"] - sent < 2.0
    assert err.count("Traceback (most recent call last)") == 1
    time.sleep(1.0)
    # This checkout's scenario only (the full path): other runs may share the machine.
    leftover = subprocess.run(["pgrep", "-f", f"{SCENARIO} ctrl_c$"], capture_output=True,
                              text=True).stdout.split()
    assert leftover == []


def test_the_ctrl_c_handler_is_put_back_after_runs() -> None:
    """A run holds Ctrl-C back while its own code runs; afterwards, and after nested
    runs (a pipeline as another's source) or an iterator closed early, the handlers are
    the ones from before."""
    before = (signal.getsignal(signal.SIGINT), sys.unraisablehook)
    inner = cv.Pipeline(range(50)).map(double, workers=1)
    outer = cv.Pipeline(iter(inner)).map(square, workers=1)
    assert outer.run() == [(2 * x) ** 2 for x in range(50)]
    it = cv.Pipeline(range(10)).map(double).iter()
    next(it)
    assert signal.getsignal(signal.SIGINT) is not before[0]  # held back while it runs
    it.close()  # type: ignore[attr-defined]
    assert (signal.getsignal(signal.SIGINT), sys.unraisablehook) == before


class _Lines:
    """Lines from a child's stdout, each awaited with a deadline (a hang fails the test)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()
        self.buf = b""

    def next(self, timeout: float) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise AssertionError(f"no line from the scenario within {timeout} s")
            chunk = os.read(self.fd, 65536)
            if not chunk:
                raise AssertionError("the scenario exited early")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)  # type: ignore[no-any-return]


def _without_bars(text: str) -> str:
    """stderr without the progress bars' redraws (tqdm writes item counts and rates)."""
    lines = text.replace("\r", "\n").splitlines()
    return "\n".join(x for x in lines if x.strip() and "item/s" not in x and "item [" not in x)


STORM_TRIALS = int(os.environ.get("CONVEYOR_STORM_TRIALS", "60"))


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", ["single", "burst", "finish", "queue"])
def test_every_ctrl_c_stops_the_pipeline_cleanly(mode: str, tmp_path: Path) -> None:
    """Ctrl-C at random moments (start-up, full flow, stopping, the end), one pipeline per
    trial: each must end with KeyboardInterrupt (or, for a short source, its complete
    result), leave no process, thread, segment or descriptor, and print no traceback or
    "Exception ignored" message."""
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    err_path = tmp_path / "stderr"
    with err_path.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, str(SCENARIO), "ctrl_c_storm", str(STORM_TRIALS), mode],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, start_new_session=True)
    lines = _Lines(proc)
    try:
        for trial in range(STORM_TRIALS):
            assert lines.next(30) == {"trial": trial, "running": True}
            time.sleep(rng.uniform(0.0, 0.25))
            signals = rng.randint(2, 5) if mode == "burst" else 1
            for _ in range(signals):
                if mode in ("single", "queue") and trial % 3 == 0:
                    os.killpg(proc.pid, signal.SIGINT)  # as a terminal does: workers too
                else:
                    os.kill(proc.pid, signal.SIGINT)
                time.sleep(rng.uniform(0.0, 0.03))
            try:
                report = lines.next(30)
            except AssertionError as exc:
                os.kill(proc.pid, signal.SIGUSR1)  # the scenario dumps every thread's stack
                time.sleep(1.0)
                tail = _without_bars(err_path.read_text(errors="replace"))[-6000:]
                raise AssertionError(f"seed {seed}, mode {mode}, trial {trial}: {exc}\n"
                                     f"{tail}") from None
            context = f"seed {seed}, mode {mode}: {report}"
            if mode == "finish" and report["outcome"] == "finished":
                assert report["complete"], context
            else:
                assert report["outcome"] == "KeyboardInterrupt", context
            assert report["children"] == [] and report["threads"] == [], context
            assert report["segments"] == [] and report["fds_added"] == 0, context
        lines.next(30)
        proc.communicate(b"bye\n", timeout=30)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None and not pipe.closed:
                pipe.close()
    stderr = _without_bars(err_path.read_text(errors="replace"))
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, \
        f"seed {seed}, mode {mode}:\n{stderr[-3000:]}"


def produce_into(ch: cv.Channel[int], start: int) -> None:
    with ch:
        for i in range(start, start + 100):
            ch.put(i)


def test_a_channel_as_the_source() -> None:
    import multiprocessing as mp

    ch: cv.Channel[int] = cv.Channel(maxsize=16, senders=2)
    producers = [mp.get_context("fork").Process(target=produce_into, args=(ch, s))
                 for s in (0, 1000)]
    for p in producers:
        p.start()
    got = cv.Pipeline(ch, ordered=False).map(double, workers=2).run()
    for p in producers:
        p.join()
    ch.unlink()
    assert sorted(got) == sorted(2 * x for x in [*range(100), *range(1000, 1100)])


@pytest.mark.timeout(120)
def test_progress_into_a_log_is_plain_lines() -> None:
    script = (
        "import conveyor as cv\n"
        "def inc(x):\n    return x + 1\n"
        "def walk(n, add):\n    if n < 200:\n        add(2 * n + 1); add(2 * n + 2)\n    return n\n"
        "if __name__ == '__main__':\n"
        "    out = cv.Pipeline(range(5000)).map(inc, workers=2).run(progress=True)\n"
        "    print(len(out), len(cv.work_queue([0], walk, workers=2, progress=True)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=100, env={**os.environ, "CONVEYOR_PROGRESS_EVERY": "0.01"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["5000", "401"]
    assert "\r" not in proc.stderr and "\x1b" not in proc.stderr
    assert "map(inc): 5,000 item" in proc.stderr and "buffer 0/1024" in proc.stderr
    assert "walk:" in proc.stderr and " task" in proc.stderr
