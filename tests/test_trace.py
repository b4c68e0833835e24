"""conveyor.trace(): spans recorded in real worker processes, the Chrome trace and the
HTML report. Scenarios that kill workers or interrupt the block run in a fresh
interpreter (tests/scenarios/trace_faults.py)."""

from __future__ import annotations

import gzip
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import conveyor as cv
from helpers import sleep_for, square

SCENARIO = Path(__file__).parent / "scenarios" / "trace_faults.py"
pytestmark = pytest.mark.timeout(90)

ORDER = ("submitted_ns", "dispatched_ns", "read_ns", "started_ns", "loaded_ns", "returned_ns",
         "pickled_ns", "sent_ns", "received_ns")


def check_trace_events(doc: Any) -> list[dict[str, Any]]:
    """The trace event format's rules that Perfetto and chrome://tracing rely on."""
    assert isinstance(doc, dict) and isinstance(doc["traceEvents"], list)
    events = doc["traceEvents"]
    for ev in events:
        assert isinstance(ev["name"], str) and ev["ph"] in ("X", "i", "M"), ev
        assert type(ev["pid"]) is int and type(ev["tid"]) is int, ev
        if ev["ph"] == "M":
            assert ev["name"] in ("process_name", "thread_name", "process_sort_index",
                                  "thread_sort_index") and isinstance(ev["args"], dict)
            continue
        assert isinstance(ev["ts"], int | float) and ev["ts"] >= 0, ev
        if ev["ph"] == "X":
            assert isinstance(ev["dur"], int | float) and ev["dur"] >= 0, ev
        else:
            assert ev["s"] in ("t", "p", "g"), ev
    named = {ev["tid"] for ev in events if ev["name"] == "thread_name"}
    assert {ev["tid"] for ev in events if ev["ph"] != "M"} <= named  # every track has a name
    return events


def check_spans(spans: list[cv.Span]) -> None:
    for s in spans:
        times = [getattr(s, name) for name in ORDER]
        assert times == sorted(times), s
    by_lane: dict[tuple[int, int], list[cv.Span]] = {}
    for s in spans:
        by_lane.setdefault((s.pool, s.pid), []).append(s)
    for lane in by_lane.values():
        lane.sort(key=lambda s: s.started_ns)
        for a, b in itertools.pairwise(lane):
            assert a.pickled_ns <= b.started_ns, (a, b)  # one worker: never two at once


def test_the_recorder_reads_rows_as_the_worker_packs_them() -> None:
    from conveyor._pool import worker as _worker
    from conveyor._trace import _recorder

    assert _recorder.ROW.format == _worker.TRACE_ROW.format


def test_a_traced_map_records_one_span_per_chunk_in_order(tmp_path: Path) -> None:
    with cv.trace() as t, cv.Pool(2) as pool:
        assert pool.map(square, range(40), chunksize=4) == [x * x for x in range(40)]
        pids = set(pool.statistics().worker_pids)
    spans = t.spans
    assert len(spans) == 10 and sum(s.items for s in spans) == 40
    assert {s.pid for s in spans} <= pids and {s.function for s in spans} == {"square"}
    assert all(s.status == "ok" and s.arg_bytes > 0 and s.result_bytes > 0 for s in spans)
    check_spans(spans)
    kinds = [e.kind for e in t.worker_events]
    # A worker may still be starting when the map is done and the pool closes.
    assert kinds.count("worker started") == 2 and 1 <= kinds.count("worker ready") <= 2


def test_sleep_spans_hold_the_sleep_and_summary_adds_up() -> None:
    with cv.trace() as t, cv.Pool(2) as pool:
        futures = [pool.submit(sleep_for, 0.02) for _ in range(10)]
        assert [f.result(timeout=30) for f in futures] == [0.02] * 10
    spans = t.spans
    check_spans(spans)
    assert len(spans) == 10 and all(s.run_ns >= 20_000_000 for s in spans)
    summary = t.summary()
    assert summary.spans == 10 and summary.items == 10 and summary.errors == 0
    assert summary.overhead.running_ns == sum(s.run_ns for s in spans)
    lanes = {(lane.pool, lane.pid) for lane in summary.lanes}
    assert lanes == {(s.pool, s.pid) for s in spans}
    assert all(0 < lane.utilisation <= 1 for lane in summary.lanes)
    assert sum(n for _, _, n in summary.histogram) == 10
    assert summary.slowest and summary.slowest[0].label.startswith("sleep_for(0.02")
    assert "10 spans (10 tasks, 0 failed)" in str(summary)


