"""Reading results: frames from a worker's result pipe, turned into ``complete`` calls.

A ``RESULTS`` frame carries, for a batch of records, a pickled list of heads (record
id, status, size, run time) and then each record's pickled result beside it, so a
result that cannot be unpickled fails its own task only. Exceptions a call retries go
back to the queue here. Part of the supervisor thread (``supervisor.Supervisor``).
"""

from __future__ import annotations

import pickle

from conveyor._ipc import serialize as _serialize
from conveyor._pool import worker as _worker
from conveyor._pool.seam import Record, TaskCall
from conveyor._pool.state import SupervisorState, WorkerHandle
from conveyor._trace import _recorder as _trace
from conveyor.errors import (
    ConveyorError,
    RemoteTraceback,
    SerializationError,
    WorkerStartError,
)

_NO_ERRORS: dict[int, BaseException] = {}
_NO_SKIP: frozenset[int] = frozenset()


class ResultReader(SupervisorState):
    """The supervisor's reading of result frames (see the module docstring)."""

    def _read_results(self, w: WorkerHandle) -> None:
        frames, _eof = w.reader.read()
        for kind, payload in frames:
            if kind == _worker.RESULTS:
                self._handle_results(w, payload)
            elif kind == _worker.READY:
                self._trace_event(w, _trace.READY)
                w.ready = True
                self._start_failures = 0
                self.needs_work = True
            elif kind == _worker.RETIRE:
                self._trace_event(w, _trace.RETIRE)
                w.retiring = True
            elif kind == _worker.INIT_FAILED:
                try:
                    exc = _decode_exception(*pickle.loads(payload))
                except BaseException as err:
                    exc = WorkerStartError(f"the pool's initializer failed, and its error "
                                           f"could not be unpickled: {err!r}")
                self._init_failed(exc)

    def _handle_results(self, w: WorkerHandle, payload: bytearray) -> None:
        view = memoryview(payload)
        (head_len,) = _worker.HEAD_LEN.unpack_from(view, 0)
        offset = _worker.HEAD_LEN.size + head_len
        heads = pickle.loads(view[_worker.HEAD_LEN.size:offset])
        if heads.__class__ is tuple:  # traced records: (heads, their timestamps, ...)
            heads = _trace.results(self, w, *heads)
        calls: dict[TaskCall, None] = {}
        revoked: list[Record] = []
        loads = pickle.loads
        for rid, status, size, elapsed in heads:
            blob = view[offset:offset + size]
            offset += size
            rec = w.outstanding.pop(rid, None)
            if rec is None:
                continue  # taken back already, or failed at a death
            if status == _worker.REVOKED:
                revoked.append(rec)
                continue
            n = rec.size
            rec.elapsed_ns = elapsed
            rec.worker = w.index
            fn_id = rec.call.fn_id
            avg = self._avg_ns.get(fn_id)
            self._avg_ns[fn_id] = elapsed if avg is None else avg + (elapsed - avg) * 0.2
            self.tasks_done += n
            call = rec.call
            try:
                value = loads(blob)
            except BaseException as load_error:  # task data must never stop the supervisor
                err = _unpickle_error(rec, bytes(blob), load_error, status)
                call.complete(rec, [None] * n, dict.fromkeys(range(n), err), _NO_SKIP)
                calls[call] = None
                continue
            if status == _worker.OK:  # the hot path: no allocations beyond the tuple
                call.complete(rec, (value,) if rec.mode == _worker.CALL else value, _NO_ERRORS,
                              _NO_SKIP)
                if call.progress is not None or rec.mode != _worker.CALL:
                    calls[call] = None
                continue
            errors: dict[int, BaseException]
            if status == _worker.FAILED:
                failure = _decode_exception(*value)
                values = [None] * n
                errors = dict.fromkeys(range(n), failure)
            else:
                values, raw = value
                errors = {k: _decode_exception(*v) for k, v in raw.items()}
            skip: set[int] = set()
            if errors:
                skip = self._retry_on_exception(rec, errors)
                if skip and rec.mode == _worker.CALL:
                    continue
            call.complete(rec, values, errors, skip)
            calls[call] = None
        view.release()
        if revoked:
            self.pending.extendleft(reversed(revoked))
        for call in calls:
            call.flush()

    def _retry_on_exception(self, rec: Record, errors: dict[int, BaseException]) -> set[int]:
        """Queue again the failed items whose exception the call retries; return them.
        Each retried item uses one of its own attempts, not its chunk's."""
        retry_on = rec.call.retry_on
        if not retry_on or rec.attempts >= rec.call.retries:
            return set()
        retried = set()
        for k, exc in errors.items():
            if isinstance(exc, retry_on):
                again = rec if rec.mode == _worker.CALL else rec.split(k, k + 1)
                again.attempts = rec.attempts + 1
                self.pending.appendleft(again)
                retried.add(k)
        return retried


def _decode_exception(data: bytes, tb: str) -> BaseException:
    try:
        exc: BaseException = pickle.loads(data)
    except BaseException as err:  # even a SystemExit from __setstate__: data, not a command
        exc = ConveyorError(f"an exception from the worker could not be unpickled: {err!r}")
    exc.__cause__ = RemoteTraceback(tb)
    return exc


def _unpickle_error(rec: Record, blob: bytes, exc: BaseException, status: int
                    ) -> SerializationError:
    what = "result" if status == _worker.OK else "exception"
    call = rec.call
    index = call.task_index(rec.base)
    label = call.label(rec.item(0)) if rec.size == 1 else f"{call.fn_name} (chunk)"
    err = SerializationError(
        f"the {what} of task {index} {label} could not be unpickled in the parent "
        f"({_serialize.pickled_type_name(blob)}): {type(exc).__name__}: {exc}",
        what=what, task_index=index)
    err.__cause__ = exc if isinstance(exc, Exception) else None
    return err
