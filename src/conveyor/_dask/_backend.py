"""``DaskBackend``: a pool's work on a Dask cluster, behind the same interface as a
local ``Supervisor``.

Data flow::

    caller threads              driver thread ("conveyor-dask-driver")       Dask workers
    --------------              --------------------------------------       ------------
    Pool.submit/map/imap  --->  pending deque --> batch: records whose  --> run_batch
      (records, pickled           measured run time adds up to ~0.3 s       (_remote): the
       in the caller)             (<= 2 batches in flight per thread)       local conveyor
    futures / results     <---  complete(record) per record  <-- bytes <-- pool runs them
                                release the Dask future at once

The interface the ``Pool`` calls is the seam's ``Runner`` protocol (``_pool.seam``):
``submit(records)``, ``command(Command.CANCEL_RUNNING, call)`` /
``command(Command.CANCEL_PENDING)``, ``close()``, ``terminate()``, ``join()``,
``stop_intake()``, ``worker_pids()`` and the fields ``accepting``, ``refusal``,
``broken``, ``stopped``, ``timeouts_used``, ``tasks_done``, ``workers_replaced``,
``pending``, ``owner_pid``, ``after_stop``; mypy checks that ``DaskBackend`` conforms
(``_pool.pool._cluster_backend`` returns it as a ``Runner``), as it does for the local
``Supervisor``. Each record is reported back through the seam's ``TaskCall``.

Batching: a record is one call or one chunk, as the pool cut it. The driver packs
consecutive records into one Dask task until their estimated run time (per-item time of
the function, measured from earlier batches) reaches ``_TARGET_S``, or a share of what
is pending that keeps every thread busy; a function not yet measured goes one record
per task. At most two tasks per Dask thread are in flight, so an endless ``imap`` keeps
a bounded number of tasks on the scheduler, and the pool's own read-ahead window bounds
what is pending here.

Results are released from the cluster as soon as they arrive: a Dask worker that dies
later holds nothing the client still needs, so Dask never recomputes a delivered batch.
A batch that was running on a Dask worker that died is run again by Dask (at least once,
see the README); if Dask gives up on it (``KilledWorker``), its items fail with
``WorkerLostError``.
"""

from __future__ import annotations

import itertools
import os
import pickle
import queue
import threading
import uuid
from collections import deque
from concurrent.futures import CancelledError
from typing import Any

import cloudpickle
import distributed

from conveyor._dask import _remote
from conveyor._dask._context import ClusterHandle, open_cluster
from conveyor._ipc import serialize as _serialize
from conveyor._pool import worker as _worker
from conveyor._pool.seam import Command, Record, RunnerLifecycle
from conveyor.errors import ConveyorError, PoolClosedError, RemoteTraceback, WorkerLostError

_TARGET_S = 0.3  # run time of one Dask task, once the function's speed is known
_MIN_S = 0.02  # below this a Dask task costs more than it runs
_IN_FLIGHT_PER_THREAD = 2
_MAX_BATCH_BYTES = 8 << 20
_MAX_BATCH_ITEMS = 100_000
_NO_SKIP: frozenset[int] = frozenset()


