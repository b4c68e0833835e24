"""The process pool.

Owns the public ``Pool`` and ``map()``, their options, the call bookkeeping (futures,
ordered and unordered results, callbacks), the supervisor thread (dispatch, result
reading, death and timeout handling), the worker's loop in the child, its statistics
and progress reporting. It may import ``_ipc`` and ``conveyor.errors``.
"""