def test_retired_workers_and_their_replacements_are_events_and_lanes() -> None:
    with cv.trace() as t, cv.Pool(1, maxtasksperchild=2) as pool:
        assert pool.map(square, range(6), chunksize=1) == [x * x for x in range(6)]
    kinds = [e.kind for e in t.worker_events]
    assert kinds.count("worker retiring") >= 2 and kinds.count("worker exited") >= 2
    replaced = [e for e in t.worker_events if e.kind == "replacement started"]
    assert len(replaced) >= 2 and all(e.replaces is not None for e in replaced)
    lanes = t.summary().lanes
    assert len({(s.pool, s.pid) for s in t.spans}) == 3  # 2 tasks per worker process
    assert {lane.ended for lane in lanes if lane.spans} >= {"exited"}
    check_spans(t.spans)


def test_nothing_is_recorded_outside_the_block() -> None:
    t = cv.trace()
    with cv.Pool(2) as pool:
        pool.map(square, range(10))
        with t:
            pool.map(square, range(6), chunksize=1)
        pool.map(square, range(10))
    assert len(t.spans) == 6


def test_pools_created_inside_code_you_do_not_control_are_recorded() -> None:
    def library_code() -> list[int]:
        with cv.Pool(2) as pool:
            return pool.map(square, range(8), chunksize=2)

    with cv.trace() as t:
        library_code()
        list(cv.Pipeline(range(6)).map(square, workers=2))
        assert len(cv.work_queue([3], countdown, workers=2)) == 4  # tasks 3, 2, 1, 0
    pools = {s.pool for s in t.spans}
    assert len(pools) == 3 and sum(s.items for s in t.spans) == 18
    by_pool: dict[int, int] = {}
    for s in t.spans:
        by_pool[s.pool] = by_pool.get(s.pool, 0) + s.items
    assert sorted(by_pool.values()) == [4, 6, 8]  # work queue, pipeline, library pool


def countdown(n: int, add: Any) -> int:
    if n:
        add(n - 1)
    return n


def test_pool_trace_shorthand_writes_when_the_pool_stops(tmp_path: Path) -> None:
    path = tmp_path / "pool.json.gz"
    with cv.Pool(2, trace=path) as pool:
        pool.map(square, range(20), chunksize=5)
    with gzip.open(path, "rt") as f:
        events = check_trace_events(json.load(f))
    assert sum(1 for ev in events if ev["ph"] == "X") == 4


def test_bad_trace_paths_are_refused_naming_the_parameter(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"trace='run\.txt'.*\.json"):
        cv.Pool(1, trace="run.txt")
    with pytest.raises(ValueError, match=r"path='x\.csv'"):
        cv.trace("x.csv")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        cv.trace(tmp_path / "no" / "such.html")
    with pytest.raises(ValueError, match="max_events"):
        cv.trace(max_events=0)


def test_the_cap_counts_what_it_dropped() -> None:
    with cv.trace(max_events=5) as t, cv.Pool(1) as pool:
        pool.map(square, range(30), chunksize=1)
    assert len(t.spans) + len(t.worker_events) == t.kept <= 5
    assert t.kept + t.dropped == 30 + 2  # 30 spans and 2 worker events (start, ready)
    assert t.summary().dropped == t.dropped


def test_json_is_valid_and_small(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    with cv.trace(path) as t, cv.Pool(2) as pool:
        pool.map(square, range(2000), chunksize=1)
    events = check_trace_events(json.loads(path.read_text()))
    spans = [ev for ev in events if ev["ph"] == "X"]
    assert len(spans) == len(t.spans) == 2000
    per_span = path.stat().st_size / len(spans)
    assert per_span <= 120, per_span
    assert {ev["tid"] for ev in spans} == {s.pid for s in t.spans}
    assert all(ev["args"]["n"] == 1 for ev in spans)


def url_arg(x: str) -> str:
    time.sleep(0.01 if x.endswith("slow") else 0)
    return x.upper()


def test_html_is_self_contained_and_holds_the_data(tmp_path: Path) -> None:
    path = tmp_path / "run.html"
    with cv.trace(path) as t, cv.Pool(2) as pool:
        pool.map(url_arg, [f"https://example.com/{i}" for i in range(50)] +
                 ["http://example.com/slow"], chunksize=1)
    text = path.read_text()
    assert "http://" not in text and "https://" not in text
    assert "url_arg(&#x27;http&#58;//example.com/slow&#x27;)" in text  # the slowest, escaped
    data = json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>',
                                text, re.S).group(1))  # type: ignore[union-attr]
    assert sum(len(lane["s"]) for lane in data["lanes"]) == len(t.spans) == 51
    assert "<table id=\"overhead\">" in text and "waiting in the queue" in text


def test_html_grows_by_at_most_20_bytes_per_span(tmp_path: Path) -> None:
    sizes = []
    for n in (100, 4100):
        path = tmp_path / f"run{n}.html"
        with cv.trace(path), cv.Pool(2) as pool:
            pool.map(square, range(n), chunksize=1)
        sizes.append(path.stat().st_size)
    assert (sizes[1] - sizes[0]) / 4000 <= 20, sizes
    assert sizes[0] < 60_000, sizes


