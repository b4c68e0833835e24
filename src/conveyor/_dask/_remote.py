"""What runs inside a Dask worker: a local conveyor pool, and the chunk task that feeds it.

Data flow on one Dask worker::

    Dask task thread: run_batch(payload) ----> local Pool's supervisor ----> conveyor
      unpickle the batch, one _PartCall          (timeouts, retries,          worker
      per client record, submit, wait            crash isolation)             processes
      <------- values, errors, run time <-------  complete(record) <------------+
      return bytes: never raises

The local pool is made by :class:`PoolPlugin` (a Dask worker plugin), one per client
``Pool``, sized to the worker's threads, and kept in this module's ``_pools`` (keyed by
the plugin's name). It must live in a module that is imported by name: a function that a
user's script defines is sent by value, with fresh globals, on every Dask task, so a
pool kept there would be started again for every task (~400 ms each).

Every item comes back as its value or its error (with the conveyor worker's traceback
as text), so a user's exception, a crash (``WorkerLostError``) or a timeout
(``TaskTimeoutError``) is data to Dask: Dask never retries it and never counts it
against the worker (no ``KilledWorker``). Only the death of the Dask worker itself makes
Dask run the chunk again elsewhere (the at-least-once rule in the README).

Daemonic workers: Dask starts its worker processes as daemons (``distributed.worker.
daemon``), and ``multiprocessing`` refuses to start children from a daemon. The plugin
clears that flag in the Dask worker process (what setting the option to False does);
conveyor's worker processes still never outlive the Dask worker, since they watch their
parent (``_worker``) and are joined when the plugin is torn down.
"""

from __future__ import annotations

import pickle
import threading
import time
from collections import OrderedDict
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from conveyor._ipc import serialize as _serialize
from conveyor._pool import worker as _worker
from conveyor._pool.pool import Pool, _Call
from conveyor._pool.seam import Command, Record
from conveyor.errors import ConveyorError, RemoteTraceback

_pools: dict[str, Pool] = {}
_pools_lock = threading.Lock()
# Local function ids by pickled function: the local supervisor's workers cache functions
# by id, and ids chosen by different clients could collide.
_fn_ids: OrderedDict[bytes, int] = OrderedDict()
_next_fn_id = 1
_FN_IDS_KEPT = 256
# Parts running now, by (plugin name, client token), for a forced cancel from the client.
_running: dict[tuple[str, int], _PartCall] = {}

_PENDING = object()


def _allow_children() -> None:
    """Let this (daemonic) Dask worker process start conveyor's worker processes.

    The one private touch of ``multiprocessing``: a daemonic process's flag lives in
    ``current_process()._config``, and ``Process.start`` asserts it is unset; the public
    setter refuses to change a started process."""
    import multiprocessing

    multiprocessing.current_process()._config["daemon"] = False  # type: ignore[attr-defined]


