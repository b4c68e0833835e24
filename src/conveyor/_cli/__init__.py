"""The ``conveyor`` command and the batch jobs it runs from the shell.

Owns argument parsing, ``conveyor map``/``run``/``status``/``results`` (inputs, the
SQLite journal, runners, shell commands, output) and what a pool worker runs per item of
a ``map`` job. It may import ``_flow``, ``_pool``, ``_ipc``, ``_demo`` (lazily, for
``conveyor demo``) and ``conveyor.errors``.
"""
