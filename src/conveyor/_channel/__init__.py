"""The channel: a bounded, closable, many-to-many transport between processes.

Owns ``Channel``, the shared-memory ring beneath it (layout, fast paths, waiting), the
table of peers that hold it open, and out-of-band blocks for large items. It may import
``_ipc`` and ``conveyor.errors``.
"""
