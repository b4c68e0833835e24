"""The Chrome trace event file (``.json``, ``.json.gz``) that Perfetto and
``chrome://tracing`` open.

Object form: ``{"traceEvents": [...], "displayTimeUnit": "ms", "otherData": {...}}``.
Each pool is a process (``pid`` = the pool's number in the trace) and each worker
process a thread of it (``tid`` = the worker's real pid), named by metadata events
(``ph: "M"``), so a replacement worker gets a track of its own. A span is one complete
event (``ph: "X"``) from the worker starting the record to its result being pickled;
worker starts, retirements, deaths and replacements are instant events (``ph: "i"``).
Timestamps are microseconds since the trace began, with nanosecond decimals.

Events are written one per line by hand rather than through ``json.dumps`` of one big
list: that keeps a span at about 100 bytes and the memory flat for a million of them.
"""

from __future__ import annotations

import gzip
import json
from typing import IO

from conveyor._trace import _recorder as R
from conveyor._trace import _view


def _us(ns: int) -> str:
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    return f"{sign}{ns // 1000}.{ns % 1000:03d}"


def write(rec: R.Recorder, path: str) -> None:
    if path.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8", compresslevel=6) as f:
            _write(rec, f)
    else:
        with open(path, "w", encoding="utf-8") as f:
            _write(rec, f)


def _write(rec: R.Recorder, f: IO[str]) -> None:
    origin = rec.origin_ns
    all_spans = _view.spans(rec)
    all_events = _view.events(rec)
    lanes = _view.lanes_of(all_spans, all_events, rec.end_ns or origin)
    dumps = json.dumps
    f.write('{"displayTimeUnit":"ms",\n')
    f.write('"otherData":' + dumps({"generator": "conveyor", "dropped_events": rec.dropped,
                                    "clock": "CLOCK_MONOTONIC, microseconds since the "
                                             "trace began"}) + ',\n')
    f.write('"traceEvents":[\n')
    first = True

    def out(line: str) -> None:
        nonlocal first
        f.write(line if first else ",\n" + line)
        first = False

    for number, (owner, workers, kind) in enumerate(rec.pools, 1):
        what = (f"pool {number} ({workers} workers, pid {owner})" if kind == "pool" else
                f"shell commands ({workers} runner threads of pid {owner})")
        out(f'{{"name":"process_name","ph":"M","pid":{number},"tid":0,'
            f'"args":{{"name":{dumps(what)}}}}}')
        out(f'{{"name":"process_sort_index","ph":"M","pid":{number},"tid":0,'
            f'"args":{{"sort_index":{number}}}}}')
    for order, ((pool, pid), (slot, _spans, _a, _b, ended)) in enumerate(lanes.items()):
        name = f"worker {slot} (pid {pid})" + (f", {ended}" if ended else "")
        out(f'{{"name":"thread_name","ph":"M","pid":{pool},"tid":{pid},'
            f'"args":{{"name":{dumps(name)}}}}}')
        out(f'{{"name":"thread_sort_index","ph":"M","pid":{pool},"tid":{pid},'
            f'"args":{{"sort_index":{order}}}}}')
    names: dict[str, str] = {}
    for s in all_spans:
        quoted = names.get(s.function)
        if quoted is None:
            quoted = names[s.function] = dumps(s.function)
        args = f'"n":{s.items},"in":{s.arg_bytes},"out":{s.result_bytes}'
        if s.status != "ok":
            args += f',"status":"{s.status}"'
        if s.error is not None:
            args += ',"error":' + dumps(s.error)
        if s.label is not None:
            args += ',"call":' + dumps(s.label)
        out(f'{{"name":{quoted},"ph":"X","ts":{_us(s.started_ns - origin)},'
            f'"dur":{_us(s.pickled_ns - s.started_ns)},"pid":{s.pool},"tid":{s.pid},'
            f'"args":{{{args}}}}}')
    for ev in all_events:
        facts: dict[str, int | str] = {}
        if ev.exitcode is not None:
            facts["exitcode"] = ev.exitcode
            if ev.exitcode < 0:
                facts["signal"] = _view.signal_text(ev.exitcode)
        if ev.peak_rss is not None:
            facts["peak_rss_bytes"] = ev.peak_rss
        if ev.replaces is not None:
            facts["replaces_pid"] = ev.replaces
        out(f'{{"name":{dumps(ev.kind)},"ph":"i","s":"t","ts":{_us(ev.ns - origin)},'
            f'"pid":{ev.pool},"tid":{ev.pid},"args":{dumps(facts)}}}')
    f.write("\n]}\n")