# ------------------------------------------------------------ in a fresh interpreter


def run_scenario(tmp_path: Path, name: str, interrupt: bool = False) -> list[dict[str, Any]]:
    proc = subprocess.Popen([sys.executable, str(SCENARIO), name, str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).parent)
    facts = []
    assert proc.stdout is not None
    if interrupt:
        facts.append(json.loads(proc.stdout.readline()))
        proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    facts += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    for f in facts:
        for pid in f.get("pids", []):
            deadline = time.monotonic() + 5
            while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
                time.sleep(0.02)
            assert not os.path.exists(f"/proc/{pid}"), f"worker {pid} left behind"
    return facts


def test_a_killed_worker_leaves_an_error_span_and_its_replacement_a_new_lane(
        tmp_path: Path) -> None:
    facts = run_scenario(tmp_path, "death")[-1]
    assert facts["outcomes"] == [0, 1, 2, 3, 4, "WorkerLostError", 6, 7, 8, 9, 10, 11]
    (lost,) = facts["lost"]
    assert lost["status"] == "lost" and lost["error"].startswith("WorkerLostError")
    assert "task(5" in lost["error"]
    # Closed at the death: ~2-5 ms after it here; the bound is generous for busy machines.
    assert 0 <= lost["received_ns"] - facts["death_ns"] < 2_000_000_000
    died = [e for e in facts["events"] if e["kind"] == "worker died"]
    assert [e["pid"] for e in died] == [lost["pid"]] and died[0]["exitcode"] == 3
    replaced = [e for e in facts["events"] if e["kind"] == "replacement started"]
    assert [e["replaces"] for e in replaced] == [lost["pid"]]
    assert replaced[0]["worker"] == lost["worker"] and replaced[0]["pid"] != lost["pid"]
    events = check_trace_events(json.loads((tmp_path / "death.json").read_text()))
    lost_ev = [ev for ev in events if ev["ph"] == "X" and ev["args"].get("status") == "lost"]
    assert len(lost_ev) == 1 and "WorkerLostError" in lost_ev[0]["args"]["error"]
    lanes = {ev["tid"] for ev in events if ev["name"] == "thread_name"}
    assert {lost["pid"], replaced[0]["pid"]} <= lanes  # the replacement has its own track
    html = (tmp_path / "death.html").read_text()
    assert "died (exit code 3)" in html and "WorkerLostError" in html
    assert re.search(r"<table id=\"failures\">.*?<td>lost</td>", html, re.S)


def test_the_file_is_written_when_the_block_ends_by_an_exception(tmp_path: Path) -> None:
    assert run_scenario(tmp_path, "exception") == [{"raised": True}]
    events = check_trace_events(json.loads((tmp_path / "exc.json").read_text()))
    assert any(ev["ph"] == "X" for ev in events)


def test_the_file_is_written_when_the_block_ends_by_ctrl_c(tmp_path: Path) -> None:
    facts = run_scenario(tmp_path, "sigint", interrupt=True)
    assert facts[0]["ready"] and facts[-1] == {"interrupted": True}
    assert "abs" in (tmp_path / "int.html").read_text()


# ------------------------------------------------------------------ a real browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install "
                    "chromium; .ci/run installs it)")
def test_the_html_draws_every_lane_in_a_real_browser(tmp_path: Path) -> None:
    path = tmp_path / "run.html"
    with cv.trace(path) as t, cv.Pool(2, maxtasksperchild=15) as pool:
        pool.map(square, range(60), chunksize=1)
    busy = {(s.pool, s.pid) for s in t.spans}
    assert len(busy) >= 4  # replacements after 15 tasks each: new lanes
    lanes = len(t.summary().lanes)  # with workers that started but ran nothing
    assert CHROMIUM is not None
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
         "--dump-dom", path.as_uri()],
        capture_output=True, text=True, timeout=60)
    dom = proc.stdout
    assert f'data-drawn-lanes="{lanes}"' in dom, proc.stderr[-2000:]
    assert re.search(r'<div id="errors"></div>', dom), "the page logged a script error"
    drawn = 0
    for i in range(lanes):
        group = re.search(rf'<g class="lane" data-lane="{i}" data-spans="(\d+)">(.*?)</g>',
                          dom, re.S)
        assert group is not None, f"lane {i} was not drawn"
        if int(group.group(1)):
            assert 'class="ok"' in group.group(2), f"lane {i} has spans but no bars"
            drawn += 1
    assert drawn == len(busy)
    assert dom.count('class="hbar"') > 0  # the histogram
