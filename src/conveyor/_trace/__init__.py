"""Tracing: a per-task timeline of every pool, written as a Chrome trace or an HTML report.

This package owns the recorder (``_recorder``: the hooks the pool calls and the integers
they keep), the public ``Trace`` and ``trace()`` (``_api``), the reading of a trace
(``_view``: spans, lanes, summary) and the two writers (``_chrome``: ``.json`` /
``.json.gz``; ``_html``: one self-contained ``.html``).

It imports nothing from the rest of conveyor: the pool's supervisor (``_pool.supervisor``
with ``dispatch``, ``reading`` and ``deaths``) and worker (``_pool.worker``) call into ``_recorder`` through a handful of small hooks, and
``_recorder`` only reads the attributes of the records and workers it is handed (the
packed row layout is ``_worker.TRACE_ROW``, mirrored in ``_recorder.ROW`` so that this
package need not import the worker). The writers are imported when a file is written,
so a pool pays only for importing ``_recorder`` and ``_api``.

Cost: with no trace active, a submit reads one module attribute, a dispatch tests one
attribute per record, the worker reads the clock once per frame, and the supervisor
checks the type of each results frame's head. With a trace, each record carries its
submit time (an int), a dispatched frame logs its traced records' ids, submit times and
functions in arrays, the worker packs 80 bytes of timestamps per record into the
results frame's head, and the supervisor keeps those bytes as they came: no Python
object per span is kept, so a long trace does not slow the garbage collector. Measured
by ``benchmarks/bench_trace.py``.

``conveyor run`` (shell commands, no pool) calls ``Recorder.command_done`` from its
runner threads (``_cli.runners``).
"""
