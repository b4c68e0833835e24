"""The HTML report: one self-contained file, readable without a network.

Layout: the summary line, a Gantt chart (one lane per worker process, so a replacement
worker has a lane of its own; failed spans in red, worker deaths as red marks),
utilisation per worker, a histogram of task run times, the slowest tasks with a short
repr of their arguments, and a table of where the time went (``_view``).

The tables are written here as static HTML; the chart and the histogram are drawn by an
inline script from inline data, so the file size grows by ~10-20 bytes per span: per
lane, two arrays of integer microseconds (each span's start as a delta from the one
before, and its duration). The script merges spans closer than half a pixel into one
bar, so a million spans still draw as at most a few thousand elements.

No ``http://`` or ``https://`` appears anywhere, even in users' reprs: ``://`` is
written ``:\\/\\/`` inside the JSON data and ``&#58;//`` in the HTML. The SVG is made by
the HTML parser (``innerHTML``), which needs no namespace URL.
"""

from __future__ import annotations

import html
import json

from conveyor._trace import _recorder as R
from conveyor._trace import _view
from conveyor._trace._view import fmt_ns


def _esc(text: str) -> str:
    return html.escape(text).replace("://", "&#58;//")


def _data_json(obj: object) -> str:
    # "\/" is a valid JSON escape of "/": it hides "://" and "</script>" alike.
    return json.dumps(obj, separators=(",", ":")).replace("/", "\\/")