class DaskBackend(RunnerLifecycle):
    """Runs a pool's records on a Dask cluster (see the module docstring)."""

    def __init__(self, cluster: Any, init: tuple[bytes, Any, bool] | None,
                 maxtasks: int | None, max_memory: int | None,
                 start_method: str | None) -> None:
        if init is not None and not init[2]:
            from conveyor.errors import SerializationError

            raise SerializationError("initargs cannot be pickled, so they cannot be sent to "
                                     "a Dask cluster (multiprocessing objects such as Lock "
                                     "or Queue work only on one machine)", what="initargs")
        self._handle: ClusterHandle = open_cluster(cluster)
        self.client = self._handle.client
        self.owner_pid = os.getpid()
        self._open_intake()
        self.broken: BaseException | None = None
        self.stopped = threading.Event()
        self.timeouts_used = False
        self.tasks_done = 0
        self.workers_replaced = 0
        self.after_stop: Any = None
        self.pending: deque[Record] = deque()
        self._pending_items = 0
        # The pool's commands, and "records" (submitted) and "done" (a Dask future's key).
        self._events: queue.SimpleQueue[tuple[Command | str, Any]] = queue.SimpleQueue()
        self._in_flight: dict[str, tuple[distributed.Future[Any], list[Record]]] = {}
        self._item_ns: dict[int, float] = {}  # measured run time of one item, per function
        self._name = f"conveyor-pool-{uuid.uuid4().hex[:12]}"
        self._keys = itertools.count()
        self._closing = False
        self._terminating = False
        options = pickle.dumps((init[0] if init else None, init[1] if init else None,
                                maxtasks, max_memory, start_method))
        try:
            self.client.register_plugin(_remote.PoolPlugin(self._name, options),
                                        name=self._name)
        except BaseException:
            self._handle.close()
            raise
        self.threads = self._count_threads()
        self._thread = threading.Thread(target=self._run, name="conveyor-dask-driver",
                                        daemon=True)
        self._thread.start()
        from conveyor._pool import supervisor as _supervisor

        _supervisor._live.add(self)  # finished at interpreter exit
        _supervisor._register_exit_hook()

    def _count_threads(self) -> int:
        try:
            return max(1, int(sum(self.client.nthreads().values())))
        except Exception:
            return 1

    # ------------------------------------------------------------ called from any thread

    def submit(self, records: list[Record]) -> None:
        with self.intake:
            if not self.accepting:
                raise PoolClosedError(self.refusal)
            self._events.put(("records", records))

    def command(self, cmd: Command, arg: Any = None) -> None:
        self._events.put((cmd, arg))

    def worker_pids(self) -> list[int]:
        """The pids of the Dask worker processes (conveyor's own run inside them)."""
        return sorted(int(pid) for pid in self.client.run(os.getpid).values())

    # ---------------------------------------------------------------------- the thread

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # a bug here must fail the work, not hang it
            self.broken = exc
            self._abort_all(exc)
        finally:
            self.stop_intake(self.refusal if self.broken is None else
                             f"the pool is broken: {self.broken}")
            # Records submitted after the last look (intake is closed now) are failed too.
            while True:
                try:
                    kind, arg = self._events.get_nowait()
                except queue.Empty:
                    break
                if kind == "records":
                    self.pending.extend(arg)
            try:
                self._stop_remote()
            finally:
                self._abort_all(self.broken or PoolClosedError("the pool stopped"))
                self._handle.close()
                self.stopped.set()
                if self.after_stop is not None:
                    self.after_stop()

    def _loop(self) -> None:
        while True:
            event = self._events.get()
            while True:
                self._handle_event(*event)
                try:
                    event = self._events.get_nowait()
                except queue.Empty:
                    break
            if self._terminating:
                return
            self._dispatch()
            if self._closing and not self.pending and not self._in_flight:
                return

    def _handle_event(self, kind: Command | str, arg: Any) -> None:
        if kind == "records":
            self.pending.extend(arg)
            self._pending_items += sum(rec.size for rec in arg)
        elif kind == "done":
            self._finished(arg)
        elif kind is Command.CLOSE:
            self._closing = True
        elif kind is Command.TERMINATE:
            self._terminating = True
            self._abort_all(CancelledError("the pool was terminated"))
        elif kind is Command.CANCEL_PENDING:
            dropped = list(self.pending)
            self.pending.clear()
            self._pending_items = 0
            _abort_calls(dropped, CancelledError("cancelled by shutdown(cancel_futures=True)"))
        elif kind is Command.CANCEL_RUNNING:
            # Every Dask worker is asked; the one running the call's task kills it.
            self.client.run(_remote.cancel_running, self._name, id(arg))
        else:  # pragma: no cover - a bug in this module
            raise ValueError(f"unknown event {kind!r}")

    # -------------------------------------------------------------------------- dispatch

    def _dispatch(self) -> None:
        limit = _IN_FLIGHT_PER_THREAD * self.threads
        while self.pending and len(self._in_flight) < limit:
            records = self._take_batch()
            if records:
                self._send(records)

    def _take_batch(self) -> list[Record]:
        head = self.pending[0]
        per_item = self._item_ns.get(head.call.fn_id)
        budget = 0.0
        if per_item is not None:
            share = self._pending_items * per_item / 1e9 / (_IN_FLIGHT_PER_THREAD * self.threads)
            budget = max(_MIN_S, min(_TARGET_S, share)) * 1e9
        taken: list[Record] = []
        spent = 0.0
        nbytes = items = 0
        while self.pending:
            rec = self.pending[0]
            if taken:
                fn_ns = self._item_ns.get(rec.call.fn_id)
                if (fn_ns is None or spent + fn_ns * rec.size > budget
                        or nbytes + len(rec.data or b"") > _MAX_BATCH_BYTES
                        or items + rec.size > _MAX_BATCH_ITEMS):
                    break
            self.pending.popleft()
            self._pending_items -= rec.size
            if not rec.call.start(rec):
                continue  # cancelled before it was sent
            if rec.data is None and not self._pickle(rec):
                continue  # failed with a SerializationError
            taken.append(rec)
            spent += (self._item_ns.get(rec.call.fn_id) or 0.0) * rec.size
            nbytes += len(rec.data or b"")  # pickled by now
            items += rec.size
            if per_item is None:
                break  # not measured yet: one record per task until it is
        return taken

    def _pickle(self, rec: Record) -> bool:
        """Pickle a record that the pool left unpickled (a map's chunk is pickled when it
        is dispatched, so the input is not held twice); fail it alone if it cannot be."""
        try:
            rec.data = _serialize.dumps(rec.items)
        except Exception as exc:
            from conveyor.errors import SerializationError

            n = rec.size
            err = SerializationError(f"the items {rec.base}..{rec.base + n - 1} of "
                                     f"{rec.call.fn_name} could not be pickled: {exc}",
                                     what="items", task_index=rec.base)
            rec.call.complete(rec, [None] * n, dict.fromkeys(range(n), err), _NO_SKIP)
            rec.call.flush()
            return False
        return True

    def _send(self, records: list[Record]) -> None:
        fns: dict[int, tuple[str, bytes]] = {}
        parts = []
        for rec in records:
            call = rec.call
            fns.setdefault(call.fn_id, (call.fn_name, call.fn_bytes))
            retry_on = cloudpickle.dumps(call.retry_on) if call.retry_on else b""
            parts.append((id(call), call.fn_id, call.timeout, call.retries, retry_on,
                          rec.mode, rec.base, rec.data))
        payload = pickle.dumps((fns, parts), protocol=pickle.HIGHEST_PROTOCOL)
        key = f"{self._name}-{next(self._keys)}"
        future = self.client.submit(_remote.run_batch, self._name, payload, key=key,
                                    pure=False, retries=0)
        self._in_flight[key] = (future, records)
        future.add_done_callback(lambda f: self._events.put(("done", f.key)))

    # --------------------------------------------------------------------------- results

    def _finished(self, key: str) -> None:
        entry = self._in_flight.pop(key, None)
        if entry is None:
            return  # aborted already
        future, records = entry
        try:
            blob = future.result()
            reply = pickle.loads(blob)
        except BaseException as exc:
            self._batch_lost(records, exc)
            return
        finally:
            future.release()  # nothing of this batch stays on the cluster
        if reply[0] != "ok":
            err = pickle.loads(reply[1])
            for rec in records:
                n = rec.size
                rec.call.complete(rec, [None] * n, dict.fromkeys(range(n), err), _NO_SKIP)
            _flush(records)
            return
        calls: dict[Any, None] = {}
        for rec, (values_blob, raw_errors, elapsed) in zip(records, reply[1], strict=True):
            call = rec.call
            n = rec.size
            rec.elapsed_ns = elapsed
            rec.worker = -1
            if n:
                per = elapsed / n
                avg = self._item_ns.get(call.fn_id)
                self._item_ns[call.fn_id] = per if avg is None else avg + (per - avg) * 0.3
            self.tasks_done += n
            try:
                values = pickle.loads(values_blob)
            except BaseException as exc:
                err = ConveyorError(f"the results of {call.fn_name} could not be unpickled "
                                    f"on the client: {type(exc).__name__}: {exc}")
                values, raw_errors = [None] * n, {}
                errors: dict[int, BaseException] = dict.fromkeys(range(n), err)
            else:
                errors = {k: _decode_error(*v) for k, v in raw_errors.items()}
            call.complete(rec, values, errors, _NO_SKIP)
            calls[call] = None
        for call in calls:
            call.flush()

    def _batch_lost(self, records: list[Record], exc: BaseException) -> None:
        """Dask could not run a batch: its Dask worker died too often, or it was cancelled."""
        guess = (f"Dask gave up on the chunk task ({type(exc).__name__}: {exc}); the Dask "
                 f"worker process running it died, which conveyor's own workers cannot cause")
        for rec in records:
            call = rec.call
            n = rec.size
            errors: dict[int, BaseException] = {}
            for k in range(n):
                item = rec.items if rec.mode == _worker.CALL else rec.items[k]
                errors[k] = WorkerLostError(call.task_index(rec.base + k), call.label(item),
                                            None, None, guess=guess)
            call.complete(rec, [None] * n, errors, _NO_SKIP)
        _flush(records)

    # -------------------------------------------------------------------------- stopping

    def _abort_all(self, exc: BaseException) -> None:
        dropped = list(self.pending)
        self.pending.clear()
        self._pending_items = 0
        futures = []
        for future, records in self._in_flight.values():
            dropped.extend(records)
            futures.append(future)
        self._in_flight.clear()
        if futures:
            try:
                self.client.cancel(futures)
            except Exception:
                pass  # the client is gone: nothing is left to cancel
        _abort_calls(dropped, exc)

    def _stop_remote(self) -> None:
        try:
            if self._terminating or self.broken is not None:
                self.client.run(_remote.terminate_pool, self._name)
            self.client.unregister_worker_plugin(self._name)
        except Exception:
            pass  # the cluster is gone, and the local pools with it


def _flush(records: list[Record]) -> None:
    for call in {rec.call: None for rec in records}:
        call.flush()


def _abort_calls(records: list[Record], exc: BaseException) -> None:
    for call in {rec.call: None for rec in records}:
        call.abort(exc)


def _decode_error(data: bytes, tb: str) -> BaseException:
    try:
        exc: BaseException = pickle.loads(data)
    except BaseException as err:  # even a SystemExit from __setstate__: data, not a command
        exc = ConveyorError(f"an exception from the Dask worker could not be unpickled: "
                            f"{err!r}")
    if tb:
        exc.__cause__ = RemoteTraceback(tb)
    return exc
