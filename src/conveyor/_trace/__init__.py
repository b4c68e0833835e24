"""Tracing: a per-task timeline of every pool, written as a Chrome trace or an HTML report.

This package owns the recorder (``_recorder``: the hooks the pool calls and the integers
they keep), the public ``Trace`` and ``trace()`` (``_api``), the reading of a trace
(``_view``: spans, lanes, summary) and the two writers (``_chrome``: ``.json`` /
``.json.gz``; ``_html``: one self-contained ``.html``).

It imports nothing from the rest of conveyor: the pool's supervisor (``_supervisor``)
and worker (``_worker``) call into ``_recorder`` through a handful of small hooks, and
``_recorder`` only reads the attributes of the records and workers it is handed. The
writers are imported when a file is written, so ``import conveyor`` pays only for
``_recorder``.

Cost: with no trace active, a submit reads one module attribute, a dispatch tests one
attribute per record, the worker reads the clock once per frame, and the supervisor
checks the type of each results frame's head. With a trace, each record carries a
``Mark`` (two timestamps), the worker adds one tuple of five timestamps to the results
frame's head, and the supervisor appends one tuple of integers per record.
"""

from conveyor._trace._api import Trace as Trace
from conveyor._trace._api import trace as trace