def write(rec: R.Recorder, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(render(rec))


def render(rec: R.Recorder) -> str:
    all_spans = _view.spans(rec)
    all_events = _view.events(rec)
    summary = _view.summarize(rec, all_spans, all_events)
    end_ns = rec.end_ns or max([s.received_ns for s in all_spans], default=rec.origin_ns)
    lanes = _view.lanes_of(all_spans, all_events, end_ns)
    t0 = min([lane[2] for lane in lanes.values()], default=rec.origin_ns)
    lane_index = {key: i for i, key in enumerate(lanes)}
    lane_data = []
    for (pool, pid), (slot, lane_spans, start, end, ended) in lanes.items():
        starts, durs, bad = [], [], []
        prev = 0
        for i, s in enumerate(lane_spans):
            at = (s.started_ns - t0) // 1000
            starts.append(at - prev)
            prev = at
            durs.append(max(0, (s.pickled_ns - s.started_ns) // 1000))
            if s.status != "ok":
                bad.append([i, s.status, (s.error or s.status)[:300]])
        lane_data.append({"name": f"pool {pool} · worker {slot} · pid {pid}",
                          "start": (start - t0) // 1000, "end": (end - t0) // 1000,
                          "ended": ended, "s": starts, "d": durs, "bad": bad})
    marks = [[lane_index[(ev.pool, ev.pid)], ev.kind, (ev.ns - t0) // 1000]
             for ev in all_events if (ev.pool, ev.pid) in lane_index]
    data = {"lanes": lane_data, "events": marks,
            "hist": [[lo, hi, n] for lo, hi, n in summary.histogram]}
    parts = [_HEAD, f"<h1>conveyor trace</h1>\n<p class=\"lead\">{_esc(str(summary).splitlines()[0])}</p>\n",
             "<div id=\"errors\"></div>\n<h2>Timeline</h2>\n<p class=\"note\">One lane per worker "
             "process (a replacement worker gets a new lane). Bars: the worker busy with a "
             "record, from taking it to its result pickled; red: failed or cut short by a "
             "death; red marks: deaths. Hover for details.</p>\n<div id=\"gantt\"></div>\n"]
    parts.append(_utilisation(summary))
    parts.append("<h2>Task run times</h2>\n<div id=\"hist\"></div>\n")
    parts.append(_slowest(summary))
    parts.append(_failures(all_spans))
    parts.append(_overhead(summary))
    parts.append("<script id=\"data\" type=\"application/json\">" + _data_json(data)
                 + "</script>\n")
    parts.append(_SCRIPT)
    parts.append("</body></html>\n")
    return "".join(parts)


def _utilisation(summary: _view.TraceSummary) -> str:
    rows = []
    for lane in summary.lanes:
        pct = lane.utilisation * 100
        rows.append(f"<tr><td>pool {lane.pool} · worker {lane.worker} · pid {lane.pid}</td>"
                    f"<td class=\"num\">{lane.spans}</td><td class=\"num\">{fmt_ns(lane.busy_ns)}"
                    f"</td><td><div class=\"bar\"><div style=\"width:{pct:.1f}%\"></div></div>"
                    f"</td><td class=\"num\">{pct:.0f}%</td><td>{_esc(lane.ended)}</td></tr>")
    return ("<h2>Utilisation per worker</h2>\n<table id=\"util\"><tr><th>worker</th><th>spans"
            "</th><th>busy</th><th colspan=\"2\">busy while its pool had work</th><th>ended"
            "</th></tr>\n" + "\n".join(rows) + "\n</table>\n")


def _slowest(summary: _view.TraceSummary) -> str:
    rows = [f"<tr><td class=\"num\">{fmt_ns(t.run_ns)}</td><td><code>{_esc(t.label)}</code>"
            f"</td><td class=\"num\">{t.pid}</td><td>{_esc(t.status)}</td></tr>"
            for t in summary.slowest]
    return ("<h2>Slowest tasks</h2>\n<table id=\"slowest\"><tr><th>ran</th><th>call</th>"
            "<th>pid</th><th>status</th></tr>\n" + "\n".join(rows) + "\n</table>\n")


def _failures(all_spans: list[_view.Span], shown: int = 20) -> str:
    bad = [s for s in all_spans if s.status != "ok"]
    if not bad:
        return ""
    rows = [f"<tr><td>{_esc(s.status)}</td><td><code>{_esc(s.label or s.function)}</code></td>"
            f"<td class=\"num\">{s.pid}</td><td>{_esc((s.error or '')[:300])}</td></tr>"
            for s in bad[:shown]]
    more = f"<p class=\"note\">and {len(bad) - shown} more</p>\n" if len(bad) > shown else ""
    return ("<h2>Failed spans</h2>\n<p class=\"note\">A task that raised is <em>error</em> "
            "(its traceback is in the result, not here); one whose worker died is <em>lost"
            "</em>, ended at the death.</p>\n<table id=\"failures\"><tr><th>status</th>"
            "<th>call</th><th>pid</th><th>error</th></tr>\n" + "\n".join(rows)
            + "\n</table>\n" + more)


def _overhead(summary: _view.TraceSummary) -> str:
    rows = summary.overhead.rows()
    total = sum(ns for _, ns in rows) or 1
    n = max(1, summary.spans)
    body = "\n".join(
        f"<tr><td>{_esc(name)}</td><td class=\"num\">{fmt_ns(ns)}</td><td class=\"num\">"
        f"{fmt_ns(ns / n)}</td><td><div class=\"bar\"><div style=\"width:{ns / total * 100:.1f}%"
        f"\"></div></div></td><td class=\"num\">{ns / total:.1%}</td></tr>" for name, ns in rows)
    return ("<h2>Where the time went</h2>\n<p class=\"note\">Summed over every span, from "
            "its submit to its result in the parent.</p>\n<table id=\"overhead\"><tr><th>phase"
            "</th><th>total</th><th>per span</th><th colspan=\"2\">share</th></tr>\n" + body
            + "\n</table>\n")


_HEAD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>conveyor trace</title>
<style>
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222;max-width:1200px}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}
.note{color:#666;font-size:.9em}.lead{font-weight:600}
table{border-collapse:collapse}td,th{padding:2px 8px;text-align:left;border-bottom:1px solid #eee}
.num{text-align:right;font-variant-numeric:tabular-nums}
.bar{width:160px;height:10px;background:#eee}.bar div{height:10px;background:#4a7fd0}
code{font-size:.9em}#errors{color:#b00;white-space:pre-wrap}
svg text{font:11px system-ui,sans-serif;fill:#333}
rect.ok{fill:#4a7fd0}rect.bad{fill:#d33}line.death{stroke:#d33;stroke-width:2}
line.start{stroke:#999;stroke-width:1}rect.life{fill:#f3f3f3}rect.hbar{fill:#4a7fd0}
</style>
<script>
window.addEventListener("error", function (e) {
  document.getElementById("errors").textContent += "script error: " + e.message + "\\n";
});
</script>
</head><body>
"""

_SCRIPT = """<script>
(function () {
  var data = JSON.parse(document.getElementById("data").textContent);
  function esc(t) {
    return String(t).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/"/g, "&quot;");
  }
  function fmt(us) {
    if (us >= 1e6) return (us / 1e6).toFixed(2) + " s";
    if (us >= 1e3) return (us / 1e3).toFixed(1) + " ms";
    return us + " \\u00b5s";
  }
  function gantt() {
    var lanes = data.lanes, box = document.getElementById("gantt");
    var width = Math.max(600, box.clientWidth || 1100), left = 230, rowH = 20;
    var end = 1;
    lanes.forEach(function (l) { end = Math.max(end, l.end); });
    var scale = (width - left - 10) / end, out = [];
    out.push('<svg width="' + width + '" height="' + (lanes.length * rowH + 24) + '">');
    lanes.forEach(function (l, i) {
      var y = i * rowH, bad = {}, drawn = 0;
      l.bad.forEach(function (b) { bad[b[0]] = b; });
      out.push('<g class="lane" data-lane="' + i + '" data-spans="' + l.s.length + '">');
      out.push('<text x="0" y="' + (y + 14) + '">' + esc(l.name) + '</text>');
      out.push('<rect class="life" x="' + (left + l.start * scale).toFixed(1) + '" y="' + (y + 3)
               + '" width="' + Math.max(1, (l.end - l.start) * scale).toFixed(1)
               + '" height="' + (rowH - 6) + '"><title>' + esc(l.name) + (l.ended ? ", " +
               esc(l.ended) : "") + '</title></rect>');
      var t = 0, x0 = -1, x1 = -1, n = 0, from = 0;
      function flush() {
        if (n === 0) return;
        out.push('<rect class="ok" x="' + (left + x0).toFixed(1) + '" y="' + (y + 4) +
                 '" width="' + Math.max(0.5, x1 - x0).toFixed(1) + '" height="' + (rowH - 8) +
                 '"><title>' + n + (n === 1 ? " span, " : " spans from ") + fmt(from) +
                 '</title></rect>');
        drawn++; n = 0;
      }
      for (var k = 0; k < l.s.length; k++) {
        t += l.s[k];
        var a = t * scale, b = (t + l.d[k]) * scale;
        if (bad[k]) {
          out.push('<rect class="bad" x="' + (left + a).toFixed(1) + '" y="' + (y + 2) +
                   '" width="' + Math.max(2, b - a).toFixed(1) + '" height="' + (rowH - 4) +
                   '"><title>' + esc(bad[k][1] + ": " + bad[k][2]) + ' (ran ' +
                   fmt(l.d[k]) + ')</title></rect>');
          drawn++;
          continue;
        }
        if (n > 0 && a <= x1 + 0.5) { x1 = Math.max(x1, b); n++; continue; }
        flush(); x0 = a; x1 = b; n = 1; from = t;
      }
      flush();
      out.push('</g>');
      l.drawn = drawn;
    });
    data.events.forEach(function (ev) {
      var x = (left + ev[2] * scale).toFixed(1), y = ev[0] * rowH;
      var cls = ev[1] === "worker died" ? "death" : "start";
      if (cls === "start" && ev[1] !== "replacement started") return;
      out.push('<line class="' + cls + '" x1="' + x + '" x2="' + x + '" y1="' + y + '" y2="' +
               (y + rowH) + '"><title>' + esc(ev[1]) + " at " + fmt(ev[2]) + '</title></line>');
    });
    var y = lanes.length * rowH + 16;
    out.push('<text x="' + left + '" y="' + y + '">0</text>');
    out.push('<text x="' + (width - 80) + '" y="' + y + '">' + fmt(end) + '</text>');
    out.push('</svg>');
    box.innerHTML = out.join("");
  }
  function hist() {
    var h = data.hist, box = document.getElementById("hist");
    if (!h.length) { box.textContent = "no spans"; return; }
    var max = 1, w = 28, H = 120, out = [];
    h.forEach(function (b) { max = Math.max(max, b[2]); });
    out.push('<svg width="' + (h.length * w + 20) + '" height="' + (H + 40) + '">');
    h.forEach(function (b, i) {
      var bh = b[2] / max * H;
      out.push('<rect class="hbar" x="' + (i * w + 2) + '" y="' + (H - bh).toFixed(1) +
               '" width="' + (w - 4) + '" height="' + bh.toFixed(1) + '"><title>' + b[2] +
               ' spans ran ' + fmt(Math.round(b[0] / 1000)) + ' to ' +
               fmt(Math.round(b[1] / 1000)) + '</title></rect>');
    });
    out.push('<text x="0" y="' + (H + 16) + '">' + fmt(Math.round(h[0][0] / 1000)) + '</text>');
    out.push('<text x="' + (h.length * w - 60) + '" y="' + (H + 16) + '">' +
             fmt(Math.round(h[h.length - 1][1] / 1000)) + '</text>');
    out.push('<text x="0" y="' + (H + 34) + '">run time per span (log scale)</text></svg>');
    box.innerHTML = out.join("");
  }
  gantt();
  hist();
  document.body.setAttribute("data-drawn-lanes", String(data.lanes.length));
  window.addEventListener("resize", gantt);
})();
</script>
"""