class _CallBytes:
    """A pickled function (sent by value from the client), callable in conveyor workers.

    Imported by name, so the local pool can pickle it by reference whatever its start
    method; unpickled once per worker process."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._fn: Any = None

    def __call__(self, *args: Any) -> Any:
        if self._fn is None:
            self._fn = pickle.loads(self.data)
        return self._fn(*args)

    def __getstate__(self) -> bytes:
        return self.data

    def __setstate__(self, data: bytes) -> None:
        self.data = data
        self._fn = None


class PoolPlugin(WorkerPlugin):
    """Starts one local conveyor pool per Dask worker for one client ``Pool``."""

    def __init__(self, name: str, options: bytes) -> None:
        self.name = name
        self.options = options  # pickled: initializer, initargs, maxtasks, memory, start

    def setup(self, worker: Any) -> None:
        init_bytes, args_bytes, maxtasks, max_memory, start_method = pickle.loads(self.options)
        initargs = pickle.loads(args_bytes) if args_bytes else ()
        _allow_children()
        nthreads = max(1, int(getattr(worker, "nthreads", 1) or 1))
        pool = Pool(nthreads, initializer=_CallBytes(init_bytes) if init_bytes else None,
                    initargs=initargs, maxtasksperchild=maxtasks,
                    max_worker_memory=max_memory, start_method=start_method)
        with _pools_lock:
            old = _pools.pop(self.name, None)
            _pools[self.name] = pool
        if old is not None:
            old.terminate()

    def teardown(self, worker: Any) -> None:
        with _pools_lock:
            pool = _pools.pop(self.name, None)
        if pool is not None:
            pool.close()
            pool.join()


def terminate_pool(name: str) -> None:
    """Run by the client on every Dask worker (``Client.run``) for ``Pool.terminate()``."""
    with _pools_lock:
        pool = _pools.pop(name, None)
    if pool is not None:
        pool.terminate()


def cancel_running(name: str, token: int) -> bool:
    """Run by the client on every Dask worker: stop the running task of one client call."""
    part = _running.get((name, token))
    if part is None:
        return False
    part.pool._sup.command(Command.CANCEL_RUNNING, part)
    return True


def _local_fn_id(fn_bytes: bytes) -> int:
    global _next_fn_id
    with _pools_lock:
        fid = _fn_ids.get(fn_bytes)
        if fid is None:
            fid = _fn_ids[fn_bytes] = _next_fn_id
            _next_fn_id += 1
            if len(_fn_ids) > _FN_IDS_KEPT:
                _fn_ids.popitem(last=False)
        else:
            _fn_ids.move_to_end(fn_bytes)
        return fid


class _Batch:
    def __init__(self, parts: int) -> None:
        self.left = parts
        self.lock = threading.Lock()
        self.done = threading.Event()
        if parts == 0:
            self.done.set()

    def part_done(self) -> None:
        with self.lock:
            self.left -= 1
            if self.left == 0:
                self.done.set()


class _PartCall:
    """One client record, as a call of the local pool: collects values and errors."""

    progress = None
    label = _Call.label  # the same "fn(args)" text as on the client
    # Never needed (the client pickled every record it sends), kept for the seam's TaskCall.
    pickle_error = _Call.pickle_error

    def __init__(self, pool: Pool, batch: _Batch, fn_id: int, fn_name: str, fn_bytes: bytes,
                 timeout: float | None, retries: int, retry_on: tuple[type[BaseException], ...],
                 mode: int, base: int, size: int) -> None:
        self.pool = pool
        self.batch = batch
        self.fn_id = fn_id
        self.fn_name = fn_name
        self.fn_bytes = fn_bytes
        self.timeout = timeout
        self.retries = retries
        self.retry_on = retry_on
        self.mode = mode
        self.base = base
        self.values: list[Any] = [_PENDING] * size
        self.errors: dict[int, BaseException] = {}
        self.left = size
        self.elapsed_ns = 0
        self.cancelled = False

    def task_index(self, position: int) -> int:
        return position

    def start(self, rec: Record) -> bool:
        return not self.cancelled

    def complete(self, rec: Record, values: Any, errors: dict[int, BaseException],
                 skip: Any) -> None:
        off = rec.base - self.base
        for k in range(rec.size):
            if k in skip:
                continue
            if k in errors:
                self.errors[off + k] = errors[k]
                self.values[off + k] = None
            else:
                self.values[off + k] = values[k]
        self.elapsed_ns += rec.elapsed_ns
        self.left -= rec.size - len(skip)
        if self.left == 0:
            self.batch.part_done()

    def flush(self) -> None:
        pass

    def abort(self, exc: BaseException) -> None:
        if self.left <= 0:
            return
        for k, v in enumerate(self.values):
            if v is _PENDING:
                self.values[k] = None
                self.errors[k] = exc
        self.left = 0
        self.batch.part_done()


def _encode_error(exc: BaseException) -> tuple[bytes, str]:
    cause = exc.__cause__
    tb = cause.tb if isinstance(cause, RemoteTraceback) else ""
    try:
        return _serialize.dumps_exception(exc), tb
    except Exception as err:
        stand_in = ConveyorError(f"{type(exc).__name__}: {exc} (the exception could not be "
                                 f"pickled to send it to the client: {err!r})")
        return pickle.dumps(stand_in), tb


def _encode_values(part: _PartCall) -> bytes:
    try:
        return _serialize.dumps(part.values)
    except Exception:
        pass
    out: list[Any] = []
    for k, v in enumerate(part.values):  # find the result that cannot travel; fail it alone
        try:
            _serialize.dumps(v)
            out.append(v)
        except Exception:
            from conveyor.errors import SerializationError

            part.errors[k] = SerializationError(
                f"the result of task {part.base + k} of {part.fn_name} ({type(v).__name__}) "
                f"could not be pickled to send it from the Dask worker to the client",
                what="result", task_index=part.base + k)
            out.append(None)
    return _serialize.dumps(out)


def run_batch(name: str, payload: bytes) -> bytes:
    """The Dask task: run a batch of client records on this worker's local pool.

    Never raises: whatever fails comes back as per-item errors (see the module
    docstring). Returns, pickled, one ``(values blob, errors, run time ns, items ran)``
    per record, in the order of the batch."""
    try:
        return _run_batch(name, payload)
    except BaseException as exc:  # a failure of the batch itself: every item reports it
        err = ConveyorError(f"the conveyor chunk task failed on the Dask worker: "
                            f"{type(exc).__name__}: {exc}")
        return pickle.dumps(("failed", pickle.dumps(err)))


def _run_batch(name: str, payload: bytes) -> bytes:
    with _pools_lock:
        pool = _pools.get(name)
    if pool is None:
        raise ConveyorError(f"this Dask worker has no conveyor pool {name!r} (its worker "
                            f"plugin did not run here)")
    fns, parts = pickle.loads(payload)
    fn_ids = {key: _local_fn_id(fn_bytes) for key, (_, fn_bytes) in fns.items()}
    batch = _Batch(len(parts))
    calls: list[_PartCall] = []
    records: list[Record] = []
    for token, fn_key, timeout, retries, retry_on, mode, base, data in parts:
        fn_name, fn_bytes = fns[fn_key]
        items = pickle.loads(data)
        size = 1 if mode == _worker.CALL else len(items)
        call = _PartCall(pool, batch, fn_ids[fn_key], fn_name, fn_bytes, timeout, retries,
                         pickle.loads(retry_on) if retry_on else (), mode, base, size)
        if timeout:
            pool._sup.timeouts_used = True
        calls.append(call)
        _running[(name, token)] = call
        records.append(Record(call, base, items, mode, data))
    try:
        pool._sup.submit(records)
        batch.done.wait()
    finally:
        for (token, *_), call in zip(parts, calls, strict=True):
            if _running.get((name, token)) is call:
                del _running[(name, token)]
    out = []
    for call in calls:
        values = _encode_values(call)
        errors = {k: _encode_error(e) for k, e in call.errors.items()}
        out.append((values, errors, call.elapsed_ns))
    return pickle.dumps(("ok", out, time.time()))
